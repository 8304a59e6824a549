"""Breakpoints the supervisor owns. A ``cli`` breakpoint (``undebug break``) outlives every
client; a ``gdb`` one belongs to the connection that inserted it (a gdbserver serving a
debugger) and goes when that connection closes, however its client ended. A ``crash`` one
marks where the guest's OS enters its crash path (set by ``run`` from the OS provider,
which knows the OS; the supervisor does not): the guest stops there as crashed, before
the OS writes an exit device that would end QEMU, when ``when_register`` (if set) holds
``when_value``; else it runs on.

QEMU keeps gdbstub breakpoints itself (no guest memory is patched) and re-reports a
breakpoint at once if the vCPU resumes on it, so resuming steps over it first.

A watchpoint (``watch`` set: a write, read or access of ``length`` bytes at ``address``)
lives in the same table, with the same ids and owners: ``undebug delete`` and a
debugger's disconnect remove it as they remove a breakpoint. QEMU's gdbstub keeps it too
(``Z2``/``Z3``/``Z4``; under TCG any length) and stops after the access, naming the
watched address in its stop reply.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["OWNERS", "WATCHES", "Breakpoint", "BreakpointTable", "Owner", "Watch"]

Owner = Literal["cli", "gdb", "crash"]
OWNERS: tuple[Owner, ...] = ("cli", "gdb", "crash")
Watch = Literal["write", "read", "access"]
WATCHES: tuple[Watch, ...] = ("write", "read", "access")
MAX_WATCH = 4096  # bytes one watchpoint covers (TCG checks every access to its pages)


@dataclass(frozen=True)
class Breakpoint:
    id: int
    address: int
    hardware: bool
    location: str  # what the user asked for: "checksum_block", "main.c:42", "0x100150"
    owner: Owner = "cli"
    when_register: str | None = None  # a crash breakpoint's condition, e.g. ("rdi", 3)
    when_value: int | None = None
    watch: Watch | None = None  # a watchpoint: what access stops the guest
    length: int = 1  # the bytes a watchpoint covers
    # a condition on memory: the u32 at when_register + when_offset is when_value or
    # one of when_values (Nanos: the signal number its crash path gets by pointer)
    when_offset: int | None = None
    when_values: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """A breakpoint's JSON has no watchpoint fields (as before watchpoints were)."""
        data = asdict(self)
        if self.watch is None:
            del data["watch"], data["length"]
        if self.when_offset is None:
            del data["when_offset"], data["when_values"]
        else:
            data["when_values"] = list(self.when_values)
        return data


class BreakpointTable:
    def __init__(self) -> None:
        self._by_id: dict[int, Breakpoint] = {}
        self._next = 1

    def add(self, address: int, hardware: bool, location: str, owner: Owner = "cli",
            when: tuple[str, int] | None = None, watch: Watch | None = None,
            length: int = 1, when_memory: tuple[int, tuple[int, ...]] | None = None) \
            -> Breakpoint:
        register, value = when if when is not None else (None, None)
        offset, values = when_memory if when is not None and when_memory else (None, ())
        bp = Breakpoint(self._next, address, hardware, location, owner, register, value, watch,
                        length, offset, values)
        self._by_id[bp.id] = bp
        self._next += 1
        return bp

    def remove(self, bp_id: int) -> Breakpoint | None:
        return self._by_id.pop(bp_id, None)

    def at(self, address: int | None) -> Breakpoint | None:
        """The breakpoint (not a watchpoint) at ``address``."""
        return next((bp for bp in self._by_id.values()
                     if bp.address == address and bp.watch is None), None)

    def watching(self, address: int, watch: Watch | None = None) -> Breakpoint | None:
        """The watchpoint (of kind ``watch``, if given) whose bytes hold ``address``."""
        return next((bp for bp in self._by_id.values() if bp.watch is not None
                     and (watch is None or bp.watch == watch)
                     and bp.address <= address < bp.address + bp.length), None)

    def all(self) -> list[Breakpoint]:
        return sorted(self._by_id.values(), key=lambda bp: bp.id)
