"""Run control for the gdbserver: waiting for the resumed guest to stop, and why it did.

The backend tells stops by events (stopped, crashed, ended; the live backend turns the
supervisor's ``user_paused``, i.e. ``undebug stop``, into a stop on the vCPU QEMU named)
and by its state, checked every second too (a pause a backend has no event for). While
the guest runs, the server also watches the debugger's connection for its interrupt byte
(0x03).
"""

from __future__ import annotations

import time

from undebug.gdbserver.backend import SIGINT, SIGKILL, Backend, Stop
from undebug.gdbserver.wire import GdbConnection

__all__ = ["wait_for_stop"]

STATE_EVERY = 1.0  # seconds between state checks while the guest runs
CRASH_SETTLE = 0.1  # after a crash event, the stop reply for its pause follows


def wait_for_stop(backend: Backend, conn: GdbConnection, since: float) -> Stop:
    """Block until the resumed guest stops; gdb's interrupt pauses it. ``since``: when it
    was resumed (older stops are stale)."""
    check_at = time.monotonic() + STATE_EVERY
    while True:
        if backend.ended:  # and its last event has been taken
            return Stop(SIGKILL, message="the guest has ended", exit_reply=b"X%02x" % SIGKILL)
        if conn.take_interrupt(0.02):
            backend.pause()
            return backend.state().stop or Stop(SIGINT)
        event = backend.next_event(0.02)
        if event is not None and event.kind == "stopped" and event.time >= since:
            return event.stop
        if event is not None and event.kind == "crashed":
            time.sleep(CRASH_SETTLE)
            return backend.state().stop or event.stop
        if event is not None and event.kind == "ended":
            return event.stop
        if time.monotonic() >= check_at:  # paused by someone else (undebug stop)?
            check_at = time.monotonic() + STATE_EVERY
            state = backend.state()
            if state.ended or (not state.running and state.user_paused):
                return state.stop or Stop(SIGINT)
