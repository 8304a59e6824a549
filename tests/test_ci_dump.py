"""`undebug run --ci` failures end with a dump bundle, a one-screen summary, JUnit XML and
(under GitHub Actions) annotations, on the real reference guest in real QEMU (TCG). Each
bundle is then opened offline: by undebug itself and by stock gdb."""

from __future__ import annotations

import os
import re
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import check_planted_counter, undebug

# crash kind -> the planted faulting function (guest-stubs/refguest/README.md)
KINDS = {"null": "crash_null", "panic": "crash_panic", "assert": "crash_assert",
         "stack-overflow": "recurse_forever", "div0": "crash_div0", "oom": "crash_oom",
         "hang": "crash_hang"}


def run_ci(tmp_path: Path, append: str, *extra: str, env: dict[str, str] | None = None,
           json: bool = True) -> tuple[int, str, str]:
    args = ["run", "--ci", "--timeout", "60", "--smp", "2", "--append", append,
            "--dump-dir", str(tmp_path / "dumps"), "--junit", str(tmp_path / "junit.xml"),
            *extra, *(["--json"] if json else [])]
    result = undebug(*args, str(Path("build/refguest.elf").resolve()), env=env)
    return result.code, result.stdout, result.stderr


def only_bundle(tmp_path: Path) -> Path:
    bundles = list((tmp_path / "dumps").iterdir())
    assert len(bundles) == 1, bundles
    return bundles[0]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_crash_kind_fails_with_a_bundle_that_opens_offline(
        tmp_path: Path, guest_image: Path, kind: str) -> None:
    import json

    extra = ["--hang-after", "1.5"] if kind == "hang" else []
    code, out, err = run_ci(tmp_path, f"threads=4 crash={kind} crash_after=100", *extra)
    assert code == 1, err
    doc = json.loads(out)
    assert doc["outcome"]["ok"] is False
    bundle = Path(doc["bundle"])
    assert bundle == only_bundle(tmp_path)
    core = bundle / "core.elf"
    assert core.stat().st_mode & 0o777 == 0o600
    assert not (bundle / "INCOMPLETE").exists()
    # the faulting thread and its backtrace, offline, through CoreTarget
    threads = undebug("threads", str(bundle), "--json").json()["threads"]
    assert [t["name"] for t in threads][:2] == ["main", "idle0"]
    traces = undebug("bt", str(bundle), "--all", "--max-frames", "4096",
                     "--json").json()["backtraces"]
    chains = [[f["function"] for f in t["frames"]] for t in traces]
    assert any(KINDS[kind] in c and "worker_main" in c for c in chains), chains
    summary = json.loads((bundle / "summary.json").read_text())
    if kind != "hang":
        assert summary["crash"]["function"] == KINDS[kind]
        assert summary["crash"]["thread_name"].startswith("worker-")
        assert summary["signature"]["frames"][0] == KINDS[kind]
    else:
        assert doc["outcome"]["kind"] == "hang"
    # JUnit that parses, with the failure
    suite = ET.parse(tmp_path / "junit.xml").getroot()
    case = suite.find("testsuite/testcase")
    assert case is not None and case.find("failure") is not None
    assert {"classname", "name", "file", "line", "time"} <= set(case.attrib)
    if kind != "hang":
        assert case.attrib["file"] == "guest-stubs/refguest/main.c"
        assert int(case.attrib["line"]) > 0
    assert "refguest: crashing kind=" + kind in case.findtext("system-out", "")
    # stock gdb on the core: guest threads, unwound to worker_main, the runtime counter
    gdb = subprocess.run(["gdb", "-batch", "-nx", "-ex", "info threads", "-ex",
                          "thread apply all bt", "-ex", "print/x planted_counter", "-ex",
                          "print/x requests_handled", str(guest_image), str(core)],
                         capture_output=True, text=True, timeout=120).stdout
    ids = sorted(int(i) for i in re.findall(r"^\*?\s+\d+\s+LWP (\d+)", gdb, re.M))
    assert ids == sorted(t["id"] for t in threads)
    assert gdb.count("worker_main") >= 4
    counter, handled = (int(v, 16) for v in re.findall(r"^\$\d+ = (0x[0-9a-f]+)$", gdb, re.M))
    check_planted_counter(counter, handled, cpus=2)
    assert counter != 0x5EED000000000000 or handled == 0


def test_the_crash_screen_comes_before_the_fail_line(tmp_path: Path) -> None:
    code, out, _ = run_ci(tmp_path, "threads=4 crash=null crash_after=100", json=False)
    assert code == 1
    lines = out.splitlines()
    assert lines[-1].startswith("undebug: FAIL: page fault writing 0x0 in crash_null")
    screen = "\n".join(lines[:-1])
    assert "thread:  " in screen and "worker-" in screen
    assert "address: 0x0 (write)" in screen
    assert re.search(r"#\d+ +crash_null at .*main\.c:\d+", screen)
    assert "last trace events:" in screen and " fault" in screen
    assert "PANIC: null pointer dereference" in screen
    assert f"bundle:  {only_bundle(tmp_path)}" in screen
    assert len(lines) < 60  # one screen


def test_github_annotations_and_step_summary(tmp_path: Path) -> None:
    summary = tmp_path / "step.md"
    env = {**os.environ, "GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    code, out, _ = run_ci(tmp_path, "threads=2 crash=stack-overflow crash_after=100",
                          env=env, json=False)
    assert code == 1
    errors = [line for line in out.splitlines() if line.startswith("::error ")]
    # a stack overflow has many frames: GitHub shows 10, so the 10th sums up the rest
    assert 1 <= len(errors) <= 10
    # repository-relative (the checkout is the working directory), as GitHub links them
    assert re.match(r"::error file=guest-stubs/refguest/main\.c,line=\d+,title=undebug%3A "
                    r"refguest::page fault writing", errors[0]), errors[0]
    text = summary.read_text()
    assert text.startswith("### undebug FAIL: page fault writing")
    assert "recurse_forever" in text


def test_the_step_summary_stays_under_github_s_limit(tmp_path: Path) -> None:
    summary = tmp_path / "step.md"
    summary.write_bytes(b"x" * ((1 << 20) - 100))  # earlier steps filled it nearly
    env = {**os.environ, "GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary)}
    code, _, _ = run_ci(tmp_path, "threads=2 crash=panic crash_after=100", env=env)
    assert code == 1
    assert summary.stat().st_size <= 1 << 20


def test_expect_exit(tmp_path: Path) -> None:
    import json

    code, out, _ = run_ci(tmp_path, "threads=2 run_for=200", "--expect-exit", "0")
    assert code == 0 and json.loads(out)["outcome"]["ok"] is True
    assert not (tmp_path / "dumps").exists() or not list((tmp_path / "dumps").iterdir())
    code, out, _ = run_ci(tmp_path, "threads=2 run_for=200", "--expect-exit", "3")
    assert code == 1
    doc = json.loads(out)
    assert doc["outcome"]["reason"] == "guest exited with code 0, expected 3"
    summary = json.loads((only_bundle(tmp_path) / "summary.json").read_text())
    assert summary["complete"] is True and summary["core"] is None
    assert "refguest: shutdown code=0" in summary["console_tail"]
    case = ET.parse(tmp_path / "junit.xml").getroot().find("testsuite/testcase")
    assert case is not None and case.find("failure") is not None


def test_ci_options_need_ci(tmp_path: Path) -> None:
    for option in (["--dump-dir", "x"], ["--junit", "x"], ["--expect-exit", "0"],
                   ["--hang-after", "2"], ["--qemu-core"]):
        result = undebug("run", *option, "build/refguest.elf")
        assert result.code == 2 and "goes with --ci" in result.stderr


def test_qemu_core_puts_qemus_own_dump_in_the_failures_bundle(tmp_path: Path) -> None:
    """--qemu-core: beside undebug's core.elf, QEMU's dump-guest-memory ELF of the crashed
    guest, as binutils' readelf reads it: a core with one QEMU note per vCPU (-smp 2)."""
    import json

    code, out, err = run_ci(tmp_path, "threads=2 crash=null crash_after=100", "--qemu-core")
    assert code == 1, out + err
    doc = json.loads(out)
    qemu = only_bundle(tmp_path) / "qemu-core.elf"
    assert doc["qemu_core"]["file"] == "qemu-core.elf" and doc["qemu_core"]["error"] is None
    assert doc["qemu_core"]["bytes"] == qemu.stat().st_size
    assert (qemu.stat().st_mode & 0o777) == 0o600
    notes = subprocess.run(["readelf", "-n", str(qemu)], capture_output=True, text=True).stdout
    assert len(re.findall(r"^\s+QEMU\s+0x", notes, re.M)) == 2, notes
    assert (only_bundle(tmp_path) / "core.elf").exists()
