"""The trace pane: the guest's trace events as they arrive (tui/trace_follow.py), filtered
by a regular expression, paused and resumed with space; above them each tracepoint's rate
as a sparkline of the last minute, and what was lost. It follows the recording whether or
not its tab is shown, so the status bar's rate and drops are always current."""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Static
from textual.worker import get_current_worker

from tui.trace_follow import TraceBatch, TraceFollower
from tui.widgets.pane import Focus, Pane, TextPane
from tui.widgets.text import guest
from undebug.errors import UndebugError

PERIOD = 1.0  # s between reads of the recording
HISTORY = 60  # rate samples kept per tracepoint (one per period)
KEPT = 20_000  # event lines kept (the filter searches them all)
SHOWN = 500  # of them, the newest that match the filter, shown
RATES_SHOWN = 6  # tracepoints with a sparkline (the busiest)
BARS = " ▁▂▃▄▅▆▇█"


def sparkline(samples: list[float], width: int) -> str:
    """``samples`` (the newest last) as block characters scaled to their maximum."""
    samples = samples[-width:]
    top = max(samples, default=0) or 1
    return "".join(BARS[round(s / top * (len(BARS) - 1))] for s in samples).rjust(width)


class TracePane(Pane, Vertical):
    pane_id = "trace"
    pane_title = "trace"
    background = True
    DEFAULT_CSS = """
    TracePane #trace-filter { height: 3; }
    TracePane #trace-rates { height: auto; max-height: 7; }
    TracePane #trace-events { height: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("space", "pause", "pause trace", id="trace.pause")]

    @dataclass
    class Rate(Message):
        """For the status bar: events/s over the last period (or bytes/s, while the pane
        is hidden and nothing is decoded), and the losses so far."""

        per_second: float
        lost: int
        dropped_bytes: int
        unit: str = "/s"

    @dataclass
    class Read(Message):
        batch: TraceBatch
        seconds: float

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.lines: deque[str] = deque(maxlen=KEPT)
        self.rates: dict[str, deque[float]] = {}
        self.lost = 0
        self.dropped_bytes = 0
        self.paused = False
        self.pattern: re.Pattern[str] | None = None
        self.guest: str | None = None
        self.problem: str | None = None
        self.follower: TraceFollower | None = None
        self.watched = False  # the pane is on screen: events are decoded (read by the worker)

    def compose(self) -> ComposeResult:
        yield Input(placeholder="filter events: a regular expression (space in the list "
                    "pauses)", id="trace-filter")
        yield Static(id="trace-rates")
        yield TextPane(id="trace-events")

    @property
    def events(self) -> TextPane:
        return self.query_one("#trace-events", TextPane)

    def show_focus(self, focus: Focus) -> None:
        super().show_focus(focus)
        if self.follower is not None:  # read by its thread at its next poll
            self.follower.known_names = {k: v.encode('utf-8', 'surrogateescape')
                                         for k, v in focus.names.items()}
        if self.guest is None:
            self.guest = focus.guest
            self.follow(focus.guest)

    @work(exclusive=True, thread=True, group="trace")
    def follow(self, name: str) -> None:
        """Reads the recording every period until the pane goes (one thread owns it)."""
        worker = get_current_worker()
        try:
            follower = TraceFollower(name)
            follower.start()
            self.follower = follower
        except UndebugError as exc:
            self.app.call_from_thread(self._no_trace, exc.message)
            return
        try:
            last = time.monotonic()
            decoding = True
            while not worker.is_cancelled:
                if self.watched and not decoding:
                    follower.resume()
                decoding = self.watched
                follower.hold_live(decoding)
                batch = follower.poll() if decoding else follower.skim()
                now = time.monotonic()
                self.post_message(self.Read(batch, max(now - last, 1e-3)))
                last = now
                if batch.caught_up:
                    time.sleep(PERIOD)
        finally:
            follower.close()

    def _no_trace(self, why: str) -> None:
        self.problem = why
        self.events.show_lines([guest(why, "yellow")])

    @on(Read)
    def _read(self, message: Read) -> None:
        self.watched = self.is_on_screen
        batch = message.batch
        if not batch.counts and batch.skimmed:  # hidden: bytes, not events
            self.dropped_bytes = batch.dropped_bytes
            self.post_message(self.Rate(batch.skimmed / 1024 / message.seconds, self.lost,
                                        self.dropped_bytes, " KiB/s"))
            return
        self.lines.extend(batch.lines)
        self.lost += batch.lost
        self.dropped_bytes = batch.dropped_bytes
        for name in set(self.rates) | set(batch.counts):
            samples = self.rates.setdefault(name, deque([0.0] * HISTORY, maxlen=HISTORY))
            samples.append(batch.counts.get(name, 0) / message.seconds)
        self._paint_rates()
        if batch.lines and not self.paused:
            self._paint_events()
        self.post_message(self.Rate(sum(batch.counts.values()) / message.seconds, self.lost,
                                    self.dropped_bytes))

    def _paint_rates(self) -> None:
        busiest = sorted(self.rates, key=lambda n: (-sum(self.rates[n]), n))[:RATES_SHOWN]
        width = max([len(n) for n in busiest] + [8])
        text = Text()
        for name in busiest:
            samples = list(self.rates[name])
            text.append(f"{name:<{width}} ", style="bold")
            text.append(sparkline(samples, 30), style="green")
            text.append(f" {samples[-1]:>9.1f}/s\n")
        text.append(f"lost {self.lost} record(s) (the guest's count)", style="red" if self.lost
                    else "dim")
        text.append(f", {self.dropped_bytes} byte(s) rotated out of the recording" if
                    self.dropped_bytes else "", style="red")
        self.query_one("#trace-rates", Static).update(text)
        state = " PAUSED" if self.paused else ""
        self.border_title = f"trace{state}"

    def _paint_events(self) -> None:
        pattern = self.pattern
        shown = [line for line in self.lines if pattern is None or pattern.search(line)]
        self.events.show_lines([Text(line) for line in shown[-SHOWN:]])
        self.events.scroll_end(animate=False)

    def action_pause(self) -> None:
        self.paused = not self.paused
        self._paint_rates()
        if not self.paused:
            self._paint_events()

    @on(Input.Changed, "#trace-filter")
    def _filter(self, event: Input.Changed) -> None:
        try:
            self.pattern = re.compile(event.value, re.IGNORECASE) if event.value else None
        except re.error as exc:
            self.events.show_lines([guest(f"not a regular expression: {exc}", "red")])
            return
        self._paint_events()

    def equivalent(self, focus: Focus) -> list[str]:
        return [f"undebug trace show {focus.guest} -f", f"undebug trace stats {focus.guest}"]
