"""Live trace flushing: the guest batches its trace for long at rest and for short only
while someone follows the stream live.

Each batch the guest sends wakes the supervisor once (~150 µs of CPU on this host), so
batching long is what makes a supervisor nearly free at rest (bench/README.md, at_rest);
a live reader (``trace show --follow``, ``trace export --follow``, the TUI's trace pane)
wants an event within ~100 ms. A live reader asks for it with the ``trace_live`` op and
holds it for as long as its connection stays open (a lease): on the first lease the
supervisor tells the stub to flush every :data:`LIVE_MS`, after the last one it tells it
to go back to its own rest interval. The message goes host -> guest on the trace port
itself (tracers/FORMAT.md section 7.1); a stub that predates it ignores it and keeps its
compiled interval. Nothing here wakes by itself: the leases change only with clients'
requests and their connections' ends, which the event loop already sees.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from typing import Any

__all__ = ["LIVE_MS", "LiveTrace", "message"]

LIVE_MS = 20  # the guest's flush interval while followed: --follow sees events in ~40 ms
MAGIC = 0x4C544355  # "UCTL"
VERSION = 1
OP_LIVE = 1
OP_REST = 2
_MESSAGE = struct.Struct("<IBBHII")  # magic, version, op, reserved, value, reserved

log = logging.getLogger("undebug.supervisor")


def message(op: int, value: int) -> bytes:
    """One 16-byte host -> guest control message (FORMAT.md 7.1)."""
    return _MESSAGE.pack(MAGIC, VERSION, op, 0, value, 0)


class LiveTrace:
    """Counts the live readers' leases and tells the guest when the count leaves or
    reaches 0, through ``send`` (the trace recorder's socket: False if not sent)."""

    def __init__(self, send: Callable[[bytes], bool]) -> None:
        self._send = send
        self.leases = 0
        self.unsent = 0  # mode changes that could not be written to the trace port

    def acquire(self) -> None:
        self.leases += 1
        if self.leases == 1:
            self._tell(message(OP_LIVE, LIVE_MS))

    def release(self) -> None:
        if self.leases:
            self.leases -= 1
            if not self.leases:
                self._tell(message(OP_REST, 0))

    def _tell(self, data: bytes) -> None:
        if not self._send(data):
            self.unsent += 1
            log.warning("trace port: the flush mode change was not sent")

    def status(self) -> dict[str, Any]:
        """For the session record (``ps``): what the supervisor asked the guest for."""
        return {"mode": "live" if self.leases else "rest", "live_consumers": self.leases,
                "live_ms": LIVE_MS, "unsent": self.unsent}
