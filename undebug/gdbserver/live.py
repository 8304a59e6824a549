"""A live guest as a gdbserver :class:`~undebug.gdbserver.backend.Backend`: its supervisor.

Reads go through a :class:`~undebug.target.LiveTarget` opened at each stop (guest RAM
mapped from QEMU), so its caches and the thread view key on one run token; run control,
breakpoints and writes go to the supervisor, which owns them. The supervisor's replies
(dicts, docs/protocol.md) become the backend's dataclasses here and nowhere else.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from undebug.errors import SessionError, UndebugError
from undebug.gdbserver.backend import (
    SIGABRT,
    SIGKILL,
    SIGSEGV,
    SIGTRAP,
    Event,
    GuestState,
    ServedBreakpoint,
    Stop,
)
from undebug.session.client import SupervisorClient
from undebug.session.store import SessionDir
from undebug.target import LiveTarget, Target
from undebug.text import escape

__all__ = ["LiveBackend"]

log = logging.getLogger("undebug.gdbserver")


def _stop_from_event(event: dict[str, Any]) -> Stop:
    """A ``stopped`` event, or a status's ``last_stop``."""
    return Stop(int(event.get("signal") or SIGTRAP), event.get("cpu"), event.get("breakpoint"))


def _outcome_stop(outcome: dict[str, Any] | None, ended: bool, cpu: int | None = None) -> Stop:
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


def _breakpoint(bp: dict[str, Any]) -> ServedBreakpoint:
    return ServedBreakpoint(int(bp["id"]), int(bp["address"]), bool(bp.get("hardware")))


class LiveBackend:
    """One guest's supervisor: a subscribed control connection and a Target per stop.
    The breakpoints it inserts belong to this connection: the supervisor deletes them
    when it closes, however the server ends."""

    def __init__(self, session: SessionDir, elf: Path | None = None, *, force: bool = False) -> None:
        self.session = session
        self.elf = elf
        self.force = force
        self.client = SupervisorClient(session)
        self.client.call("subscribe")
        self._ended = False
        self._lost = False  # the supervisor has gone (after its last event)
        self._target: LiveTarget | None = None
        self._warned: set[str] = set()

    @property
    def ended(self) -> bool:
        return self._ended

    def close(self) -> None:
        self.release()
        self.client.close()

    # ---- reading ------------------------------------------------------------------------

    def target(self) -> Target:
        if self._target is None:
            self._target = LiveTarget(self.session, self.elf, force=self.force)
            for warning in self._target.warnings:
                self.warn_once(warning)
        return self._target

    def release(self) -> None:
        if self._target is not None:
            target, self._target = self._target, None
            with contextlib.suppress(UndebugError):
                target.close()

    def warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s", message)

    def target_xml(self) -> dict[str, str]:
        files = self.client.call("target_xml")["files"]
        return {str(k): str(v) for k, v in files.items()}

    # ---- state and run control ----------------------------------------------------------

    def _status(self) -> dict[str, Any]:
        status = self.client.call("status")
        self._ended = self._ended or status.get("state") == "ended"
        return status

    def state(self) -> GuestState:
        status = self._status()
        ended = status.get("state") == "ended"
        outcome, last = status.get("outcome"), status.get("last_stop")
        if ended or outcome:
            stop: Stop | None = _outcome_stop(outcome, ended, (last or {}).get("cpu"))
        else:
            stop = _stop_from_event(last) if last else None
        return GuestState(running=status.get("state") == "running", ended=ended,
                          crashed=bool(outcome) and not ended,
                          user_paused=bool(status.get("user_paused")), stop=stop)

    def pause(self) -> None:
        self.client.call("pause")

    def resume(self) -> None:
        self.release()
        self.client.call("resume")

    def step(self, cpu: int) -> Stop:
        self.release()
        return _stop_from_event(self.client.call("step", cpu=cpu))

    def next_event(self, timeout: float) -> Event | None:
        """The next supervisor event within ``timeout`` seconds, or None. A supervisor that
        has gone is one last ``ended`` event."""
        if self._lost:
            return None
        while True:
            try:
                event = self.client.next_event(timeout)
            except SessionError:
                self._lost = self._ended = True
                return Event("ended", time.time(), _outcome_stop(None, ended=True))
            if event is None:
                return None
            kind, when = event.get("type"), float(event.get("time") or time.time())
            if kind == "stopped":
                return Event("stopped", when, _stop_from_event(event))
            if kind == "crashed":
                return Event("crashed", when, _outcome_stop(event.get("outcome"), ended=False))
            if kind == "ended":
                self._ended = True
                return Event("ended", when, _outcome_stop(event.get("outcome"), ended=True))
            timeout = 0.001  # running, paused, ...: nothing the server reports

    def drain_events(self) -> None:
        while self.next_event(0.001) is not None:
            pass

    # ---- breakpoints and writes ---------------------------------------------------------

    def insert_breakpoint(self, address: int, hardware: bool, location: str) -> ServedBreakpoint:
        return _breakpoint(self.client.call("break_insert", address=address, hardware=hardware,
                                            location=location, owner="gdb"))

    def delete_breakpoint(self, bp_id: int) -> None:
        self.client.call("break_delete", id=bp_id)

    def breakpoints(self) -> list[ServedBreakpoint]:
        return [_breakpoint(bp) for bp in self._status().get("breakpoints") or []]

    def write_registers(self, cpu: int, values: dict[str, int]) -> None:
        self.client.call("write_registers", cpu=cpu, registers=values)
        self.release()

    def write_memory(self, address: int, data: bytes) -> None:
        self.client.call("write_memory", address=address,
                         data=base64.b64encode(data).decode())
        self.release()  # the run token moved: reopen for the next read
