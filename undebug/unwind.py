"""An in-process x86-64 stack unwinder: DWARF CFI first, frame pointers as the fallback.

gdb unwinds one thread per ``bt`` and needs its registers swapped in and out, milliseconds
per guest thread over the gdbstub; a debugger that shows all threads of a 1000-thread
unikernel at every stop cannot afford that. Here the FDE index is built once per
:class:`~undebug.elf.ElfFile` (pyelftools, then bisect), each FDE's rows are decoded the
first time a pc needs them and kept as small tuples, and a thread's stack is read in one
bulk access: after warm-up a frame costs a few dict lookups and bisects.

Guest memory is hostile input. Every walk is bounded by ``max_frames``, stops when the
CFA fails to grow (a loop), leaves the stack, or the pc is in no function, and turns a
failed read into a warning: :func:`unwind` never raises for bad guest data.
"""

from __future__ import annotations

import bisect
import struct
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from undebug.cfi import EXPRESSION, OFFSET, REGISTER, UNDEFINED, VAL_OFFSET, CfiRow, Fde, load_fdes
from undebug.elf import ElfFile
from undebug.trapframe import (
    PAGE_FAULT,
    Trap,
    TrapFrame,
    TrapFrameHook,
    exception_name,
    read_trap_frame,
)

__all__ = ["Backtrace", "Frame", "Trap", "TrapFrame", "TrapFrameHook", "unwind"]

MAX_STACK_READ = 1 << 20
MASK = (1 << 64) - 1
REGISTERS = ("rax", "rdx", "rcx", "rbx", "rsi", "rdi", "rbp", "rsp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip")  # DWARF numbering
RBP, RSP, RA = 6, 7, 16

@dataclass(frozen=True)
class Frame:
    index: int
    pc: int
    cfa: int | None  # canonical frame address: the caller's rsp; None if unknown
    function: str | None
    offset: int | None  # pc - function start
    file: str | None
    line: int | None
    method: str  # how it was found: "registers" (frame 0), "cfi", "fp", "trap-frame";
    # "exception" for the frame between a handler and the code it interrupted
    trap: Trap | None = None  # that frame's vector, error code, cr2


@dataclass
class Backtrace:
    frames: list[Frame]
    warnings: list[str] = field(default_factory=list)
    complete: bool = False  # reached a natural end, not a limit or bad data


class _Tables:
    """Everything one ElfFile needs for unwinding: FDEs by address, symbolised pcs."""

    def __init__(self, elf: ElfFile) -> None:
        self.elf = elf
        self.fdes: list[Fde] = []
        self.starts: list[int] = []
        self.errors: list[str] = []
        self.places: dict[int, tuple[str | None, int | None, str | None, int | None]] = {}
        try:
            self.fdes = load_fdes(elf)
        except ValueError as exc:  # corrupt CFI: fall back to frame pointers, say so
            self.errors.append(f"cannot parse the call frame information of {elf.path}: "
                               f"{exc}; using frame pointers only")
        self.starts = [f.start for f in self.fdes]

    def find(self, pc: int) -> Fde | None:
        at = bisect.bisect_right(self.starts, pc) - 1
        if at >= 0 and pc < self.fdes[at].end:
            return self.fdes[at]
        return None

    @staticmethod
    def row(fde: Fde, pc: int) -> CfiRow:
        if fde.error is not None:
            raise ValueError(fde.error)
        return fde.rows[max(0, bisect.bisect_right(fde.pcs, pc) - 1)]

    def place(self, lookup: int, pc: int) -> tuple[str | None, int | None, str | None, int | None]:
        key = lookup if lookup == pc else -lookup - 1  # frame 0 and callers may share a pc
        found = self.places.get(key)
        if found is None:
            sym = self.elf.function_at(lookup)
            where = self.elf.line_at(lookup)
            found = (sym.name if sym else None, pc - sym.address if sym else None,
                     where[0] if where else None, where[1] if where else None)
            self.places[key] = found
        return found


_TABLES: weakref.WeakKeyDictionary[ElfFile, _Tables] = weakref.WeakKeyDictionary()


def _tables(elf: ElfFile) -> _Tables:
    tables = _TABLES.get(elf)
    if tables is None:
        tables = _TABLES[elf] = _Tables(elf)
    return tables


class _ReadFailed(Exception):
    pass


class _Memory:
    """8-byte loads, served from bulk reads of the stacks whose bounds are known."""

    def __init__(self, read: Callable[[int, int], bytes], warnings: list[str]) -> None:
        self.read, self.warnings = read, warnings
        self.regions: list[tuple[int, bytes]] = []

    def load(self, low: int, high: int) -> None:
        """Read [low, high) in one access (at most MAX_STACK_READ), unless it is held."""
        if any(base <= low and low + 8 <= base + len(data) for base, data in self.regions):
            return
        size = min(high - low, MAX_STACK_READ)
        try:
            self.regions.append((low, bytes(self.read(low, size))))
        except Exception as exc:
            self.warnings.append(f"cannot read the stack [{low:#x}, {low + size:#x}) at once "
                                 f"({exc}); reading word by word")

    def u64(self, address: int) -> int:
        for base, data in self.regions:
            at = address - base
            if at >= 0 and at + 8 <= len(data):
                return int(struct.unpack_from("<Q", data, at)[0])
        try:
            raw = self.read(address, 8)
        except Exception as exc:  # any reader, any failure: the caller makes it a warning
            raise _ReadFailed(f"cannot read {address:#x}: {exc}") from None
        if len(raw) != 8:
            raise _ReadFailed(f"short read at {address:#x} ({len(raw)} bytes)")
        return int.from_bytes(raw, "little")


class _Stop(Exception):
    """Ends the walk: ``complete`` says whether it was the natural end of the stack."""

    def __init__(self, warning: str | None = None, complete: bool = False) -> None:
        super().__init__(warning)
        self.warning, self.complete = warning, complete


def _step_cfi(fde: Fde, lookup: int, regs: list[int | None], memory: _Memory,
              name: str) -> tuple[int, list[int | None]]:
    """The CFA of this frame and the caller's registers, by the FDE row for ``lookup``."""
    try:
        row = _Tables.row(fde, lookup)
    except (ValueError, IndexError) as exc:  # corrupt CFI instructions, or no rows
        raise _Stop(f"the CFI of {name} cannot be decoded: {exc}") from None
    if row.cfa is None:
        raise _Stop(f"the CFA of {name} is a DWARF expression, which this unwinder "
                    "does not evaluate")
    base = regs[row.cfa[0]] if 0 <= row.cfa[0] < len(regs) else None
    if base is None:
        raise _Stop(f"the CFA of {name} needs a register that is not known here")
    cfa = (base + row.cfa[1]) & MASK
    caller: list[int | None] = list(regs)  # registers without a rule keep their value
    caller[RSP] = cfa
    ra_rule = False
    for reg, kind, arg in row.rules:
        if not 0 <= reg < len(caller):
            continue
        if reg == RA:
            ra_rule = True
            if kind == UNDEFINED:
                raise _Stop(complete=True)  # CFI marks the outermost frame
            if kind == EXPRESSION:
                raise _Stop(f"the return address of {name} is a DWARF expression, which "
                            "this unwinder does not evaluate")
        if kind == OFFSET:
            try:
                caller[reg] = memory.u64((cfa + arg) & MASK)
            except _ReadFailed as exc:
                if reg == RA:
                    raise _Stop(f"return address of {name} unreadable: {exc}") from None
                caller[reg] = None
        elif kind == VAL_OFFSET:
            caller[reg] = (cfa + arg) & MASK
        elif kind == REGISTER:
            caller[reg] = regs[arg] if 0 <= arg < len(regs) else None
        elif kind in (UNDEFINED, EXPRESSION):
            caller[reg] = None
    if not ra_rule:
        raise _Stop(f"the CFI of {name} has no rule for the return address")
    return cfa, caller


def _step_fp(regs: list[int | None], memory: _Memory, name: str) -> tuple[int, list[int | None]]:
    """[rbp] is the caller's rbp, [rbp+8] the return address; other registers are lost."""
    rbp = regs[RBP]
    if rbp is None:
        raise _Stop(f"no CFI for {name} and its frame pointer is unknown")
    if rbp == 0:
        raise _Stop(complete=True)  # the outermost frame clears rbp by convention
    try:
        caller_rbp, ra = memory.u64(rbp), memory.u64((rbp + 8) & MASK)
    except _ReadFailed as exc:
        raise _Stop(f"frame pointer chain of {name} unreadable: {exc}") from None
    caller: list[int | None] = [None] * len(regs)
    caller[RBP], caller[RSP], caller[RA] = caller_rbp, (rbp + 16) & MASK, ra
    return (rbp + 16) & MASK, caller


class _Stacks:
    """Which stack the walk is on, and its bounds. On the thread's own stack every CFA must
    stay inside it; frame 0 of a thread on its vCPU may be on another one (an interrupt or
    exception stack: the #PF of a stack overflow runs on its own), bounded there by
    MAX_STACK_READ above where the walk came onto it, until an exception frame (or a CFA)
    leads back. A walk that never gets back says so at its end."""

    def __init__(self, memory: _Memory, stack: tuple[int, int] | None) -> None:
        self.memory, self.stack = memory, stack
        self.bounds: tuple[int, int] | None = None
        self.last_cfa: int | None = None
        self.outside: str | None = None  # the warning a walk that never gets back ends with
        self.traps: set[int] = set()  # CFAs of the exception frames passed

    def enter(self, sp: int, first: bool = False) -> None:
        """The walk is at ``sp`` now: frame 0, or the code an exception frame interrupted."""
        self.last_cfa = None
        if self.stack is None:
            self.bounds = None
        elif self.stack[0] <= sp <= self.stack[1]:
            self._home(sp)
        else:
            self.bounds = (sp, sp + MAX_STACK_READ)
            if first:
                self.outside = (f"rsp {sp:#x} is outside the stack [{self.stack[0]:#x}, "
                                f"{self.stack[1]:#x}) and no exception frame leads back to it")

    def _home(self, sp: int) -> None:
        assert self.stack is not None
        self.bounds, self.outside = self.stack, None
        self.memory.load(sp, self.stack[1])

    def trapped(self, cfa: int, label: str) -> None:
        """An exception frame switches stacks, so its CFA need not grow; it must be new."""
        if cfa in self.traps:
            raise _Stop(f"the exception frame at {cfa:#x} ({label}) was seen before: "
                        "exception frames that loop (a corrupt stack)")
        self.traps.add(cfa)

    def check(self, cfa: int, label: str) -> None:
        """A frame's CFA grows within one stack and stays inside its bounds."""
        if self.last_cfa is not None and cfa <= self.last_cfa:
            raise _Stop(f"CFA {cfa:#x} of {label} does not grow (previous {self.last_cfa:#x}): "
                        "a loop or a corrupt stack")
        stack = self.stack
        if stack is not None and self.bounds != stack and stack[0] < cfa <= stack[1]:
            self._home(cfa)  # e.g. a fault in the guard page: its CFA is on the stack
        elif self.bounds is not None and not self.bounds[0] < cfa <= self.bounds[1]:
            low, high = self.bounds
            raise _Stop(f"the stack pointer of {label}'s caller ({cfa:#x}) leaves the "
                        f"stack [{low:#x}, {high:#x})")
        self.last_cfa = cfa


_UNKNOWN = Trap(None, None, None, None)


def _trap(frame: TrapFrame | None, read: Callable[[int, int], bytes], cr2: int | None,
          label: str) -> tuple[Trap, dict[str, int]]:
    """The exception frame's details (and the OS's saved registers) from its block."""
    if frame is None:
        return _UNKNOWN, {}
    try:
        saved, vector, error = read_trap_frame(frame, read)
    except Exception as exc:  # a failed read, a member the DWARF lacks: stop with a warning
        raise _Stop(f"the trap frame of {label} at {frame.address:#x} is unreadable: "
                    f"{exc}") from None
    return Trap(vector, None if vector is None else exception_name(vector), error,
                cr2 if vector == PAGE_FAULT else None), saved


def _step(fde: Fde | None, block: TrapFrame | None, lookup: int, regs: list[int | None],
          stacks: _Stacks, read: Callable[[int, int], bytes], cr2: int | None,
          label: str) -> tuple[int, list[int | None], str, Trap | None]:
    """One frame: its CFA, the caller's registers, how they were found, and what an
    exception frame says (None for any other frame)."""
    if fde is not None and fde.signal:  # the entry's CFI steps, the OS says which trap
        cfa, caller = _step_cfi(fde, lookup, regs, stacks.memory, label)
        return cfa, caller, "cfi", _trap(block, read, cr2, label)[0]
    if block is not None:  # no CFI: the registers come from the OS's saved block
        trap, saved = _trap(block, read, cr2, label)
        caller = [saved.get(name) for name in REGISTERS]
        if caller[RA] is None or caller[RSP] is None:
            raise _Stop(f"the trap frame of {label} has no rip or rsp")
        return block.address + block.layout.size, caller, "trap-frame", trap
    if fde is not None:
        cfa, caller = _step_cfi(fde, lookup, regs, stacks.memory, label)
        return cfa, caller, "cfi", None
    cfa, caller = _step_fp(regs, stacks.memory, label)
    return cfa, caller, "fp", None


def _module(modules: list[tuple[_Tables, int]], lookup: int) -> tuple[_Tables, int]:
    """The ELF (its tables) and load offset whose code holds runtime ``lookup``: the
    first one's (the kernel's) unless a program's text or CFI has it."""
    for tables, offset in modules:
        at = (lookup - offset) & MASK
        if tables.elf.in_text(at) or tables.find(at) is not None:
            return tables, offset
    return modules[0]


def unwind(elf: ElfFile, read: Callable[[int, int], bytes], registers: Mapping[str, int],
           stack: tuple[int, int] | None = None, max_frames: int = 64,
           trap_frames: TrapFrameHook | None = None,
           resumes_after_call: bool = False, load_offset: int = 0,
           programs: Sequence[tuple[ElfFile, int]] = ()) -> Backtrace:
    """Walk the stack of one thread from its registers (gdb's x86-64 names).

    ``read(address, size)`` reads guest virtual memory and raises on failure; ``stack`` is
    the thread's [low, high) if known: then [rsp, high) is read once and bounds every frame.
    Exception frames are stepped through by their signal-frame CFI or, where the trap entry
    has none, by ``trap_frames``, the OS's hook (:mod:`undebug.trapframe`); the hook also
    gives the vector and error code. ``registers["cr2"]``, if there, is the newest #PF's.
    ``resumes_after_call``: the pc is a return address (a switched-out thread's saved
    context), so its line is looked up at the call, as for every caller frame.
    ``load_offset``: where ``elf`` runs from its link address (a KASLR slide);
    ``programs``: more ELFs (a kernel's user programs) with theirs, so one walk crosses
    from a program into the kernel above its system call. Frames keep runtime pcs.
    """
    modules = [(_tables(elf), load_offset), *((_tables(e), o) for e, o in programs)]
    result = Backtrace([], [e for t, _ in modules for e in t.errors])
    regs: list[int | None] = [registers.get(name) for name in REGISTERS]
    pc, sp = regs[RA], regs[RSP]
    if pc is None or sp is None:
        result.warnings.append("rip or rsp missing from the registers: nothing to unwind")
        return result
    stacks = _Stacks(_Memory(read, result.warnings), stack)
    stacks.enter(sp, first=True)
    cr2 = registers.get("cr2")
    exact, method = not resumes_after_call, "registers"
    for index in range(max_frames):
        lookup = pc if exact else pc - 1  # a return address points after its call
        tables, slide = _module(modules, lookup)
        lookup = (lookup - slide) & MASK
        function, offset, file, line = tables.place(lookup, (pc - slide) & MASK)
        fde = tables.find(lookup)
        label = function or f"{pc:#x}"
        block, frame_sp = None, regs[RSP]
        if trap_frames is not None and function is not None and not exact and \
                frame_sp is not None:
            block = trap_frames(function, pc, frame_sp)
        trap = _UNKNOWN if block is not None or (fde is not None and fde.signal) else None
        cfa: int | None = None
        stop: _Stop | None = None
        try:
            if function is None and fde is None and not tables.elf.in_text(lookup):
                raise _Stop(f"pc {pc:#x} is not inside any known function: stopped there")
            cfa, caller, next_method, trap = _step(fde, block, lookup, regs, stacks, read, cr2,
                                                   label)
            if trap is not None:
                cr2 = None  # an outer #PF's address is gone from the CPU
                stacks.trapped(cfa, label)
            stacks.check(cfa, label)
        except _Stop as stopped:
            stop = stopped
        result.frames.append(
            Frame(index, pc, cfa, function, offset, file, line, method) if trap is None else
            Frame(index, pc, cfa, None, None, None, None, "exception", trap))
        if stop is not None:
            if stop.warning:
                result.warnings.append(stop.warning)
            result.complete = stop.complete
            break
        next_pc, caller_sp = caller[RA], caller[RSP]
        if next_pc is None or next_pc == 0:
            result.complete = next_pc == 0
            if next_pc is None:
                result.warnings.append(f"the return address of {label} is not known")
            break
        if trap is not None and caller_sp is not None:
            stacks.enter(caller_sp)
        pc, regs, method = next_pc, caller, next_method
        exact = trap is not None or (fde is not None and fde.signal)
    else:
        result.warnings.append(f"stopped after {max_frames} frames (max_frames)")
    if stacks.outside:
        result.warnings.append(stacks.outside)
    return result
