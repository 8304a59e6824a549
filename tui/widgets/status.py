"""The status bar: session, guest state, accelerator, uptime, which stop is shown (or
that the picture is live, or a snapshot; of a dump bundle: its path, time and reason),
the trace's rate and losses, and the last message for the user."""

from __future__ import annotations

import dataclasses

from rich.text import Text
from textual.widgets import Static

from tui.widgets.text import guest
from undebug.api import Dump, GuestStatus

_STATE_STYLE = {"running": "green", "paused": "yellow"}


def uptime(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StatusBar(Static):
    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; padding: 0 1; }
    """

    def __init__(self, name: str, read_only: bool, dump: Dump | None = None) -> None:
        super().__init__()
        self.session = name
        self.dump = dump  # a dump bundle: its path, time and reason in place of the state
        self.read_only = read_only
        self.status: GuestStatus | None = None
        self.live = False
        self.holding = False
        self.message: Text | None = None
        self.rate: tuple[float, int, int] | None = None  # events/s, records lost, bytes dropped
        self.rate_unit = "/s"

    def show(self, status: GuestStatus, live: bool, holding: bool = False) -> None:
        self.status, self.live, self.holding = status, live, holding
        self._paint()

    def trace(self, per_second: float, lost: int, dropped_bytes: int, unit: str = "/s") -> None:
        """The trace pane's rate (events/s, or KiB/s while it decodes nothing) and losses."""
        if (per_second, lost, dropped_bytes) != self.rate or unit != self.rate_unit:
            self.rate, self.rate_unit = (per_second, lost, dropped_bytes), unit
            self._paint()

    def gone(self, reason: str) -> None:
        """The guest's session was removed: say so for good, in place of its state."""
        if self.status is not None:
            self.status = dataclasses.replace(self.status, state="gone")
        self.live = False
        self.say(f"{reason} (the last view read stays on screen)", "red")

    def say(self, message: str, style: str = "yellow") -> None:
        """One line for the user (a refusal, an error), until the next one."""
        self.message = guest(message, style)
        self._paint()

    def _paint(self) -> None:
        text = guest(self.session, "bold")
        if self.dump is not None:
            text.append("  DUMP", style="reverse")
            text.append(f"  {self.dump.time_utc}  ")
            text.append_text(guest(self.dump.reason, "red"))
        elif self.status is not None:
            s = self.status
            text.append("  ")
            state = "running" if s.runs else s.state  # held for a read: it runs for the user
            text.append_text(guest(state, _STATE_STYLE.get(state, "red")))
            text.append(f"  {s.accel or '-'}  up {uptime(s.uptime_s)}")
            text.append("  LIVE" if self.live else "  SNAPSHOT" if self.holding
                        else f"  stop #{s.run_token}",
                        style="reverse" if self.live or self.holding else "")
        if self.rate is not None:
            per_second, lost, dropped = self.rate
            text.append(f"  trace {per_second:.0f}{self.rate_unit}")
            if lost or dropped:
                text.append(f" lost {lost}" + (f" +{dropped}B" if dropped else ""), style="red")
        if self.read_only:
            text.append("  read-only", style="cyan")
        if self.message is not None:
            text.append("  ")
            text.append_text(self.message)
        self.update(text)
