"""What the gdbserver proxy serves: a live guest, through its supervisor.

Reads go through a :class:`~undebug.target.Target` (guest RAM mapped from QEMU, page
tables walked here) opened at each stop, so its caches and the thread snapshot key on one
run token; run control, breakpoints and writes go to the supervisor, which owns them. A
dump bundle would be a second backend with the same reads and no run control.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from pathlib import Path
from typing import Any

from undebug.errors import SessionError, UndebugError
from undebug.session.client import SupervisorClient
from undebug.session.store import SessionDir
from undebug.target import LiveTarget, Target

__all__ = ["LiveBackend"]

log = logging.getLogger("undebug.gdbserver")


class LiveBackend:
    """One guest's supervisor: a subscribed control connection and a Target per stop."""

    def __init__(self, session: SessionDir, elf: Path | None = None, *, force: bool = False) -> None:
        self.session = session
        self.elf = elf
        self.force = force
        self.client = SupervisorClient(session)
        self.client.call("subscribe")
        self.ended = False
        self._lost = False  # the supervisor has gone (after its last event)
        self._target: LiveTarget | None = None
        self._warned: set[str] = set()

    def close(self) -> None:
        self.release()
        self.client.close()

    # ---- reading ------------------------------------------------------------------------

    def target(self) -> Target:
        """The guest for reads, held still until :meth:`release` (one run token)."""
        if self._target is None:
            self._target = LiveTarget(self.session, self.elf, force=self.force)
            for warning in self._target.warnings:
                self.warn_once(warning)
        return self._target

    def release(self) -> None:
        """Let go of the Target before the guest runs (its caches would be stale)."""
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

    def status(self) -> dict[str, Any]:
        status = self.client.call("status")
        self.ended = self.ended or status.get("state") == "ended"
        return status

    def pause(self) -> None:
        self.client.call("pause")

    def resume(self) -> None:
        self.release()
        self.client.call("resume")

    def step(self, cpu: int) -> dict[str, Any]:
        self.release()
        return self.client.call("step", cpu=cpu)

    def next_event(self, timeout: float) -> dict[str, Any] | None:
        """The next supervisor event within ``timeout`` seconds, or None. A supervisor that
        has gone is one last ``ended`` event."""
        if self._lost:
            return None
        try:
            event = self.client.next_event(timeout)
        except SessionError:
            self._lost = self.ended = True
            return {"type": "ended", "outcome": None}
        if event is not None and event.get("type") == "ended":
            self.ended = True
        return event

    def drain_events(self) -> None:
        """Drop what has happened so far; an ``ended`` event is remembered in ``ended``."""
        while self.next_event(0.001) is not None:
            pass

    # ---- breakpoints and writes ---------------------------------------------------------

    def insert_breakpoint(self, address: int, hardware: bool, location: str) -> dict[str, Any]:
        return self.client.call("break_insert", address=address, hardware=hardware,
                                location=location)

    def delete_breakpoint(self, bp_id: int) -> None:
        self.client.call("break_delete", id=bp_id)

    def breakpoints(self) -> list[dict[str, Any]]:
        return list(self.status().get("breakpoints") or [])

    def write_registers(self, cpu: int, values: dict[str, int]) -> None:
        self.client.call("write_registers", cpu=cpu, registers=values)
        self.release()

    def write_memory(self, address: int, data: bytes) -> None:
        self.client.call("write_memory", address=address,
                         data=base64.b64encode(data).decode())
        self.release()  # the run token moved: reopen for the next read
