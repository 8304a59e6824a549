"""A live guest as a gdbserver :class:`~undebug.gdbserver.backend.Backend`: its supervisor.

Reads go through a :class:`~undebug.live_target.LiveTarget` opened at each stop (guest RAM
mapped from QEMU), so its caches and the thread view key on one run token; run control,
breakpoints and writes go to the supervisor, which owns them. The supervisor's typed
replies (undebug/session/replies.py) become the backend's dataclasses here and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from undebug.errors import SessionError, UndebugError, UsageError
from undebug.gdbserver.backend import (
    SIGABRT,
    SIGINT,
    SIGKILL,
    SIGSEGV,
    SIGTRAP,
    Event,
    GuestState,
    ServedBreakpoint,
    Stop,
)
from undebug.live_target import LiveTarget
from undebug.session.breakpoints import WATCHES, Breakpoint
from undebug.session.client import SupervisorClient
from undebug.session.outcome import Outcome
from undebug.session.replies import GuestStatus, MalformedReply
from undebug.session.replies import Stop as SupervisorStop
from undebug.session.store import SessionDir
from undebug.target import Target
from undebug.text import escape

__all__ = ["LiveBackend"]

log = logging.getLogger("undebug.gdbserver")


_STOP_KEYS = {"write": "watch", "read": "rwatch", "access": "awatch"}  # RSP stop replies


def _stop_from(stop: SupervisorStop) -> Stop:
    """A ``stopped`` event, a step, or a status's ``last_stop``."""
    watch = None
    if stop.watch is not None and stop.data_address is not None:
        watch = (_STOP_KEYS[stop.watch], stop.data_address)
    return Stop(stop.signal or SIGTRAP, stop.cpu, stop.breakpoint, watch=watch)


def _outcome_stop(outcome: Outcome | None, ended: bool, cpu: int | None = None) -> Stop:
    """A crash (the guest is still there, paused; ``cpu``: the vCPU the gdbstub reported)
    or the guest's end."""
    reason = escape(outcome.reason if outcome and outcome.reason else "no reason given")
    if ended:
        code = outcome.exit_code if outcome else None
        reply = b"X%02x" % SIGKILL if code is None and not (outcome and outcome.ok) else \
            b"W%02x" % ((code or 0) & 0xFF)
        return Stop(SIGKILL, message=f"the guest has ended: {reason}", exit_reply=reply)
    signal = SIGABRT if outcome and outcome.kind == "panic" else SIGSEGV
    return Stop(signal, cpu, message=f"the guest crashed: {reason}")


def _breakpoint(bp: Breakpoint) -> ServedBreakpoint:
    return ServedBreakpoint(bp.id, bp.address, bp.hardware, bp.watch, bp.length)


class LiveBackend:
    """One guest's supervisor: a subscribed control connection and a Target per stop.
    The breakpoints it inserts belong to this connection: the supervisor deletes them
    when it closes, however the server ends."""

    def __init__(self, session: SessionDir, elf: Path | None = None, *, force: bool = False) -> None:
        self.session = session
        self.elf = elf
        self.force = force
        self.client = SupervisorClient(session)
        self.client.subscribe()
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
        return self.client.target_xml()

    # ---- state and run control ----------------------------------------------------------

    def _status(self) -> GuestStatus:
        status = self.client.status()
        self._ended = self._ended or status.ended
        return status

    def state(self) -> GuestState:
        status = self._status()
        outcome, last = status.outcome, status.last_stop
        if status.ended or outcome:
            stop: Stop | None = _outcome_stop(outcome, status.ended, last.cpu if last else None)
        elif last:
            stop = _stop_from(last)
        else:  # paused by someone (undebug stop, an interrupt): on the vCPU QEMU named
            stop = Stop(SIGINT, status.paused_cpu) if status.paused_cpu is not None else None
        return GuestState(running=status.running, ended=status.ended,
                          crashed=outcome is not None and not status.ended,
                          user_paused=status.user_paused, stop=stop)

    def pause(self) -> None:
        self.client.pause()

    def resume(self) -> None:
        self.release()
        self.client.resume()

    def step(self, cpu: int) -> Stop:
        self.release()
        return _stop_from(self.client.step(cpu))

    def next_event(self, timeout: float) -> Event | None:
        """The next supervisor event within ``timeout`` seconds, or None. A supervisor that
        has gone is one last ``ended`` event."""
        if self._lost:
            return None
        while True:
            try:
                event = self.client.next_event(timeout)
            except MalformedReply as exc:  # the supervisor is there: not the guest's end
                self.warn_once(exc.message)
                timeout = 0.001
                continue
            except SessionError:
                self._lost = self._ended = True
                return Event("ended", time.time(), _outcome_stop(None, ended=True))
            if event is None:
                return None
            kind, when = event.type, event.time
            if kind == "stopped" and event.stop is not None:
                return Event("stopped", when, _stop_from(event.stop))
            if kind == "user_paused":  # undebug stop: in the thread on the vCPU QEMU named
                cpu = event.extra.get("cpu")
                return Event("stopped", when, Stop(SIGINT, cpu if isinstance(cpu, int) else None))
            if kind == "crashed":
                return Event("crashed", when, _outcome_stop(event.outcome, ended=False))
            if kind == "ended":
                self._ended = True
                return Event("ended", when, _outcome_stop(event.outcome, ended=True))
            timeout = 0.001  # running, paused, ...: nothing the server reports

    def drain_events(self) -> None:
        while self.next_event(0.001) is not None:
            pass

    # ---- breakpoints and writes ---------------------------------------------------------

    def insert_breakpoint(self, address: int, hardware: bool, location: str) -> ServedBreakpoint:
        return _breakpoint(self.client.insert_breakpoint(address, hardware, location, owner="gdb"))

    def insert_watchpoint(self, address: int, length: int, watch: str,
                          location: str) -> ServedBreakpoint:
        if watch not in WATCHES:
            raise UsageError(f"no watchpoint kind {watch!r}: one of {', '.join(WATCHES)}")
        return _breakpoint(self.client.insert_breakpoint(
            address, False, location, owner="gdb", watch=watch, length=length))

    def delete_breakpoint(self, bp_id: int) -> None:
        self.client.delete_breakpoint(bp_id)

    def breakpoints(self) -> list[ServedBreakpoint]:
        return [_breakpoint(bp) for bp in self._status().breakpoints]

    def write_registers(self, cpu: int, values: dict[str, int]) -> None:
        self.client.write_registers(cpu, values)
        self.release()

    def write_memory(self, address: int, data: bytes) -> None:
        self.client.write_memory(address, data)
        self.release()  # the run token moved: reopen for the next read
