"""Breakpoints the supervisor owns. A ``cli`` breakpoint (``undebug break``) outlives every
client; a ``gdb`` one belongs to the connection that inserted it (a gdbserver serving a
debugger) and goes when that connection closes, however its client ended. A ``crash`` one
marks where the guest's OS enters its crash path (set by ``run`` from the OS provider,
which knows the OS; the supervisor does not): the guest stops there as crashed, before
the OS writes an exit device that would end QEMU, when ``when_register`` (if set) holds
``when_value``; else it runs on.

QEMU keeps gdbstub breakpoints itself (no guest memory is patched) and re-reports a
breakpoint at once if the vCPU resumes on it, so resuming steps over it first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

__all__ = ["OWNERS", "Breakpoint", "BreakpointTable", "Owner"]

Owner = Literal["cli", "gdb", "crash"]
OWNERS: tuple[Owner, ...] = ("cli", "gdb", "crash")


@dataclass(frozen=True)
class Breakpoint:
    id: int
    address: int
    hardware: bool
    location: str  # what the user asked for: "checksum_block", "main.c:42", "0x100150"
    owner: Owner = "cli"
    when_register: str | None = None  # a crash breakpoint's condition, e.g. ("rdi", 3)
    when_value: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class BreakpointTable:
    def __init__(self) -> None:
        self._by_id: dict[int, Breakpoint] = {}
        self._next = 1

    def add(self, address: int, hardware: bool, location: str, owner: Owner = "cli",
            when: tuple[str, int] | None = None) -> Breakpoint:
        bp = Breakpoint(self._next, address, hardware, location, owner,
                        *(when if when is not None else (None, None)))
        self._by_id[bp.id] = bp
        self._next += 1
        return bp

    def remove(self, bp_id: int) -> Breakpoint | None:
        return self._by_id.pop(bp_id, None)

    def at(self, address: int | None) -> Breakpoint | None:
        return next((bp for bp in self._by_id.values() if bp.address == address), None)

    def all(self) -> list[Breakpoint]:
        return sorted(self._by_id.values(), key=lambda bp: bp.id)
