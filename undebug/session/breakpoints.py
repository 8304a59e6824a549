"""Breakpoints the supervisor owns, so they outlive every client (CLI calls, gdb proxies).

QEMU keeps gdbstub breakpoints itself (no guest memory is patched) and re-reports a
breakpoint at once if the vCPU resumes on it, so resuming steps over it first.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Breakpoint", "BreakpointTable"]


@dataclass(frozen=True)
class Breakpoint:
    id: int
    address: int
    hardware: bool
    location: str  # what the user asked for: "checksum_block", "main.c:42", "0x100150"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class BreakpointTable:
    def __init__(self) -> None:
        self._by_id: dict[int, Breakpoint] = {}
        self._next = 1

    def add(self, address: int, hardware: bool, location: str) -> Breakpoint:
        bp = Breakpoint(self._next, address, hardware, location)
        self._by_id[bp.id] = bp
        self._next += 1
        return bp

    def remove(self, bp_id: int) -> Breakpoint | None:
        return self._by_id.pop(bp_id, None)

    def at(self, address: int | None) -> Breakpoint | None:
        return next((bp for bp in self._by_id.values() if bp.address == address), None)

    def all(self) -> list[Breakpoint]:
        return sorted(self._by_id.values(), key=lambda bp: bp.id)
