"""The debugger's breakpoints and watchpoints (``Z``/``z``), kept by the backend.

Types 0 and 1 are software and hardware breakpoints, 2, 3 and 4 write, read and access
watchpoints (their length is the packet's third field). What the debugger inserts belongs
to its connection (:meth:`Stoppoints.remove_all` when it goes); one that someone else set
at the same place (``undebug break``, ``undebug watch``) is used and left in place.
"""

from __future__ import annotations

import contextlib

from undebug.errors import UndebugError, UsageError
from undebug.gdbserver.backend import Backend, Stop

__all__ = ["WATCH_KINDS", "Stoppoints"]

WATCH_KINDS = {2: "write", 3: "read", 4: "access"}  # Z2, Z3, Z4


class Stoppoints:
    """One debugger's ``Z`` points; UsageError when the backend refuses one."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.owned: dict[tuple[int, int], int] = {}  # (Z type, address) -> backend id
        self.adopted: set[tuple[int, int]] = set()  # someone else's point there
        self.hardware: dict[int, bool] = {}  # backend id -> a hardware breakpoint

    def handle(self, text: str) -> bytes:
        """The reply to ``Z``/``z`` (empty: a type the server does not have)."""
        kind_text, address_text, length_text = text[1:].partition(";")[0].split(",")
        kind, address = int(kind_text), int(address_text, 16)
        if kind not in (0, 1, *WATCH_KINDS):
            return b""
        key = (kind, address)
        if text[0] == "z":
            if key in self.owned:
                self.backend.delete_breakpoint(self.owned.pop(key))
            self.adopted.discard(key)
            return b"OK"
        if key in self.owned or key in self.adopted:
            return b"OK"
        location = self.backend.target().symbolize(address) or f"{address:#x}"
        watch = WATCH_KINDS.get(kind)
        try:
            bp = self.backend.insert_breakpoint(address, kind == 1, location) if watch is None \
                else self.backend.insert_watchpoint(address, int(length_text, 16), watch,
                                                    location)
        except UsageError:  # one there already (`undebug break`): use it, leave it
            there = [b for b in self.backend.breakpoints()
                     if b.address == address and b.watch == watch]
            if not there:
                raise
            self.adopted.add(key)
            self.hardware[there[0].id] = there[0].hardware
            return b"OK"
        self.owned[key] = bp.id
        self.hardware[bp.id] = bp.hardware
        return b"OK"

    def hardware_of(self, stop: Stop) -> bool | None:
        """Whether the breakpoint that stopped the guest is a hardware one (None: no
        breakpoint, or one since deleted)."""
        bp = stop.breakpoint
        if bp is None:
            return None
        if bp not in self.hardware:  # someone else's (undebug break)
            self.hardware.update((b.id, b.hardware) for b in self.backend.breakpoints())
        return self.hardware.get(bp)

    def remove_all(self) -> None:
        """The debugger has gone: delete what it inserted (the rest stays)."""
        for bp_id in self.owned.values():
            with contextlib.suppress(UndebugError):
                self.backend.delete_breakpoint(bp_id)
        self.owned.clear()
        self.adopted.clear()
