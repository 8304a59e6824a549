"""Exception and interrupt frames: what the unwinder shows between a handler and the code
it interrupted, and the hook through which an OS says where its trap entry saved registers.

A trap entry whose assembly has CFI with ``.cfi_signal_frame`` is unwound from the CFI
alone (stock gdb does the same); but CFI cannot say which vector fired or what error code
the CPU pushed, and many OSes' trap assembly has no CFI at all (Unikraft's pushes a
``struct __regs`` and calls a C handler). For both, an OS provider implements a
:data:`TrapFrameHook`: given a frame whose pc is inside one of its named trap handlers, it
answers with a :class:`TrapFrame`, the address and DWARF type of the saved register block,
members picked by name. :mod:`undebug.unwind` takes the hook as a parameter and never
imports an OS module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from undebug.elf import StructLayout

__all__ = ["EXCEPTION_NAMES", "PAGE_FAULT", "Trap", "TrapFrame", "TrapFrameHook",
           "exception_name", "read_trap_frame"]

# Intel SDM vol. 3A, table 6-1 (vectors 0-31); 9 and 15 are reserved, as are 22-27 and 31.
EXCEPTION_NAMES = ("#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "#CSO",
                   "#TS", "#NP", "#SS", "#GP", "#PF", "#RES15", "#MF", "#AC", "#MC", "#XM",
                   "#VE", "#CP", "#RES22", "#RES23", "#RES24", "#RES25", "#RES26", "#RES27",
                   "#HV", "#VC", "#SX", "#RES31")
PAGE_FAULT = 14  # the one vector whose faulting address is in cr2


def exception_name(vector: int) -> str:
    """``#PF`` for an exception, ``interrupt 0x30`` for an external or software interrupt."""
    return EXCEPTION_NAMES[vector] if 0 <= vector < len(EXCEPTION_NAMES) else \
        f"interrupt {vector:#x}"


@dataclass(frozen=True)
class TrapFrame:
    """Where an OS's trap entry saved the interrupted registers: a block of DWARF type
    ``layout`` at ``address``. ``registers`` maps gdb's register names (rip, rsp, rax, ...)
    to member paths of ``layout``; ``vector`` and ``error_code`` name the members holding
    them, None where the OS does not save them. ``vector_number`` is the vector of an
    entry that is one per vector and does not save it (Unikraft's ``asm_trap_page_fault``
    is 14 by its name)."""

    address: int
    layout: StructLayout
    registers: Mapping[str, str]
    vector: str | None = None
    error_code: str | None = None
    vector_number: int | None = None


# (function name, pc, that frame's rsp) -> the block, or None for any other function.
# Asked only for a pc that is a return address (the handler called something), where its
# block is complete: an interrupted handler's frame 0 may not have saved it yet.
TrapFrameHook = Callable[[str, int, int], "TrapFrame | None"]


@dataclass(frozen=True)
class Trap:
    """What the frame between a handler and the interrupted code says. ``cr2`` is a CPU
    register, not saved by the entry: known for the newest #PF of a thread on a vCPU."""

    vector: int | None
    name: str | None
    error_code: int | None
    cr2: int | None


def read_trap_frame(frame: TrapFrame, read: Callable[[int, int], bytes]) \
        -> tuple[dict[str, int], int | None, int | None]:
    """The saved registers, the vector and the error code, in one read of the block
    (raises what ``read`` raises)."""
    data = read(frame.address, frame.layout.size)

    def member(path: str) -> int:
        found = frame.layout.member(path)
        return int.from_bytes(data[found.offset : found.offset + found.size], "little")

    registers = {name: member(path) for name, path in frame.registers.items()}
    return (registers, frame.vector_number if frame.vector is None else member(frame.vector),
            None if frame.error_code is None else member(frame.error_code))
