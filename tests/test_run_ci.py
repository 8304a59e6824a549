"""`undebug run --ci` against the real reference guest in real QEMU (TCG): every crash
kind gives its documented console signature and host-side verdict, with the guest still
there, paused, at the moment of the verdict."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import undebug
from undebug.session.store import runtime_dir

CRASHES = [
    # kind, console signature, outcome kind, QEMU run state at the verdict
    ("null", "PANIC: null pointer dereference (cr2=0x0)", "panic", "guest-panicked"),
    ("panic", "PANIC: planted panic (crash=panic)", "panic", "guest-panicked"),
    ("assert", "PANIC: assertion failed: ", "panic", "guest-panicked"),
    ("stack-overflow", "PANIC: stack overflow in thread ", "panic", "guest-panicked"),
    ("div0", "PANIC: unhandled exception #DE", "panic", "guest-panicked"),
    ("oom", "PANIC: out of memory (heap used=", "panic", "guest-panicked"),
    ("triple-fault", "refguest: crashing kind=triple-fault", "reset", "shutdown"),
]


def run_ci(image: Path, append: str, timeout: str = "60") -> dict:
    result = undebug("run", "--ci", "--json", "--timeout", timeout, "--smp", "2",
                     "--append", append, str(image))
    doc = result.json()
    doc["exit"] = result.code
    return doc


def test_clean_shutdown_exits_0(guest_image: Path) -> None:
    doc = run_ci(guest_image, "threads=4 run_for=300")
    assert doc["exit"] == 0
    assert doc["outcome"] == {"kind": "exit", "reason": "guest exited with code 0", "ok": True,
                              "exit_code": 0, "run_state": None}
    assert "refguest: shutdown code=0" in doc["console_tail"]


def test_clean_shutdown_human_output(guest_image: Path) -> None:
    result = undebug("run", "--ci", "--append", "run_for=200", str(guest_image))
    assert result.code == 0
    assert result.stdout.strip() == "undebug: PASS: guest exited with code 0"
    assert "refguest: ready" in result.stderr  # the console streams to stderr


@pytest.mark.parametrize(("kind", "signature", "outcome", "state"), CRASHES,
                         ids=[c[0] for c in CRASHES])
def test_crash_kinds(guest_image: Path, kind: str, signature: str, outcome: str,
                     state: str) -> None:
    doc = run_ci(guest_image, f"threads=4 crash={kind} crash_after=100")
    assert doc["exit"] == 1
    assert doc["outcome"]["kind"] == outcome
    assert doc["outcome"]["ok"] is False
    assert doc["outcome"]["run_state"] == state  # paused, not gone
    assert any(signature in line for line in doc["console_tail"]), doc["console_tail"]
    if outcome == "panic":  # in words: what, in which function, on which thread
        reason = doc["outcome"]["reason"]
        function = "recurse_forever" if kind == "stack-overflow" else f"crash_{kind}"
        assert f" in {function} (main.c:" in reason and ", thread worker-" in reason, reason
        if kind in ("panic", "assert", "oom"):  # no exception: the panic's own message too
            assert signature in reason, reason
    names = [g["name"] for g in undebug("ps", "--json").json()["guests"]]
    assert doc["name"] not in names  # the session was cleaned up


def test_hang_hits_the_timeout_and_is_paused(guest_image: Path) -> None:
    doc = run_ci(guest_image, "threads=2 crash=hang crash_after=100", timeout="4")
    assert doc["exit"] == 1
    assert doc["outcome"]["kind"] == "timeout"
    assert doc["outcome"]["run_state"] == "paused"
    assert "refguest: hanging" in doc["outcome"]["reason"]


def test_crash_reason_is_one_escaped_line(guest_image: Path) -> None:
    result = undebug("run", "--ci", "--append", "crash=panic crash_after=50", str(guest_image))
    assert result.code == 1
    lines = result.stdout.splitlines()  # the crash screen, then the verdict, last
    assert lines[-1].startswith("undebug: FAIL: panic in crash_panic (main.c:"), lines
    assert lines[-1].endswith(": PANIC: planted panic (crash=panic)"), lines
    assert all("\x1b" not in line for line in lines)


def test_a_guest_that_never_boots_times_out_with_its_console(tmp_path: Path) -> None:
    """A real PVH image built here whose entry point only halts: no output, no exit."""
    from tests.test_image import ENTRY, PVH_NOTE, build

    image = build(tmp_path, "silent", PVH_NOTE + ENTRY, 32)
    result = undebug("run", "--ci", "--timeout", "2", str(image))
    assert result.code == 1
    lines = result.stdout.splitlines()  # the crash screen, then the verdict, last
    assert lines[-1] == ("undebug: FAIL: no shutdown within 2 s (guest paused); last console "
                         "line: (console empty)")
    assert lines[-2].startswith("bundle:  ") and "INCOMPLETE" not in lines[-2]


def test_parallel_runs_with_the_default_name(guest_image: Path, tmp_path: Path) -> None:
    """8 at once, 3 rounds: each its own name and a right verdict; no session directory
    and no guest RAM file left. The image gets a name of its own, so the sessions (and
    RAM files, named after them) are this test's."""
    image = tmp_path / "parallel-ci.elf"
    shutil.copy(guest_image, image)
    command = [sys.executable, "-m", "undebug.cli", "run", "--ci", "--json", "--accel", "tcg",
               "--timeout", "30", "--append", "crash=panic crash_after=300", str(image)]
    verdicts = []
    for _ in range(3):
        procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(8)]
        names = set()
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert "Traceback" not in err, err
            assert proc.returncode == 1, err
            doc = json.loads(out)
            names.add(doc["name"])
            verdicts.append((doc["outcome"]["kind"], doc["outcome"]["reason"]))
        assert len(names) == 8, names
    words = re.compile(r"panic in crash_panic \(main\.c:\d+\), thread worker-\d+: "
                       r"PANIC: planted panic \(crash=panic\)")
    assert all(kind == "panic" and words.fullmatch(reason) for kind, reason in verdicts), \
        verdicts
    assert [p.name for p in runtime_dir().iterdir() if "parallel-ci" in p.name] == []
    mine = os.fsencode(runtime_dir() / "parallel-ci")
    left = []  # no QEMU or supervisor of these guests runs on unseen
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if mine in Path(f"/proc/{pid}/cmdline").read_bytes():
                left.append(pid)
        except OSError:
            continue
    assert left == []
    shm = Path(f"/dev/shm/undebug-{os.getuid()}")
    if shm.is_dir():
        assert [p.name for p in shm.iterdir() if p.name.startswith("parallel-ci")] == []


def test_a_command_line_too_long_for_the_guest_is_said_on_its_console(guest_image: Path) -> None:
    """The guest keeps the first sizeof(boot_cmdline) - 1 bytes (its DWARF says how big
    the buffer is); past that it must say so, not drop the rest silently."""
    from undebug.elf import ElfFile

    buffer = ElfFile(guest_image).symbol("boot_cmdline")
    assert buffer is not None and buffer.size > 0
    append = "run_for=100 " + "x" * buffer.size
    doc = run_ci(guest_image, append)
    assert doc["exit"] == 0  # the options inside the limit still apply
    assert (f"refguest: warning: command line too long: {len(append)} bytes, only the first "
            f"{buffer.size - 1} are used") in doc["console_tail"]
