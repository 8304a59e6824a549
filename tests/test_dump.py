"""Dump bundles of the real reference guest, read back offline: by undebug's own commands
through CoreTarget, by stock gdb and by drgn. One breakpoint stop is dumped; every offline
answer is compared with the live one at that same stop (the guest stays stopped), or with
an independent reader (gdb, drgn, the ELF's own bytes)."""

from __future__ import annotations

import json
import re
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import boot, check_planted_counter, undebug

SCRUBBED_SEED = 0x5C7BBED05C7BBED0  # planted_scrubbed[] in the ELF (refguest README)


@pytest.fixture(scope="module")
def stopped(guest_image: Path) -> Iterator[str]:
    """A guest stopped at a breakpoint in a worker (checksum_block), for the module."""
    name = boot("dumpme", "threads=4", guest_image)
    assert undebug("break", name, "checksum_block").code == 0
    stop = undebug("wait", name, "--timeout", "30", "--json")
    assert stop.code == 0, stop.stdout + stop.stderr
    yield name
    undebug("kill", name)


@pytest.fixture(scope="module")
def bundles(stopped: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("bundles")
    made = {}
    for kind, extra in (("full", []), ("sparse", ["--sparse"])):
        result = undebug("dump", stopped, "-o", str(out / kind), "--json", *extra)
        assert result.code == 0, result.stdout + result.stderr
        made[kind] = Path(result.json()["bundle"])
    return made


def data(*args: str) -> dict[str, Any]:
    result = undebug(*args, "--json")
    assert result.code == 0, result.stdout + result.stderr
    doc = result.json()
    doc.pop("warnings")
    doc.pop("schema")  # the envelope's: summary.json's maps/heap/net hold the data only
    return doc


def mem_int(target: str, symbol: str) -> int:
    return int.from_bytes(bytes.fromhex(data("mem", target, symbol, "8")["hex"]), "little")


@pytest.mark.parametrize("kind", ["full", "sparse"])
def test_offline_commands_agree_with_the_live_guest_at_the_stop(
        stopped: str, bundles: dict[str, Path], kind: str) -> None:
    bundle = str(bundles[kind])
    assert data("threads", bundle) == data("threads", stopped)
    live_bt = data("bt", stopped, "--all")
    assert data("bt", bundle, "--all") == live_bt
    # the stop is in a worker: its planted chain is in the offline backtraces
    chains = [[f["function"] for f in t["frames"]] for t in live_bt["backtraces"]]
    assert ["checksum_block", "handle_request", "worker_main"] in [c[:3] for c in chains]
    for symbol in ("planted_counter", "requests_handled"):
        assert mem_int(bundle, symbol) == mem_int(stopped, symbol)
    check_planted_counter(mem_int(bundle, "planted_counter"),
                          mem_int(bundle, "requests_handled"), cpus=2)
    for cpu in ("0", "1"):
        assert data("regs", bundle, "--cpu", cpu) == data("regs", stopped, "--cpu", cpu)
    assert data("sym", bundle, "worker_main") == data("sym", stopped, "worker_main")


def test_the_summary_holds_maps_heap_and_net_as_their_commands_show_them(
        stopped: str, bundles: dict[str, Path]) -> None:
    """summary.json's maps, heap and net are the data of those commands at the stop (net:
    the guest's own view; QEMU's host view is not kept), and maps and heap read the same
    from the bundle as from the live guest."""
    summary = json.loads((bundles["full"] / "summary.json").read_text())
    live_maps, live_heap = data("maps", stopped), data("heap", stopped)
    assert summary["maps"] == live_maps and summary["heap"] == live_heap
    assert any(r["kinds"] and "stack" in r["kinds"] for r in summary["maps"]["regions"])
    assert summary["heap"]["heaps"] and summary["heap"]["heaps"][0]["total"] > 0
    live_net = data("net", stopped)
    assert summary["net"] == {k: live_net[k] for k in ("lwip", "interfaces", "sockets")}
    assert summary["net"]["lwip"] is True
    for kind in ("full", "sparse"):
        bundle = str(bundles[kind])
        assert data("heap", bundle) == live_heap
        offline = data("maps", bundle)
        assert offline["regions"] == live_maps["regions"], kind


def test_bundle_files_are_private_and_the_summary_names_the_stop(bundles: dict[str, Path]) -> None:
    for bundle in bundles.values():
        assert (bundle.stat().st_mode & 0o777) == 0o700
        for f in bundle.iterdir():
            assert (f.stat().st_mode & 0o777) == 0o600, f
        assert not (bundle / "INCOMPLETE").exists()
        summary = json.loads((bundle / "summary.json").read_text())
        assert summary["schema"] == "undebug-bundle/1" and summary["complete"] is True
        assert summary["reason"]["kind"] == "request"
        worker = next(t for t in summary["threads"]
                      if t["frames"] and t["frames"][0]["function"] == "checksum_block")
        methods = [f["method"] for f in worker["frames"]]
        assert methods[0] == "registers" and methods[1:]
        assert set(methods[1:]) <= {"cfi", "fp"}  # with CFI in every frame: "cfi"
        assert "qemu-system-x86_64" in Path(summary["qemu_command_line"][0]).name
        assert summary["elfs"][0]["build_id"] == _build_id(Path(summary["elfs"][0]["path"]))


def _build_id(elf: Path) -> str:
    out = subprocess.run(["readelf", "-n", str(elf)], capture_output=True, text=True).stdout
    found = re.search(r"Build ID: ([0-9a-f]+)", out)
    assert found
    return found.group(1)


def _elf_bytes_of(elf: Path, symbol: str, size: int) -> bytes:
    """``size`` bytes of ``symbol`` as the ELF file holds them (pyelftools, not undebug)."""
    from elftools.elf.elffile import ELFFile

    with elf.open("rb") as f:
        e = ELFFile(f)
        sym = e.get_section_by_name(".symtab").get_symbol_by_name(symbol)[0]
        address = sym["st_value"]
        for seg in e.iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= address < \
                    seg["p_vaddr"] + seg["p_filesz"]:
                f.seek(seg["p_offset"] + address - seg["p_vaddr"])
                return f.read(size)
    raise AssertionError(f"{symbol} has no file bytes")


def gdb(elf: Path, core: Path, *commands: str) -> str:
    args = ["gdb", "-batch", "-nx", "-ex", "set pagination off"]
    for c in commands:
        args += ["-ex", c]
    proc = subprocess.run([*args, str(elf), str(core)], capture_output=True, text=True,
                          timeout=120)
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("kind", ["full", "sparse"])
def test_gdb_sees_guest_threads_their_chains_and_runtime_values(
        stopped: str, bundles: dict[str, Path], guest_image: Path, kind: str) -> None:
    core = bundles[kind] / "core.elf"
    threads = data("threads", stopped)["threads"]
    out = gdb(guest_image, core, "info threads", "thread apply all bt",
              "print/x planted_counter", "print/x requests_handled",
              "print/x planted_scrubbed[7]")
    assert "too small" not in out and "warning" not in out.lower(), out
    assert sorted(int(i) for i in re.findall(r"LWP (\d+)\)?\s", out.split("Thread ")[0])) \
        == sorted(t["id"] for t in threads)
    # each worker's chain reaches worker_main: the running one from its vCPU's registers,
    # the sleeping ones from their saved contexts
    for t in threads:
        if t["name"].startswith("worker-"):
            block = out.split(f"(LWP {t['id']}):")[1].split("\nThread ")[0]
            assert "worker_main" in block, block
    assert re.search(r"#0 .*checksum_block .*\n#1 .*handle_request .*\n#2 .*worker_main", out)
    values = [int(v, 16) for v in re.findall(r"^\$\d+ = (0x[0-9a-f]+)$", out, re.M)]
    assert values[0] == mem_int(stopped, "planted_counter")
    check_planted_counter(values[0], values[1], cpus=2)
    # the guest zeroed this page of .data at boot: the ELF's bytes are stale
    assert _elf_bytes_of(guest_image, "planted_scrubbed", 8) == struct.pack("<Q", SCRUBBED_SEED)
    assert values[2] == 0


def _segments(core: Path) -> list[tuple[int, int, int]]:
    """(vaddr, filesz, memsz) of each PT_LOAD, by readelf."""
    out = subprocess.run(["readelf", "-lW", str(core)], capture_output=True, text=True).stdout
    return [(int(m[1], 16), int(m[2], 16), int(m[3], 16)) for m in
            re.finditer(r"LOAD\s+0x\S+\s+(0x\S+)\s+0x\S+\s+(0x\S+)\s+(0x\S+)", out)]


def test_sparse_leaves_zero_pages_out_and_they_still_read_as_zero(
        stopped: str, bundles: dict[str, Path], guest_image: Path) -> None:
    full, sparse = bundles["full"] / "core.elf", bundles["sparse"] / "core.elf"
    assert sparse.stat().st_size * 10 < full.stat().st_size
    # a page past a segment's file bytes (left out as zero) somewhere in the guest's .bss
    holes = [(v + f, v + m) for v, f, m in _segments(sparse) if f < m]
    assert holes
    start = holes[-1][0]
    live = data("mem", stopped, hex(start), "64")["hex"]
    assert live == "00" * 64
    assert data("mem", str(bundles["sparse"]), hex(start), "64")["hex"] == live
    out = gdb(guest_image, sparse, f"x/8gx {start:#x}")
    assert re.findall(r"0x[0-9a-f]{16}", out.split(":", 1)[1]) == ["0x0000000000000000"] * 8, out


def test_drgn_opens_the_core_with_threads_and_reads_the_counter(
        stopped: str, bundles: dict[str, Path], guest_image: Path) -> None:
    import drgn  # a dev dependency (pyproject.toml): missing is a failure, not a skip
    prog = drgn.Program()
    prog.set_core_dump(str(bundles["sparse"] / "core.elf"))
    module = prog.extra_module("refguest", create=True)
    module.address_range = (0x100000, 1 << 32)
    module.try_file(str(guest_image), force=True)
    assert prog["planted_counter"].value_() == mem_int(stopped, "planted_counter")
    assert prog["planted_scrubbed"][0].value_() == 0
    ids = sorted(t.tid for t in prog.threads())
    assert ids == sorted(t["id"] for t in data("threads", stopped)["threads"])
    blocked = next(t for t in data("threads", stopped)["threads"] if t["name"] == "blocked")
    frames = [f.name for f in prog.thread(blocked["id"]).stack_trace()]
    assert frames[:4] == ["schedule", "block", "wait_for_event", "blocker_main"]


def test_run_control_on_a_bundle_is_refused(bundles: dict[str, Path]) -> None:
    for command in (["cont"], ["stop"], ["step"], ["break", "--list"]):
        result = undebug(command[0], str(bundles["full"]), *command[1:])
        assert result.code == 2
        assert "never run, stopped, stepped or given breakpoints" in result.stderr


def test_flight_recorder_reads_from_a_bundle(stopped: str, bundles: dict[str, Path]) -> None:
    live = undebug("trace", "show", stopped, "--flight-recorder", "--json").json()
    offline = undebug("trace", "show", str(bundles["full"]), "--flight-recorder", "--json")
    assert offline.code == 0, offline.stderr
    doc = offline.json()
    assert doc["events"] and doc["events"] == live["events"]


# ---- damaged bundles: a clear message, exit 2, and what can still be shown ----------

@pytest.fixture
def copy(bundles: dict[str, Path], tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "bundle"
    shutil.copytree(bundles["sparse"], dest)
    return dest


def _edit_summary(bundle: Path, **changes: Any) -> None:
    path = bundle / "summary.json"
    summary = json.loads(path.read_text())
    summary.update(changes)
    path.write_text(json.dumps(summary))


def test_a_truncated_core_is_reported_with_exit_2(copy: Path) -> None:
    core = copy / "core.elf"
    with core.open("r+b") as f:
        f.truncate(core.stat().st_size // 2)
    result = undebug("threads", str(copy))
    assert result.code == 2
    assert "truncated core" in result.stderr


def test_a_core_without_the_vcpu_notes_still_lists_the_sleeping_threads(
        copy: Path, stopped: str) -> None:
    core = copy / "core.elf"
    raw = bytearray(core.read_bytes())
    count = raw.count(b"UNDEBUG\0")
    assert count >= 3  # two vCPUs and the info note
    core.write_bytes(bytes(raw.replace(b"UNDEBUG\0", b"XNDEBUG\0")))
    result = undebug("threads", str(copy), "--json")
    assert result.code == 2
    assert any("has no vCPU notes" in w for w in result.json()["warnings"])
    shown = {t["id"] for t in result.json()["threads"]}
    sleeping = {t["id"] for t in data("threads", stopped)["threads"] if t["cpu"] is None}
    assert sleeping <= shown


def test_a_summary_of_a_newer_schema_is_refused_with_what_the_core_shows(
        copy: Path, stopped: str) -> None:
    _edit_summary(copy, schema="undebug-bundle/99")
    result = undebug("threads", str(copy), "--json")
    assert result.code == 2
    assert any("newer than this undebug reads" in w for w in result.json()["warnings"])
    assert result.json()["threads"] == data("threads", stopped)["threads"]


def test_a_missing_elf_is_named_and_elf_overrides_it(copy: Path, guest_image: Path) -> None:
    summary = json.loads((copy / "summary.json").read_text())
    summary["elfs"][0]["path"] = str(copy / "gone.elf")
    _edit_summary(copy, elfs=summary["elfs"])
    result = undebug("threads", str(copy))
    assert result.code == 2
    assert "the guest's ELF is missing" in result.stderr and "gone.elf" in result.stderr
    assert "--elf" in result.stderr
    assert undebug("threads", str(copy), "--elf", str(guest_image)).code == 0


def test_an_incomplete_bundle_says_so(copy: Path) -> None:
    (copy / "INCOMPLETE").write_text("this bundle is incomplete: the disk filled up\n")
    result = undebug("threads", str(copy))
    assert result.code == 2
    assert "the disk filled up" in result.stderr
    assert "worker-0" in result.stdout


def test_gdbserver_serves_a_bundle_to_gdb_with_thread_names(
        stopped: str, bundles: dict[str, Path], guest_image: Path) -> None:
    import sys

    server = subprocess.Popen([sys.executable, "-m", "undebug.cli", "gdbserver",
                               str(bundles["sparse"]), "--listen", "127.0.0.1:0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        where = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
        assert where, line + server.stderr.read() if server.stderr else line
        proc = subprocess.run(["gdb", "-batch", "-nx", "-ex", f"target remote {where[1]}",
                              "-ex", "info threads", "-ex", "thread apply all bt", "-ex",
                              "print/x planted_counter", "-ex", "monitor dump", "-ex", "continue",
                              str(guest_image)], capture_output=True, text=True,
                             timeout=120)
    finally:
        server.terminate()
        server.wait(timeout=30)
    console = proc.stderr  # gdb prints the server's O packets there
    out = proc.stdout
    threads = data("threads", stopped)["threads"]
    for t in threads:
        if "\x1b" not in t["name"]:
            assert f'Thread {t["id"]} "{t["name"]}"' in out, out
    assert re.search(r"#0 .*checksum_block .*\n#1 .*handle_request .*\n#2 .*worker_main", out)
    counter = int(re.findall(r"^\$1 = (0x[0-9a-f]+)$", out, re.M)[0], 16)
    assert counter == mem_int(stopped, "planted_counter")
    assert "this is a dump bundle: it cannot run" in console
    assert "undebug: monitor dump needs a live guest: this is a dump bundle already" in console


def test_the_summary_holds_the_last_flight_recorder_events(bundles: dict[str, Path]) -> None:
    shown = undebug("trace", "show", str(bundles["full"]), "--flight-recorder", "--json")
    events = shown.json()["events"]
    tail = json.loads((bundles["full"] / "summary.json").read_text())["flight_recorder"]["tail"]
    assert len(tail) == 50

    def key(e: dict[str, Any]) -> tuple[Any, ...]:
        return (e["index"], e["tsc"], e["cpu"], e["tid"], e["thread"], e["tracepoint"],
                e["args"])

    assert [key(e) for e in tail] == [key(e) for e in events[-50:]]


def test_a_tampered_core_never_crashes_the_reader(bundles: dict[str, Path], guest_image: Path,
                                                  tmp_path: Path) -> None:
    """Seeded random damage to a real core's headers, notes and size: opening it and
    reading through it raise undebug's own errors (shown as messages), nothing else."""
    import random

    from undebug.coretarget import CoreTarget
    from undebug.dump.summary import all_threads, backtraces
    from undebug.elf import ElfFile
    from undebug.errors import UndebugError
    from undebug.os import provider_for

    original = (bundles["sparse"] / "core.elf").read_bytes()
    phnum = struct.unpack_from("<H", original, 56)[0]
    front = 64 + 56 * phnum + 0x2000  # headers, program headers, notes
    elf = ElfFile(guest_image)
    rng = random.Random(14)
    core = tmp_path / "core.elf"
    opened = 0
    for _ in range(300):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(front)] = rng.randrange(256)
        if rng.random() < 0.3:
            del data[rng.randrange(len(data)):]
        core.write_bytes(bytes(data))
        try:
            target = CoreTarget(core, elf)
        except UndebugError:
            continue
        opened += 1
        with target:
            for address in (0, 0x100000, elf.symbol("planted_counter").address, 1 << 63):
                try:
                    target.read(address, 4096)
                    target.read_physical(address, 64)
                except UndebugError:
                    pass
            for cpu in range(target.cpu_count()):
                assert isinstance(target.registers(cpu), dict)
            try:  # what threads and bt --all do with it
                provider = provider_for(target)
                threads, warnings = all_threads(target, provider)
                backtraces(target, provider, threads, 16, warnings)
            except UndebugError:
                pass
    assert opened > 100  # most damage leaves a readable core: the reads above ran


def test_a_dump_that_fails_midway_is_marked_incomplete(stopped: str, tmp_path: Path) -> None:
    """A real write failure: the file size limit (RLIMIT_FSIZE, SIGXFSZ ignored) cuts
    core.elf at 4 MiB with EFBIG; the bundle is still renamed into place, marked."""
    import resource
    import signal
    import sys

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))

    proc = subprocess.run([sys.executable, "-m", "undebug.cli", "dump", stopped, "-o",
                           str(tmp_path), "--json"], capture_output=True, text=True,
                          preexec_fn=limit, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["complete"] is False
    bundle = Path(doc["bundle"])
    assert [p.name for p in tmp_path.iterdir()] == [bundle.name]  # no .partial left
    assert "File too large" in (bundle / "INCOMPLETE").read_text()
    summary = json.loads((bundle / "summary.json").read_text())
    assert summary["complete"] is False and "File too large" in summary["failure"]
    shown = undebug("threads", str(bundle))
    assert shown.code == 2 and "incomplete" in shown.stderr


def test_include_elf_makes_the_bundle_open_without_the_original(
        stopped: str, tmp_path: Path, guest_image: Path) -> None:
    result = undebug("dump", stopped, "-o", str(tmp_path), "--sparse", "--include-elf",
                     "--json")
    assert result.code == 0, result.stderr
    bundle = Path(result.json()["bundle"])
    copy = bundle / "elf" / guest_image.name
    assert copy.read_bytes() == guest_image.read_bytes()
    assert copy.stat().st_mode & 0o777 == 0o600
    summary = json.loads((bundle / "summary.json").read_text())
    summary["elfs"][0]["path"] = "/nonexistent/refguest.elf"  # "another machine"
    (bundle / "summary.json").write_text(json.dumps(summary))
    assert data("threads", str(bundle)) == data("threads", stopped)


def test_qemu_core_is_qemus_own_elf_dump_private_beside_ours(stopped: str, tmp_path: Path) -> None:
    """--qemu-core: QEMU's dump-guest-memory (paging off) as qemu-core.elf, read by binutils'
    readelf: an ELF core with one CORE NT_PRSTATUS and one QEMU note per vCPU, RAM at its
    physical addresses (QEMU's format without paging), 0600; undebug's core.elf is still
    there."""
    result = undebug("dump", stopped, "-o", str(tmp_path), "--sparse", "--qemu-core", "--json")
    assert result.code == 0, result.stdout + result.stderr
    doc = result.json()
    bundle = Path(doc["bundle"])
    qemu = bundle / "qemu-core.elf"
    assert (qemu.stat().st_mode & 0o777) == 0o600
    assert doc["qemu_core"]["file"] == "qemu-core.elf" and doc["qemu_core"]["error"] is None
    assert doc["qemu_core"]["bytes"] == qemu.stat().st_size
    header = subprocess.run(["readelf", "-h", str(qemu)], capture_output=True, text=True).stdout
    assert re.search(r"Type:\s+CORE", header) and "X86-64" in header
    notes = subprocess.run(["readelf", "-n", str(qemu)], capture_output=True, text=True).stdout
    owners = re.findall(r"^\s+(\S+)\s+0x[0-9a-f]+\s+(.+?)\s*$", notes, re.M)
    summary = json.loads((bundle / "summary.json").read_text())
    smp = summary["smp"]
    assert smp == 2  # boot()'s
    assert sum(1 for o, t in owners if o == "CORE" and "NT_PRSTATUS" in t) == smp, notes
    assert sum(1 for o, _ in owners if o == "QEMU") == smp, notes
    loads = subprocess.run(["readelf", "-lW", str(qemu)], capture_output=True,
                           text=True).stdout
    segments = re.findall(r"^\s+LOAD\s+0x[0-9a-f]+ (0x[0-9a-f]+) (0x[0-9a-f]+) "
                          r"0x[0-9a-f]+ (0x[0-9a-f]+)", loads, re.M)
    # paging=false: no page-table walk, every segment at virtual = physical (QEMU 7.2),
    # the guest's RAM (< 3 GiB: one block at 0) and the BIOS ROM below 4 GiB
    assert segments and all(v == p for v, p, _ in segments), segments
    ram = {int(p, 16): int(size, 16) for _, p, size in segments}
    assert ram[0] == summary["memory_mb"] << 20
    assert (bundle / "core.elf").exists() and not (bundle / "INCOMPLETE").exists()
    assert "qemu-core.elf:" in undebug("dump", stopped, "-o", str(tmp_path / "t"),
                                       "--sparse", "--qemu-core").stdout


def test_the_qemu_core_op_refuses_bad_arguments(stopped: str) -> None:
    """The supervisor's qemu_core op, over the real socket: a relative path and a
    timeout that is no finite number are refused before QEMU is asked."""
    from undebug.errors import UsageError
    from undebug.session.client import SupervisorClient
    from undebug.session.store import SessionDir

    with SupervisorClient(SessionDir.named(stopped)) as client:
        with pytest.raises(UsageError, match="absolute path"):
            client.qemu_core("relative/qemu-core.elf")
        with pytest.raises(UsageError, match="timeout"):
            client.call("qemu_core", file="/nonexistent/x.elf", timeout=float("nan"))


def test_a_bundle_name_taken_in_the_same_second_gets_a_number(stopped: str, tmp_path: Path) -> None:
    """Two failures dumped within one second (a dump takes well under one): the second
    bundle is <name>-<time>-2, the first untouched. Every name of the next seconds is
    taken here beforehand, so whichever second the dump starts in, its name is taken."""
    import time

    now = int(time.time())
    taken = [tmp_path / f"{stopped}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(t))}"
             for t in range(now, now + 30)]
    for path in taken:
        path.mkdir()
        (path / "mine").write_text("kept")
    result = undebug("dump", stopped, "-o", str(tmp_path), "--sparse", "--json")
    assert result.code == 0, result.stdout + result.stderr
    bundle = Path(result.json()["bundle"])
    assert bundle.parent == tmp_path and bundle.name.endswith("-2")
    assert bundle.with_name(bundle.name[:-2]) in taken
    assert (bundle / "core.elf").exists()
    assert all((path / "mine").read_text() == "kept" and len(list(path.iterdir())) == 1
               for path in taken)
