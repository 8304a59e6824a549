"""The Unikraft provider on memory shaped like a Unikraft 0.17 guest's.

tests/data/unikraft_mirror.c is built here with ``gcc -g``: its structs MIRROR 0.17's
``uk_thread``, ``uk_sched``, ``ukarch_ctx`` and ``__regs`` (same member names; they are
mirrors, not Unikraft). Run on the host, it plants two schedulers with named threads,
switches between them the way ``ukarch_ctx_switch`` does, takes a fake page fault in
``worker-1`` through a trap entry that builds a ``struct __regs`` (no CFI, as Unikraft's
may lack), and writes its memory and the handler's registers to a file: the guest image
these tests read through a real :class:`~undebug.target.Target`. What the program planted
is the expected value (the threads below; the rbp each thread switched out with; the
trap frame's rip, located with binutils' addr2line).
"""

from __future__ import annotations

import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.memory_targets import ImageTarget
from undebug.elf import ElfFile
from undebug.os import provider_for
from undebug.os.unikraft import UnikraftProvider
from undebug.unwind import unwind

SOURCE = Path(__file__).parent / "data" / "unikraft_mirror.c"
NAMES = ["init", "worker-0", "blocker", "fresh", "gone", "other-sched", "worker-1"]
STATES = {"init": "sleeping", "worker-0": "sleeping", "blocker": "blocked", "fresh": "ready",
          "worker-1": "running", "gone": "exited", "other-sched": "sleeping"}
# Walk order: scheduler 0's thread_list, its exited_threads, then scheduler 1's.
WALK_ORDER = ["init", "worker-0", "blocker", "fresh", "worker-1", "gone", "other-sched"]


@dataclass
class Mirror:
    exe: Path
    elf: ElfFile
    regions: list[tuple[int, bytes]]
    cpu: dict[str, int]  # the fault handler's rip, rsp, rbp: vCPU 0
    trap_rip: int  # what the fake #PF saved as the interrupted rip
    saved_rbp: dict[str, int]  # thread name -> rbp when it switched out

    def target(self) -> ImageTarget:
        return ImageTarget(self.elf, [(a, bytearray(d)) for a, d in self.regions],
                           {**self.cpu, "cr2": 0})


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Mirror:
    folder = tmp_path_factory.mktemp("ukmirror")
    exe, image = folder / "mirror", folder / "image"
    subprocess.run(["gcc", "-g", "-O0", "-fno-omit-frame-pointer", "-no-pie", "-o", str(exe),
                    str(SOURCE)], check=True)
    subprocess.run([str(exe), str(image)], check=True, timeout=30)
    data = image.read_bytes()
    assert data[:8] == b"UKMIRROR"
    rip, rsp, rbp, trap_rip = struct.unpack_from("<4Q", data, 8)
    saved = struct.unpack_from(f"<{len(NAMES)}Q", data, 40)
    at, regions = 40 + 8 * len(NAMES), []
    while at < len(data):
        address, size = struct.unpack_from("<2Q", data, at)
        regions.append((address, data[at + 16 : at + 16 + size]))
        at += 16 + size
    return Mirror(exe, ElfFile(exe), regions, {"rip": rip, "rsp": rsp, "rbp": rbp}, trap_rip,
                  dict(zip(NAMES, saved, strict=True)))


def test_the_mirror_is_detected_as_unikraft(mirror: Mirror) -> None:
    assert isinstance(provider_for(mirror.target()), UnikraftProvider)


def test_threads_of_both_schedulers_by_name_state_and_wait_reason(mirror: Mirror) -> None:
    snapshot = UnikraftProvider(mirror.target()).threads()
    assert [t.name for t in snapshot.threads] == WALK_ORDER
    assert {t.name: t.state for t in snapshot.threads} == STATES
    reasons = {t.name: t.wait_reason for t in snapshot.threads}
    assert reasons["worker-0"] == "sleeping until +12.3 ms"
    assert reasons["other-sched"] == "sleeping until +2000.0 ms"
    assert reasons["blocker"] == "blocked with no timeout"
    assert reasons["fresh"] == "not started yet"
    worker1 = next(t for t in snapshot.threads if t.name == "worker-1")
    assert snapshot.vcpus == {0: worker1.id} and worker1.cpu == 0
    assert worker1.registers["rip"] == mirror.cpu["rip"]
    stacks = mirror.elf.symbol("stacks")
    assert stacks is not None
    index = NAMES.index("worker-0")
    worker0 = next(t for t in snapshot.threads if t.name == "worker-0")
    assert worker0.stack == (stacks.address + index * 65536, stacks.address + (index + 1) * 65536)
    # init's saved context is on the host's own stack, outside the image: said, not raised.
    assert any("saved context" in w and "unreadable" in w for w in snapshot.warnings)


def test_a_switched_out_thread_resumes_where_the_switch_returns(mirror: Mirror) -> None:
    target = mirror.target()
    provider = UnikraftProvider(target)
    thread = next(t for t in provider.threads().threads if t.name == "worker-0")
    switch_to = mirror.elf.symbol("switch_to")
    assert switch_to is not None
    # Frame 0 is switch_to just after its call of ukarch_ctx_switch, with the rbp it had.
    assert switch_to.address <= thread.registers["rip"] < switch_to.address + switch_to.size
    assert thread.registers["rbp"] == mirror.saved_rbp["worker-0"]
    trace = unwind(target.elf, target.read, thread.registers, thread.stack,
                   trap_frames=provider.trap_frame)
    assert [f.function for f in trace.frames] == ["switch_to", "sleep_then", "worker_main"]
    assert trace.complete and not trace.warnings


def test_a_thread_that_never_ran_starts_at_its_entry(mirror: Mirror) -> None:
    target = mirror.target()
    provider = UnikraftProvider(target)
    fresh = next(t for t in provider.threads().threads if t.name == "fresh")
    entry = mirror.elf.symbol("worker_main")
    assert entry is not None and fresh.registers["rip"] == entry.address
    assert fresh.stack is not None and fresh.registers["rsp"] == fresh.stack[1] - 8
    trace = unwind(target.elf, target.read, fresh.registers, fresh.stack,
                   trap_frames=provider.trap_frame)
    assert [f.function for f in trace.frames] == ["worker_main"] and trace.complete


def test_the_faulting_thread_unwinds_through_the_regs_trap_frame(mirror: Mirror) -> None:
    target = mirror.target()
    provider = UnikraftProvider(target)
    thread = next(t for t in provider.threads().threads if t.name == "worker-1")
    trace = unwind(target.elf, target.read, thread.registers, thread.stack,
                   trap_frames=provider.trap_frame)
    names = [f.function for f in trace.frames]
    # The entry's own frame (asm_trap_page_fault) is shown as the exception it took.
    assert names == ["do_page_fault", None, "do_work", "worker_main"]
    marker = trace.frames[1]
    assert marker.method == "exception" and marker.trap is not None
    assert (marker.trap.vector, marker.trap.name, marker.trap.error_code, marker.trap.cr2) == \
        (14, "#PF", 2, 0)
    assert trace.frames[2].method == "trap-frame" and trace.frames[2].pc == mirror.trap_rip
    assert trace.complete, trace.warnings


def test_the_crash_is_described_in_words(mirror: Mirror) -> None:
    where = subprocess.run(["addr2line", "-e", str(mirror.exe), f"{mirror.trap_rip:#x}"],
                           capture_output=True, text=True, check=True).stdout.strip()
    file, line = where.rsplit(":", 1)
    assert Path(file).name == SOURCE.name
    crash = UnikraftProvider(mirror.target()).crash()
    assert crash is not None
    assert crash.reason == f"page fault writing 0x0 in do_work ({SOURCE.name}:{line}), " \
        "thread worker-1"
    assert (crash.function, crash.fault_address, crash.access, crash.vector, crash.thread_name) \
        == ("do_work", 0, "write", 14, "worker-1")
    assert "FAULT" in SOURCE.read_text().splitlines()[int(line) - 1]


def _thread_list_next(target: ImageTarget, thread_address: int) -> int:
    layout = target.elf.struct("uk_thread")
    assert layout is not None
    return thread_address + layout.member("thread_list.tqe_next").offset


def test_a_cyclic_thread_list_is_walked_once_with_a_warning(mirror: Mirror) -> None:
    target = mirror.target()
    threads = UnikraftProvider(target).threads().threads
    worker1 = next(t for t in threads if t.name == "worker-1")
    worker0 = next(t for t in threads if t.name == "worker-0")
    target.write_u64(_thread_list_next(target, worker1.address), worker0.address)
    snapshot = UnikraftProvider(target).threads()
    assert [t.name for t in snapshot.threads] == WALK_ORDER  # each thread once
    assert any("loops back" in w for w in snapshot.warnings), snapshot.warnings


def test_garbage_pointers_become_warnings(mirror: Mirror) -> None:
    target = mirror.target()
    threads = UnikraftProvider(target).threads().threads
    blocker = next(t for t in threads if t.name == "blocker")
    target.write_u64(_thread_list_next(target, blocker.address), 0xDEAD0000)
    layout = target.elf.struct("uk_thread")
    assert layout is not None
    target.write_u64(blocker.address + layout.member("name").offset, 0xBAD000)
    sched = target.elf.symbol("scheds")
    sched_layout = target.elf.struct("uk_sched")
    assert sched is not None and sched_layout is not None
    # scheduler 1's next points back at scheduler 0: a loop of schedulers
    target.write_u64(sched.address + sched_layout.size + sched_layout.member("next").offset,
                     sched.address)
    snapshot = UnikraftProvider(target).threads()
    names = [t.name for t in snapshot.threads]
    assert names == ["init", "worker-0", "<name at 0xbad000>", "gone", "other-sched"]
    assert any("broken at 0xdead0000" in w for w in snapshot.warnings)
    assert any("name unreadable" in w for w in snapshot.warnings)
    assert any("scheduler list loops" in w for w in snapshot.warnings)

