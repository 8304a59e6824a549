"""What every OS-awareness module provides: the guest's own threads, from its memory.

A provider (pyOCD's ``rtos/`` is the model) declares the symbols it needs, detects its OS
from the ELF, and walks the thread structures into :class:`GuestThread` dataclasses,
marking which thread each vCPU runs. Guest memory is untrusted: walks are bounded and
cycle-safe, and anything odd becomes a warning in the snapshot, never an exception.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from undebug.elf import ElfFile, StructLayout
from undebug.errors import UsageError
from undebug.target import ReadError, Target
from undebug.trapframe import TrapFrame

if TYPE_CHECKING:
    from undebug.os.crash import Crash
    from undebug.os.heap import HeapReport
    from undebug.vm.image import BootImage

__all__ = ["BootDefaults", "CrashStop", "GuestThread", "MemoryArea", "StructValue",
           "ThreadProvider", "ThreadSnapshot", "read_struct", "walk_list"]

MAX_THREADS = 100_000  # no real unikernel has more; a larger count is a corrupt guest
PROGRAM_KIND = "program"  # a MemoryArea of a program the OS pages in on demand


@dataclass(frozen=True)
class GuestThread:
    """One guest thread as the debugger sees it. ``name`` is raw guest text: escape it."""

    id: int
    name: str
    state: str  # running, ready, sleeping, blocked, exited, or unknown(N)
    cpu: int | None  # the vCPU running it now
    registers: dict[str, int]  # frame 0: the vCPU's registers, or the saved context
    stack: tuple[int, int] | None  # [low, high)
    wait_reason: str | None = None
    address: int = 0  # of the OS's thread structure
    last_cpu: int | None = None
    # frame 0's rip is a return address: a switched-out thread resumes after the call
    # that switched it (its line is the call's, not the next statement's)
    resumes_after_call: bool = False


@dataclass
class ThreadSnapshot:
    threads: list[GuestThread]
    vcpus: dict[int, int | None]  # vCPU index -> id of the guest thread it runs
    warnings: list[str] = field(default_factory=list)
    _by_id: dict[int, GuestThread] | None = field(default=None, init=False, repr=False,
                                                  compare=False)

    @classmethod
    def running_on(cls, threads: list[GuestThread], cpu_count: int,
                   warnings: list[str]) -> ThreadSnapshot:
        """The snapshot of ``threads``, each vCPU mapped to the thread that says it runs it."""
        vcpus: dict[int, int | None] = dict.fromkeys(range(cpu_count))
        for thread in threads:
            if thread.cpu is not None:
                vcpus[thread.cpu] = thread.id
        return cls(threads, vcpus, warnings)

    def find(self, thread_id: int) -> GuestThread:
        """The first thread with this id (a corrupt guest may repeat one); a dict, not a
        scan: a backtrace of each of 10,000 threads looks each one up."""
        if self._by_id is None:
            self._by_id = {t.id: t for t in reversed(self.threads)}
        found = self._by_id.get(thread_id)
        if found is not None:
            return found
        raise UsageError(f"no guest thread with id {thread_id}",
                         hint="list them with: undebug threads TARGET")


@dataclass(frozen=True)
class MemoryArea:
    """Guest-virtual ``[start, end)`` that the OS knows the purpose of (its heap, a guard
    page, an exception stack): a memory map names the pages it covers. ``name`` is raw
    guest text when it holds a thread's name: escape it."""

    start: int
    end: int
    kind: str  # heap, stack, guard (must stay unmapped), or what the OS calls it
    name: str
    thread: int | None = None  # the id of the guest thread whose stack or guard it is


@dataclass(frozen=True)
class CrashStop:
    """Where an OS enters its crash path: ``symbol``, when ``register`` holds ``value``
    at its entry (None: always). ``run`` sets a crash breakpoint there, so the guest is
    stopped and kept before the OS can end QEMU (Unikraft writes isa-debug-exit first)."""

    symbol: str
    label: str  # how the verdict names it: "ukplat_terminate(UKPLAT_CRASH)"
    register: str | None = None
    value: int | None = None
    # with ``offset``: the condition is on the u32 at ``register`` + ``offset`` (an
    # argument passed by pointer), and holds when it is ``value`` or one of ``values``
    offset: int | None = None
    values: tuple[int, ...] = ()


@dataclass(frozen=True)
class BootDefaults:
    """How QEMU must boot an OS's disk image (``run DISK`` without ``--machine``)."""

    machine: str
    disk_if: str
    devices: tuple[str, ...] = ()


class StructValue:
    """One C struct read in a single memory access, members picked by DWARF name."""

    def __init__(self, layout: StructLayout, address: int, data: bytes) -> None:
        self.layout = layout
        self.address = address
        self.data = data

    def int(self, path: str, signed: bool = False) -> int:
        member = self.layout.member(path)
        raw = self.data[member.offset : member.offset + member.size]
        return int.from_bytes(raw, "little", signed=signed)

    def bytes(self, path: str) -> bytes:
        member = self.layout.member(path)
        return self.data[member.offset : member.offset + member.size]


def read_struct(target: Target, layout: StructLayout, address: int) -> StructValue:
    return StructValue(layout, address, target.read(address, layout.size))


def walk_list(target: Target, layout: StructLayout, head: int, next_member: str, what: str,
              warnings: list[str], *, limit: int = MAX_THREADS,
              seen: set[int] | None = None) -> Iterator[StructValue]:
    """Each struct of a guest linked list from ``head`` along ``next_member``. Guest memory
    is hostile: a loop (an address in ``seen``, shared across lists), more than ``limit``
    entries or an unreadable entry ends the walk with a warning naming ``what``."""
    seen = set() if seen is None else seen
    address, count = head, 0
    while address:
        if address in seen:
            warnings.append(f"{what} loops back to {address:#x} after {count} entries: "
                            "stopped there")
            return
        if count >= limit:
            warnings.append(f"{what} longer than {limit}: stopped there")
            return
        seen.add(address)
        try:
            value = read_struct(target, layout, address)
        except ReadError as exc:
            warnings.append(f"{what} broken at {address:#x}: {exc.message}")
            return
        yield value
        count += 1
        address = value.int(next_member)


def read_c_string(target: Target, address: int, limit: int = 256) -> tuple[str, bool]:
    """A NUL-terminated string of at most ``limit`` bytes; (text, was it terminated)."""
    try:
        raw = target.read(address, limit)
    except ReadError:
        # The string may end just before an unmapped page: read up to the page end.
        raw = target.read(address, 4096 - (address & 4095)) if limit > 0 else b""
    end = raw.find(b"\0")
    text = raw if end < 0 else raw[:end]
    return text.decode("utf-8", "backslashreplace"), end >= 0


class ThreadProvider(ABC):
    """Guest threads of one OS. Subclasses set ``name`` and ``required_symbols`` and
    implement :meth:`walk`; snapshots are cached per run token."""

    name: ClassVar[str]
    required_symbols: ClassVar[tuple[str, ...]]
    # the kernel runs slid from its ELF's link addresses (KASLR): what reads only the ELF
    # (``undebug sym``) says its addresses are link addresses
    relocates: ClassVar[bool] = False

    def __init__(self, target: Target) -> None:
        self.target = target
        self._cache: tuple[int, ThreadSnapshot] | None = None

    @classmethod
    def detect(cls, elf: ElfFile) -> bool:
        return all(elf.symbol(name) is not None for name in cls.required_symbols)

    @classmethod
    def crash_stops(cls, elf: ElfFile) -> list[CrashStop]:
        """Where this OS's crash path starts, for ``run`` to stop it there."""
        return []

    @classmethod
    def booted(cls, target: Target) -> bool:
        """Whether the kernel runs where ``target`` says (for one its firmware loads from a
        disk and that may move itself): only then are its symbols' addresses right."""
        return True

    @classmethod
    def boot_defaults(cls, image: BootImage) -> BootDefaults | None:
        """The machine this OS's disk ``image`` needs, if the image is this OS's."""
        return None

    @classmethod
    def exit_verdict(cls, code: int) -> tuple[bool, str] | None:
        """What exit code ``code`` (isa-debug-exit) means for this OS: (ok, reason), or
        None for the default (0 is a clean exit, anything else a failure)."""
        return None

    def threads(self) -> ThreadSnapshot:
        token = self.target.run_token
        if self._cache is None or self._cache[0] != token:
            self._cache = (token, self.walk())
        return self._cache[1]

    @abstractmethod
    def walk(self) -> ThreadSnapshot:
        """Read every thread from guest memory now."""

    def trap_frame(self, function: str, pc: int, sp: int) -> TrapFrame | None:
        """Where this OS's trap handler ``function`` saved the registers it interrupted,
        when the unwinder is in that handler at ``pc`` with ``sp`` (a
        :data:`~undebug.trapframe.TrapFrameHook`); None: not a trap handler it knows."""
        return None

    def crash(self) -> Crash | None:
        """Why this paused guest crashed, from its vCPUs' stacks and the OS's own records
        (:mod:`undebug.os.crash`); None where this OS cannot tell, or nothing shows a
        crash. Call it for a guest known to have crashed (pvpanic, a triple fault)."""
        return None

    def memory_areas(self) -> list[MemoryArea]:
        """What this OS knows of its address space beyond the ELF's sections and its
        threads' stacks (:mod:`undebug.os.memmap` has those): heap, guard pages, per-CPU
        stacks. Bounded and cycle-safe like a thread walk; problems go into
        ``self.target.warnings``."""
        return []

    def heaps(self) -> list[HeapReport]:
        """Each allocator of this OS as it is now (:mod:`undebug.os.heap`); [] when
        undebug does not know the OS's allocator."""
        return []

    def socket_fds(self) -> dict[int, int]:
        """lwIP pcb address -> fd, from the OS's own fd table (an OS on lwIP without its
        sockets API, as Nanos); {} where undebug knows none. Problems go into
        ``self.target.warnings``."""
        return {}

    def place_programs(self) -> None:
        """Find where the guest put each position-independent program that ``--debug-elf``
        gave no ``@ADDR`` (``target.unplaced``), and its libraries: an OS that knows its
        processes' mappings overrides this; here each one gets a warning instead."""
        for elf in self.target.unplaced:
            self.target.warnings.append(f"{elf.path.name} is position-independent: without "
                                        "@ADDR its symbols are shown at its link addresses")
        self.target.unplaced = []

    @abstractmethod
    def check(self) -> None:
        """Raise :class:`UsageError` naming what the ELF lacks for this provider beyond
        its symbols (struct layouts from DWARF, say)."""

    def need_struct(self, name: str) -> StructLayout:
        layout = self.target.elf.struct(name)
        if layout is None:
            raise UsageError(f"{self.target.elf.path} has no DWARF layout of struct {name}",
                             hint="build the guest with -g (full DWARF), or pass its debug ELF")
        return layout

    def need_symbol(self, name: str) -> int:
        address = self.target.address_of(name)
        if address is None:
            raise UsageError(f"{self.target.elf.path} has no symbol {name!r} ({self.name})")
        return address
