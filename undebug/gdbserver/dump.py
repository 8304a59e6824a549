"""A dump bundle as a gdbserver :class:`~undebug.gdbserver.backend.Backend`: reads only.

``undebug gdbserver BUNDLE`` serves a dump to stock gdb (or any RSP front end) the way it
serves a live guest, guest threads and all: memory and registers from the bundle's
``core.elf`` through :class:`~undebug.coretarget.CoreTarget`, the register layout QEMU
gave at the dump. The guest is stopped forever where it was dumped: run control,
breakpoints and writes are refused (gdb says so and stays there).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from undebug.coretarget import TARGET_XML_FILE, CoreTarget, open_bundle
from undebug.errors import SessionError, UsageError
from undebug.gdbserver.backend import SIGABRT, SIGSEGV, SIGTRAP, Event, GuestState, ServedBreakpoint, Stop
from undebug.target import Target
from undebug.text import escape

__all__ = ["DumpBackend"]

log = logging.getLogger("undebug.gdbserver")
MAX_XML = 4 << 20
REFUSED = "this is a dump bundle: it cannot run, step, take breakpoints or be written"


class DumpBackend:
    """One bundle, opened once (a dump is one stop: nothing goes stale)."""

    def __init__(self, bundle: Path, elf: Path | None = None, *, force: bool = False) -> None:
        self._target: CoreTarget = open_bundle(bundle, elf, force=force)
        self._warned: set[str] = set()
        for warning in self._target.warnings + self._target.problems:
            self.warn_once(warning)
        self._xml = self._load_xml(bundle / TARGET_XML_FILE)
        summary = self._target.bundle.summary if self._target.bundle else {}
        crash = summary.get("crash") if isinstance(summary.get("crash"), dict) else None
        reason = summary.get("reason")
        text = escape(str(reason.get("text", "dumped") if isinstance(reason, dict) else "dumped"))
        if crash is not None:
            cpu = crash.get("cpu") if isinstance(crash.get("cpu"), int) else None
            signal = SIGABRT if crash.get("vector") is None else SIGSEGV
            self._stop = Stop(signal, cpu, message=f"{REFUSED} (dumped after a crash: {text})")
        else:
            self._stop = Stop(SIGTRAP, 0, message=f"{REFUSED} ({text})")

    def _load_xml(self, path: Path) -> dict[str, str]:
        try:
            if path.stat().st_size > MAX_XML:
                raise ValueError("too large")
            files = json.loads(path.read_text())
        except FileNotFoundError:
            self._target.close()
            raise UsageError(f"{path.parent} has no register layout ({path.name})",
                             hint="it was dumped by an older undebug, or not from a live "
                             "guest: inspect it with threads/bt/regs/mem instead") from None
        except (OSError, ValueError) as exc:
            self._target.close()
            raise UsageError(f"{path} is unreadable: {escape(str(exc))}") from None
        if not isinstance(files, dict) or "target.xml" not in files or \
                not all(isinstance(v, str) for v in files.values()):
            self._target.close()
            raise UsageError(f"{path} is not a register layout (no target.xml)")
        return {str(k): v for k, v in files.items()}

    @property
    def ended(self) -> bool:
        return False

    def close(self) -> None:
        self._target.close()

    def target(self) -> Target:
        return self._target

    def release(self) -> None:
        """Nothing to let go of between stops: there is one."""

    def warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s", message)

    def target_xml(self) -> dict[str, str]:
        return self._xml

    def state(self) -> GuestState:
        return GuestState(running=False, ended=False, crashed=True, user_paused=True,
                          stop=self._stop)

    def pause(self) -> None:
        """Stopped already."""

    def resume(self) -> None:
        raise SessionError(REFUSED)

    def step(self, cpu: int) -> Stop:
        raise SessionError(REFUSED)

    def next_event(self, timeout: float) -> Event | None:
        time.sleep(min(timeout, 0.05))  # nothing ever happens in a dump
        return None

    def drain_events(self) -> None:
        pass

    def insert_breakpoint(self, address: int, hardware: bool, location: str) -> ServedBreakpoint:
        raise SessionError(REFUSED)

    def insert_watchpoint(self, address: int, length: int, watch: str,
                          location: str) -> ServedBreakpoint:
        raise SessionError(REFUSED)

    def delete_breakpoint(self, bp_id: int) -> None:
        raise SessionError(REFUSED)

    def breakpoints(self) -> list[ServedBreakpoint]:
        return []

    def write_registers(self, cpu: int, values: dict[str, int]) -> None:
        raise SessionError(REFUSED)

    def write_memory(self, address: int, data: bytes) -> None:
        raise SessionError(REFUSED)
