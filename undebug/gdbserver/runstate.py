"""Run control for the gdbserver proxy: why the guest stopped, as a :class:`Stop`.

The supervisor tells stops by events (``stopped``, ``crashed``, ``ended``) and by its status
(a pause by someone else, ``undebug stop``, sends no ``stopped`` event). While the guest
runs, the proxy also watches the debugger's connection for its interrupt byte (0x03).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from undebug.gdbserver.backend import LiveBackend
from undebug.gdbserver.wire import GdbConnection
from undebug.text import escape

__all__ = ["SIGINT", "SIGTRAP", "Stop", "stop_from_event", "stop_from_status", "wait_for_stop"]

SIGINT, SIGTRAP, SIGABRT, SIGKILL, SIGSEGV = 2, 5, 6, 9, 11  # gdb's signal numbers
STATUS_EVERY = 1.0  # seconds between status checks while the guest runs


@dataclass(frozen=True)
class Stop:
    """A stop to report: ``signal`` on the guest thread of vCPU ``cpu``, or the end."""

    signal: int
    cpu: int | None = None
    breakpoint: int | None = None  # the supervisor's breakpoint id
    message: str | None = None  # for the debugger's console (escaped)
    exit_reply: bytes | None = None  # W/X: the guest has ended


def stop_from_event(event: dict[str, Any]) -> Stop:
    """A ``stopped`` event, or a status's ``last_stop``."""
    return Stop(int(event.get("signal") or SIGTRAP), event.get("cpu"), event.get("breakpoint"))


def outcome_stop(outcome: dict[str, Any] | None, ended: bool, cpu: int | None = None) -> Stop:
    """A crash (the guest is still there, paused; ``cpu``: the vCPU the gdbstub reported)
    or the guest's end."""
    outcome = outcome or {}
    reason = escape(str(outcome.get("reason") or "no reason given"))
    if ended:
        code = outcome.get("exit_code")
        reply = b"X%02x" % SIGKILL if code is None and not outcome.get("ok") else \
            b"W%02x" % ((code or 0) & 0xFF)
        return Stop(SIGKILL, message=f"the guest has ended: {reason}", exit_reply=reply)
    signal = SIGABRT if outcome.get("kind") == "panic" else SIGSEGV
    return Stop(signal, cpu, message=f"the guest crashed: {reason}")


def stop_from_status(status: dict[str, Any]) -> Stop | None:
    """Why a guest that is not running stopped, from the supervisor's status."""
    stop = status.get("last_stop")
    if status.get("state") == "ended" or status.get("outcome"):
        return outcome_stop(status.get("outcome"), ended=status.get("state") == "ended",
                            cpu=(stop or {}).get("cpu"))
    return stop_from_event(stop) if stop else None


def wait_for_stop(backend: LiveBackend, conn: GdbConnection, since: float) -> Stop:
    """Block until the resumed guest stops; gdb's interrupt pauses it. ``since``: when it
    was resumed (older ``stopped`` events are stale)."""
    check_at = time.monotonic() + STATUS_EVERY
    while True:
        if backend.ended:
            return outcome_stop(None, ended=True)
        if conn.take_interrupt(0.02):
            backend.pause()
            return stop_from_status(backend.status()) or Stop(SIGINT)
        event = backend.next_event(0.02)
        kind = event.get("type") if event else None
        if event is not None and kind == "stopped" and event.get("time", since) >= since:
            return stop_from_event(event)
        if event is not None and kind == "crashed":
            time.sleep(0.1)  # QEMU's stop reply for the pause follows the crash event
            return stop_from_status(backend.status()) or outcome_stop(event.get("outcome"), False)
        if event is not None and kind == "ended":
            return outcome_stop(event.get("outcome"), ended=True)
        if time.monotonic() >= check_at:  # paused by someone else (undebug stop)?
            check_at = time.monotonic() + STATUS_EVERY
            status = backend.status()
            if status.get("state") == "ended":
                return outcome_stop(status.get("outcome"), ended=True)
            if status.get("state") != "running" and status.get("user_paused"):
                return stop_from_status(status) or Stop(SIGINT)
