"""The Nanos provider on memory shaped like a Nanos guest's.

tests/data/nanos_mirror.c is built here with ``gcc -g``: its structs MIRROR Nanos'
``struct thread``, ``struct process``, ``struct rbtree``/``rbnode``, ``struct context``
and ``struct cpuinfo`` (same member names; they are mirrors, not Nanos). Run on the
host, it plants a process whose five threads sit in a tid-ordered rbtree, a cpuinfo (at
vCPU 0's gs_base) running one of them, and a fatal signal, and writes its memory to a
file: the guest image these tests read through a real :class:`~undebug.target.Target`.
The planted values (tids, names, rip = 0x401000 + tid) are the expected ones. A real
Nanos guest is tested in tests/test_nanos_image.py.
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
from undebug.os.nanos import KERNEL_IDS, NanosProvider

SOURCE = Path(__file__).parent / "data" / "nanos_mirror.c"
TIDS = {2: "<unnamed>", 3: "worker-0", 4: "worker-1", 5: "worker-2", 6: "a-name-of-16-ch"}


@dataclass
class Mirror:
    elf: ElfFile
    cpuinfo: int
    fatal: int
    base: int
    data: bytes

    def target(self, **registers: int) -> ImageTarget:
        return ImageTarget(self.elf, [(self.base, bytearray(self.data))],
                           {"rip": 0x401004, "rsp": 0x7f0400, "gs_base": self.cpuinfo,
                            **registers})


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Mirror:
    folder = tmp_path_factory.mktemp("nanosmirror")
    exe, image = folder / "mirror", folder / "image"
    subprocess.run(["gcc", "-g", "-O0", "-no-pie", "-o", str(exe), str(SOURCE)], check=True)
    subprocess.run([str(exe), str(image)], check=True, timeout=30)
    data = image.read_bytes()
    assert data[:8] == b"NNMIRROR"
    cpuinfo, fatal, base, size = struct.unpack_from("<4Q", data, 8)
    return Mirror(ElfFile(exe), cpuinfo, fatal, base, data[40 : 40 + size])


def test_the_mirror_is_detected_as_nanos(mirror: Mirror) -> None:
    assert isinstance(provider_for(mirror.target()), NanosProvider)


def test_threads_in_tid_order_by_name_state_and_cpu(mirror: Mirror) -> None:
    snapshot = NanosProvider(mirror.target()).threads()
    program = [t for t in snapshot.threads if t.id < KERNEL_IDS]
    assert [(t.id, t.name) for t in program] == list(TIDS.items())
    states = {t.id: (t.state, t.cpu, t.wait_reason) for t in program}
    assert states == {2: ("blocked", None, "in a system call"),
                      3: ("blocked", None, "in a system call"),
                      4: ("running", 0, None), 5: ("ready", None, None),
                      6: ("ready", None, None)}
    assert snapshot.vcpus == {0: 4}
    # a thread off the vCPU: its saved user frame (FRAME_RIP, FRAME_RSP, FRAME_RBX)
    worker2 = snapshot.find(5)
    assert (worker2.registers["rip"], worker2.registers["rsp"], worker2.registers["rbx"]) == \
        (0x401005, 0x7f0500, 0x5001)
    # the one on the vCPU: the vCPU's registers
    assert snapshot.find(4).registers["rip"] == 0x401004
    assert snapshot.warnings == []


def test_an_idle_vcpu_shows_its_kernel_context(mirror: Mirror) -> None:
    target = mirror.target()
    kernel_ctx = mirror.elf.symbol("kernel_ctx")
    assert kernel_ctx is not None
    cpu_layout = mirror.elf.struct("cpuinfo")
    assert cpu_layout is not None
    at = mirror.cpuinfo + cpu_layout.member("m.current_context").offset
    target.write_u64(at, kernel_ctx.address)
    snapshot = NanosProvider(target).threads()
    kernel = snapshot.find(KERNEL_IDS)
    assert (kernel.name, kernel.cpu, kernel.address) == ("kernel (vCPU 0)", 0, kernel_ctx.address)
    assert snapshot.find(4).state == "ready" and snapshot.vcpus == {0: KERNEL_IDS}


def test_a_tree_that_loops_is_cut_with_a_warning(mirror: Mirror) -> None:
    target = mirror.target()
    threads = mirror.elf.symbol("threads")
    layout = mirror.elf.struct("thread")
    assert threads is not None and layout is not None
    # threads[4] (tid 6, the rightmost) gets the root (threads[2]) as its right child
    node = threads.address + 4 * layout.size + layout.member("n").offset
    root = threads.address + 2 * layout.size + layout.member("n").offset
    target.write_u64(node + 16, root)
    snapshot = NanosProvider(target).threads()
    assert [t.id for t in snapshot.threads if t.id < KERNEL_IDS] == [2, 3, 4, 5, 6]
    assert any("loops back" in w for w in snapshot.warnings), snapshot.warnings


def test_a_fatal_signal_is_told_with_the_thread(mirror: Mirror) -> None:
    stop = mirror.elf.symbol("default_signal_action")
    threads, layout = mirror.elf.symbol("threads"), mirror.elf.struct("thread")
    assert stop is not None and threads is not None and layout is not None
    worker0 = threads.address + 1 * layout.size
    target = mirror.target(rip=stop.address, rdi=worker0, rsi=mirror.fatal)
    crash = NanosProvider(target).crash()
    assert crash is not None
    assert (crash.thread_id, crash.thread_name, crash.fault_address) == (3, "worker-0", 0x10)
    # the planted user rip (0x401003) is inside the mirror's own code (its _init): named
    assert crash.reason.startswith("SIGSEGV at address 0x10 in "), crash.reason
    assert crash.reason.endswith(", thread 3 'worker-0' (Nanos default_signal_action)")


def test_no_crash_away_from_the_signal_path(mirror: Mirror) -> None:
    assert NanosProvider(mirror.target()).crash() is None
