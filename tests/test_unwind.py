"""The in-process unwinder, on a real booted reference guest and against gdb's own unwinding.

One module fixture boots build/refguest.elf (-smp 2, 8 workers), stops it once ready,
walks ``thread_list`` with the DWARF layouts, unwinds every saved thread context and each
vCPU, then hands the same paused guest to ``gdb -batch`` (a gdb Python script swaps each
saved context in, walks the frames, restores) so the tests compare the two.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from undebug.elf import ElfFile
from undebug.gdb.rsp import RspClient
from undebug.unwind import Backtrace, TrapFrame, TrapFrameHook, unwind

ROOT = Path(__file__).resolve().parents[1]
SAVED = ("rip", "rsp", "rbp", "rbx", "r12", "r13", "r14", "r15")
PAGE = 4096

# gdb side: for each thread, load its saved context into CPU 0's registers, walk the
# frames (skipping inlined ones, which this unwinder does not synthesise), restore.
GDB_SCRIPT = r'''
import gdb, json
gdb.execute("set pagination off")
gdb.execute("set confirm off")
gdb.execute("target remote " + SOCKET)
def walk():
    out, frame = [], gdb.newest_frame()
    while frame is not None and len(out) < 64:
        if frame.type() == gdb.SIGTRAMP_FRAME:  # "<signal handler called>"
            out.append([frame.pc(), "<exception>"])
        elif frame.type() != gdb.INLINE_FRAME:
            out.append([frame.pc(), frame.name()])
        try:
            frame = frame.older()
        except gdb.error:
            break
    return out
result = {"threads": {}, "vcpus": {}}
for t in gdb.selected_inferior().threads():
    t.switch()
    result["vcpus"][str(t.num)] = walk()
gdb.execute("thread 1")
saved = {r: int(gdb.parse_and_eval("$" + r)) for r in REGS}
for tid, ctx in CONTEXTS.items():
    for r in REGS:
        gdb.execute("set $%s = %d" % (r, ctx[r]))
    result["threads"][tid] = walk()
for r in REGS:
    gdb.execute("set $%s = %d" % (r, saved[r]))
with open(OUT, "w") as f:
    json.dump(result, f)
'''


@dataclass
class GuestThread:
    id: int
    name: str
    state: str
    registers: dict[str, int]
    stack: tuple[int, int]


@dataclass
class Walked:
    elf: ElfFile
    threads: list[GuestThread]
    ours: dict[int, Backtrace]  # thread id -> backtrace from its saved context
    vcpus: dict[int, Backtrace]  # gdb thread number (1-based vCPU) -> live backtrace
    gdb_threads: dict[int, list[tuple[int, str | None]]] = field(default_factory=dict)
    gdb_vcpus: dict[int, list[tuple[int, str | None]]] = field(default_factory=dict)
    frames_per_second: float = 0.0


def _paged(client: RspClient) -> tuple[Callable[[int, int], bytes], dict[int, bytes]]:
    """Guest reads through the gdbstub, remembered page by page (for the speed test)."""
    pages: dict[int, bytes] = {}

    def read(address: int, size: int) -> bytes:
        out = bytearray()
        for page in range(address & ~(PAGE - 1), address + size, PAGE):
            if page not in pages:
                pages[page] = client.read_memory(page, PAGE)
            out += pages[page]
        start = address & (PAGE - 1)
        return bytes(out[start : start + size])

    return read, pages


def _walk_threads(elf: ElfFile, read: Callable[[int, int], bytes]) -> list[GuestThread]:
    layout = elf.struct("thread")
    states = elf.enum("thread_state")
    head = elf.symbol("thread_list")
    assert layout is not None and states is not None and head is not None

    def field_(data: bytes, path: str) -> int:
        member = layout.member(path)
        return int.from_bytes(data[member.offset : member.offset + member.size], "little")

    out: list[GuestThread] = []
    address = int.from_bytes(read(head.address, 8), "little")
    while address and len(out) < 100:
        data = read(address, layout.size)
        name = layout.member("name")
        raw = data[name.offset : name.offset + name.size].split(b"\0")[0]
        out.append(GuestThread(
            field_(data, "id"), raw.decode("utf-8", "backslashreplace"),
            states[field_(data, "state")].removeprefix("THREAD_").lower(),
            {reg: field_(data, f"ctx.{reg}") for reg in SAVED},
            (field_(data, "stack_lo"), field_(data, "stack_hi"))))
        address = field_(data, "next")
    return out


def _gdb(elf: Path, socket_path: Path, contexts: dict[int, dict[str, int]],
         tmp: Path) -> dict[str, dict[str, list[list[object]]]]:
    out = tmp / "gdb.json"
    script = tmp / "bt.py"
    script.write_text(f"SOCKET = {str(socket_path)!r}\nOUT = {str(out)!r}\n"
                      f"REGS = {list(SAVED)!r}\nCONTEXTS = {json.dumps(contexts)}\n"
                      + GDB_SCRIPT)
    proc = subprocess.run(["gdb", "-nx", "-batch", "-x", str(script), str(elf)],
                          capture_output=True, text=True, timeout=60)
    assert out.exists(), proc.stdout + proc.stderr
    return json.loads(out.read_text())  # type: ignore[no-any-return]


@contextlib.contextmanager
def _qemu(image: Path, append: str, smp: int) -> Iterator[tuple[Path, Path, Path]]:
    """A reference guest in QEMU with its gdbstub on a unix socket (this test's own, not a
    session's); yields (socket, console log, temp dir). A crash pauses it (pvpanic)."""
    if shutil.which("gdb") is None or shutil.which("qemu-system-x86_64") is None:
        pytest.skip("needs gdb and qemu-system-x86_64")
    tmp = Path(tempfile.mkdtemp(prefix="ud-unw-"))  # short: unix socket paths < 108 bytes
    sock, console = tmp / "gdb.sock", tmp / "console.log"
    qemu = subprocess.Popen(
        ["qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "128", "-smp", str(smp),
         "-display", "none", "-vga", "none", "-nodefaults", "-no-reboot",
         "-action", "reboot=shutdown,shutdown=pause,panic=pause", "-device", "pvpanic",
         "-chardev", f"socket,id=gdb0,path={sock},server=on,wait=off", "-gdb", "chardev:gdb0",
         "-serial", f"file:{console}", "-kernel", str(image), "-append", append],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            assert qemu.poll() is None and time.monotonic() < deadline, qemu.stderr
            time.sleep(0.02)
        yield sock, console, tmp
    finally:
        qemu.send_signal(signal.SIGKILL)
        qemu.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_console(console: Path, needle: bytes, timeout: float = 30) -> bytes:
    deadline = time.monotonic() + timeout
    while needle not in (text := console.read_bytes() if console.exists() else b""):
        assert time.monotonic() < deadline, f"guest never printed {needle!r}: {text!r}"
        time.sleep(0.05)
    return text


@pytest.fixture(scope="module")
def walked(guest_image: Path) -> Iterator[Walked]:
    with _qemu(guest_image, "threads=8", 2) as (sock, console, tmp):
        _wait_console(console, b"refguest: ready")
        client = RspClient.connect(sock)
        client.cont()
        time.sleep(0.3)  # let the workers settle into their sleep/request loop
        client.interrupt(timeout=5)
        elf = ElfFile(guest_image)
        read, pages = _paged(client)
        threads = _walk_threads(elf, read)
        ours = {t.id: unwind(elf, read, t.registers, t.stack)
                for t in threads if t.state != "running"}
        vcpus = {n: unwind(elf, read, client.registers(tid))
                 for n, tid in enumerate(client.threads(), 1)}

        def cached(address: int, size: int) -> bytes:
            start = address & (PAGE - 1)
            base = address - start
            data = b"".join(pages[p] for p in range(base, address + size, PAGE))
            return data[start : start + size]

        todo = [t for t in threads if t.state != "running"]
        started, frames = time.perf_counter(), 0
        for _ in range(20):
            for t in todo:
                frames += len(unwind(elf, cached, t.registers, t.stack).frames)
        rate = frames / (time.perf_counter() - started)
        client.close()  # no detach: the guest stays paused for gdb
        contexts = {t.id: t.registers for t in todo}
        result = _gdb(guest_image, sock, contexts, tmp)
        yield Walked(
            elf, threads, ours, vcpus,
            {int(k): [(pc, name) for pc, name in v] for k, v in result["threads"].items()},
            {int(k): [(pc, name) for pc, name in v] for k, v in result["vcpus"].items()},
            rate)


def _names(bt: Backtrace) -> list[str | None]:
    return [f.function for f in bt.frames]


def _as_gdb(bt: Backtrace) -> list[tuple[int, str | None]]:
    """(pc, function) per frame, an exception frame named as the gdb script names its
    signal frames."""
    return [(f.pc, "<exception>" if f.method == "exception" else f.function)
            for f in bt.frames]


def _by_name(walked: Walked, name: str) -> Backtrace:
    thread = next(t for t in walked.threads if t.name == name)
    return walked.ours[thread.id]


def test_planted_chains_unwind_to_the_trampoline(walked: Walked) -> None:
    sleeper = _by_name(walked, "sleeper")
    assert _names(sleeper) == ["schedule", "sleep_ms", "nap", "sleeper_main", "thread_entry",
                               "thread_trampoline"], sleeper
    blocked = _by_name(walked, "blocked")
    assert _names(blocked) == ["schedule", "block", "wait_for_event", "blocker_main",
                               "thread_entry", "thread_trampoline"], blocked
    assert sleeper.complete and blocked.complete
    assert not sleeper.warnings and not blocked.warnings
    assert [f.method for f in sleeper.frames] == ["registers"] + ["cfi"] * 5
    nap = sleeper.frames[2]
    assert nap.file == "main.c" and nap.line is not None and nap.offset is not None


def test_worker_threads_sit_in_worker_main(walked: Walked) -> None:
    workers = [t for t in walked.threads if t.name.startswith("worker-") and t.state != "running"]
    assert workers
    for thread in workers:
        names = _names(walked.ours[thread.id])
        assert "worker_main" in names, names
        above = names[: names.index("worker_main")]
        assert "handle_request" in above or "sleep_ms" in above or "yield" in above, names


def test_every_complete_backtrace_ends_at_the_thread_trampoline(walked: Walked) -> None:
    for thread in walked.threads:
        bt = walked.ours.get(thread.id)
        if bt is None:
            continue
        assert bt.complete, (thread.name, bt)
        if thread.name == "main":  # the boot thread was never started by the trampoline
            assert _names(bt) == ["schedule", "sleep_ms", "main_loop", "kmain", "pvh_start32"]
        else:
            assert bt.frames[-1].function == "thread_trampoline", (thread.name, bt)


def test_saved_contexts_agree_with_gdb(walked: Walked) -> None:
    assert set(walked.gdb_threads) == set(walked.ours)
    for thread_id, bt in walked.ours.items():
        theirs = walked.gdb_threads[thread_id]
        assert _as_gdb(bt) == theirs, (thread_id, bt, theirs)


def test_running_vcpus_agree_with_gdb(walked: Walked) -> None:
    assert len(walked.vcpus) == 2
    for number, bt in walked.vcpus.items():
        theirs = walked.gdb_vcpus[number]
        # gdb shows a zero return address as one last "0x0 in ??" frame; for us pc 0 is the
        # natural end of the stack (complete=True), not a frame.
        if theirs and theirs[-1] == (0, None):
            theirs = theirs[:-1]
            assert bt.complete, bt
        assert bt.frames, bt
        assert _as_gdb(bt) == theirs, (number, bt, theirs)


def test_unwinding_is_fast_after_warm_up(walked: Walked) -> None:
    # 1000 threads x 5 frames in well under a second needs > 5,000 frames/s; ask for 4x.
    assert walked.frames_per_second > 20_000, walked.frames_per_second
    print(f"unwind: {walked.frames_per_second:,.0f} frames/s")


# -- through an exception frame, by the trap entry's CFI alone, as gdb does ---------------

@dataclass
class Crashed:
    ours: Backtrace  # vCPU 0, no OS trap-frame hook: CFI only
    gdb: list[tuple[int, str | None]]
    rip: int  # the faulting rip, from the guest's own EXCEPTION line


@pytest.fixture(scope="module")
def crashed(guest_image: Path) -> Iterator[Crashed]:
    """crash=null on one vCPU, paused by the panic: our unwind of vCPU 0 and gdb's."""
    with _qemu(guest_image, "threads=2 crash=null crash_after=200", 1) as (sock, console, tmp):
        text = _wait_console(console, b"PANIC:")
        rip = re.search(rb"EXCEPTION vector=14 .* rip=(0x[0-9a-f]+)", text)
        assert rip is not None, text
        client = RspClient.connect(sock)
        read, _ = _paged(client)
        ours = unwind(ElfFile(guest_image), read, client.registers(client.threads()[0]))
        client.close()
        result = _gdb(guest_image, sock, {}, tmp)
        yield Crashed(ours, [(pc, name) for pc, name in result["vcpus"]["1"]],
                      int(rip.group(1), 16))


def test_cfi_alone_unwinds_through_the_exception_frame(crashed: Crashed) -> None:
    frames = crashed.ours.frames
    marker = next(i for i, f in enumerate(frames) if f.method == "exception")
    assert "isr_dispatch" in [f.function for f in frames[:marker]]
    trap = frames[marker].trap
    assert trap is not None and frames[marker].function is None
    # CFI says where the registers are, not which vector fired: that needs the OS.
    assert (trap.vector, trap.name, trap.error_code, trap.cr2) == (None, None, None, None)
    assert [f.function for f in frames[marker + 1 :]] == [
        "crash_null", "handle_request", "worker_main", "thread_entry", "thread_trampoline"]
    assert frames[marker + 1].pc == crashed.rip and frames[marker + 1].method == "cfi"
    assert crashed.ours.complete and not crashed.ours.warnings, crashed.ours


def test_gdb_unwinds_through_the_same_exception_frame(crashed: Crashed) -> None:
    # Stock gdb on the ELF follows the same .cfi_signal_frame ("<signal handler called>").
    assert "<exception>" in [name for _, name in crashed.gdb], crashed.gdb
    theirs = crashed.gdb[:-1] if crashed.gdb[-1] == (0, None) else crashed.gdb
    assert _as_gdb(crashed.ours) == theirs


# -- hostile input ----------------------------------------------------------------------
# A dict-backed read function stands in for corrupt guest memory, which a healthy guest
# cannot be made to produce on demand.

def _fake(memory: dict[int, int]) -> Callable[[int, int], bytes]:
    def read(address: int, size: int) -> bytes:
        out = b""
        for at in range(address, address + size, 8):
            if at not in memory:
                raise OSError(f"unmapped {at:#x}")
            out += memory[at].to_bytes(8, "little")
        return out[:size]
    return read


def _pc_without_cfi(elf: ElfFile) -> int:
    """An address in .text that no FDE covers (the assembly 32-bit entry has none)."""
    entry = elf.symbol("pvh_start32")
    assert entry is not None
    return entry.address + 1


def test_a_frame_pointer_loop_stops_with_a_warning(guest_image: Path) -> None:
    elf = ElfFile(guest_image)
    pc = _pc_without_cfi(elf)
    memory = {0x9000: 0x9000, 0x9008: pc}  # rbp points at itself
    bt = unwind(elf, _fake(memory), {"rip": pc, "rsp": 0x8ff0, "rbp": 0x9000})
    assert not bt.complete and len(bt.frames) <= 3
    assert any("does not grow" in w for w in bt.warnings), bt


def test_rsp_outside_the_stack_stops_with_a_warning(guest_image: Path) -> None:
    elf = ElfFile(guest_image)
    nap = elf.symbol("nap")
    assert nap is not None
    bt = unwind(elf, _fake({}), {"rip": nap.address + 8, "rsp": 0x5000, "rbp": 0x5010},
                stack=(0x10000, 0x14000))
    assert len(bt.frames) == 1 and not bt.complete
    assert any("outside the stack" in w for w in bt.warnings), bt


def test_a_pc_in_no_function_stops_with_a_warning(guest_image: Path) -> None:
    elf = ElfFile(guest_image)
    nap = elf.symbol("nap")
    assert nap is not None
    # nap's frame is sound but its return address points nowhere.
    memory = {0x9000: 0x9100, 0x9008: 0xdead0000}
    bt = unwind(elf, _fake(memory), {"rip": nap.address + 8, "rsp": 0x8ff0, "rbp": 0x9000})
    assert [f.pc for f in bt.frames] == [nap.address + 8, 0xdead0000]
    assert bt.frames[1].function is None and not bt.complete
    assert any("not inside any known function" in w for w in bt.warnings), bt


def test_failing_reads_give_warnings_not_exceptions(guest_image: Path) -> None:
    elf = ElfFile(guest_image)
    nap = elf.symbol("nap")
    assert nap is not None

    def broken(address: int, size: int) -> bytes:
        raise RuntimeError("gdbstub went away")

    bt = unwind(elf, broken, {"rip": nap.address + 8, "rsp": 0x8ff0, "rbp": 0x9000},
                stack=(0x8000, 0xa000))
    assert len(bt.frames) == 1 and not bt.complete
    assert any("at once" in w for w in bt.warnings)
    assert any("unreadable" in w and "gdbstub went away" in w for w in bt.warnings), bt


def test_an_endless_chain_stops_at_max_frames(guest_image: Path) -> None:
    elf = ElfFile(guest_image)
    pc = _pc_without_cfi(elf)
    memory = {}
    for i in range(1000):  # a well-formed but endless frame-pointer chain
        memory[0x100000 + 16 * i] = 0x100000 + 16 * (i + 1)
        memory[0x100008 + 16 * i] = pc
    bt = unwind(elf, _fake(memory), {"rip": pc, "rsp": 0xffff0, "rbp": 0x100000},
                max_frames=10)
    assert len(bt.frames) == 10 and not bt.complete
    assert any("max_frames" in w for w in bt.warnings)


def test_missing_registers_give_an_empty_backtrace(guest_image: Path) -> None:
    bt = unwind(ElfFile(guest_image), _fake({}), {"rbp": 0})
    assert bt.frames == [] and bt.warnings


def test_unwinding_the_bulk_stack_uses_one_read(guest_image: Path) -> None:
    elf = ElfFile(guest_image)
    nap = elf.symbol("nap")
    assert nap is not None
    memory = {0x8ff8 + 8 * i: 0 for i in range(0x201)}  # nap's caller: rbp 0, return 0
    calls: list[tuple[int, int]] = []
    inner = _fake(memory)

    def read(address: int, size: int) -> bytes:
        calls.append((address, size))
        return inner(address, size)

    bt = unwind(elf, read, {"rip": nap.address + 8, "rsp": 0x8ff8, "rbp": 0x9000},
                stack=(0x8000, 0xa000))
    assert calls == [(0x8ff8, 0xa000 - 0x8ff8)]
    assert bt.complete, bt



def _trap_hook(elf: ElfFile) -> TrapFrameHook:
    """The refguest's trap entry as its provider describes it: in isr_common, the struct
    irq_frame is at the frame's rsp (a hook over the ELF alone, for fake memory)."""
    layout = elf.struct("irq_frame")
    assert layout is not None
    names = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11",
             "r12", "r13", "r14", "r15", "rip", "rsp")

    def hook(function: str, pc: int, sp: int) -> TrapFrame | None:
        if function != "isr_common":
            return None
        return TrapFrame(sp, layout, {r: r for r in names}, "vector", "error")

    return hook


def _into_trap_entry(elf: ElfFile) -> tuple[dict[str, int], dict[int, int]]:
    """nap's frame (rbp 0x9000) returning into isr_common; its irq_frame would be at 0x9010."""
    nap, entry = elf.symbol("nap"), elf.symbol("isr_common")
    assert nap is not None and entry is not None
    memory = {0x9000: 0x9100, 0x9008: entry.address + entry.size // 2}
    return {"rip": nap.address + 8, "rsp": 0x8ff0, "rbp": 0x9000}, memory


def test_an_unreadable_trap_frame_stops_with_a_warning(nocfi_image: Path) -> None:
    elf = ElfFile(nocfi_image)
    registers, memory = _into_trap_entry(elf)
    bt = unwind(elf, _fake(memory), registers, trap_frames=_trap_hook(elf))
    assert [f.method for f in bt.frames] == ["registers", "exception"] and not bt.complete
    assert any("trap frame of isr_common at 0x9010 is unreadable" in w for w in bt.warnings)


def test_exception_frames_that_loop_are_stopped(nocfi_image: Path) -> None:
    elf = ElfFile(nocfi_image)
    registers, memory = _into_trap_entry(elf)
    layout = elf.struct("irq_frame")
    assert layout is not None
    for offset in range(0, layout.size, 8):
        memory[0x9010 + offset] = 0
    # The saved state is nap's frame again: a guest that lies about what it interrupted.
    for name in ("rip", "rsp", "rbp"):
        memory[0x9010 + layout.member(name).offset] = registers[name]
    memory[0x9010 + layout.member("vector").offset] = 14
    bt = unwind(elf, _fake(memory), registers, trap_frames=_trap_hook(elf), max_frames=50)
    assert len(bt.frames) < 10 and not bt.complete, bt
    assert bt.frames[1].trap is not None and bt.frames[1].trap.name == "#PF"
    assert any("loop" in w for w in bt.warnings), bt


def test_corrupt_call_frame_information_falls_back_to_frame_pointers(
        guest_image: Path, tmp_path: Path) -> None:
    """An ELF whose .eh_frame is garbage (and has no .debug_frame): a warning, and the
    frame-pointer chain, every time (nothing wrong is cached)."""
    corrupt = tmp_path / "corrupt-cfi.elf"
    section = ElfFile(guest_image).section(".eh_frame")
    assert section is not None and not ElfFile(guest_image).section(".debug_frame")
    data = bytearray(guest_image.read_bytes())
    data[section.file_offset : section.file_offset + section.size] = b"\xff" * section.size
    (tmp_path / "garbage.elf").write_bytes(bytes(data))
    # Without its build-id: a copy that kept it would share the real ELF's cache entry
    # (the build-id names the contents), whose CFI another test may have cached.
    subprocess.run(["objcopy", "--remove-section", ".note.gnu.build-id",
                    str(tmp_path / "garbage.elf"), str(corrupt)], check=True)
    nap = ElfFile(corrupt).symbol("nap")
    assert nap is not None
    memory = {0x9000: 0x9100, 0x9008: nap.address + 4}
    for _ in range(2):  # a fresh ElfFile the second time: the cache holds nothing wrong
        bt = unwind(ElfFile(corrupt), _fake(memory),
                    {"rip": nap.address + 8, "rsp": 0x8ff0, "rbp": 0x9000})
        assert any("cannot parse the call frame information" in w for w in bt.warnings), bt
        assert [f.method for f in bt.frames[:2]] == ["registers", "fp"], bt
