"""What the guest screen has besides its threads, backtrace and registers: the tabbed
panes (tui/panes.py) and the focus they are given, and the ``:`` command bar. The guest
screen (tui/screens/guest.py) reads the guest and sets the attributes declared here."""

from __future__ import annotations

from typing import cast

from textual import events, on, work
from textual.screen import Screen
from textual.widgets import DataTable, Input, Static, TabbedContent

from tui.panes import PANES
from tui.run_line import run_line
from tui.widgets.backtrace import BacktracePane
from tui.widgets.command_bar import CommandBar
from tui.widgets.output import OutputPane
from tui.widgets.pane import Focus, Pane
from tui.widgets.status import StatusBar
from tui.widgets.threads import ThreadsTable
from tui.widgets.trace import TracePane
from undebug import api
from undebug.errors import UndebugError

DUMP_REFUSAL = "a dump bundle: one moment, offline; run control is off"
WIDE = 160  # columns from which the panes stand beside the threads, not under them


class PanedScreen(Screen[None]):
    def __init__(self, guest: str, read_only: bool) -> None:
        super().__init__()
        self.guest = guest
        self.read_only = read_only
        self.dump = _dump(guest)  # a bundle's path: the screen shows a dump (no run control)
        self.view: api.ThreadsView | None = None
        self.status: api.GuestStatus | None = None
        self.backtraces: dict[tuple[int, int], api.Backtrace] = {}

    @property
    def selected(self) -> int | None:
        return self.query_one(ThreadsTable).selected

    def action_refresh(self) -> None:
        raise NotImplementedError  # the guest screen reads the guest again

    def focus_now(self) -> Focus | None:
        """What the panes are about now: the stop, the selected thread, its selected frame
        (from the backtrace pane, when it shows that thread at this stop)."""
        if self.view is None:
            return None
        thread = next((t for t in self.view.threads if t.id == self.selected), None)
        frame = None
        pane = self.query_one(BacktracePane)
        if thread is not None and pane.shown == (self.view.run_token, thread.id):
            backtrace = self.backtraces.get(pane.shown)
            if backtrace is not None and backtrace.frames:
                frame = backtrace.frames[min(max(pane.cursor_row, 0), len(backtrace.frames) - 1)]
        stopped = not self.view.live and self.status is not None and not self.status.runs
        names = {t.id: str.__str__(t.name) for t in self.view.threads}
        return Focus(self.guest, self.view.run_token, stopped, thread, frame, names)

    def panes(self) -> list[Pane]:
        return [cast(Pane, self.query_one(f"#{p.pane_id}")) for p in PANES]

    def active_pane(self) -> Pane | None:
        active = self.query_one(TabbedContent).active.removeprefix("tab-")
        return next((p for p in self.panes() if type(p).pane_id == active), None)

    def show_panes(self) -> None:
        """The focus to the pane on screen, and to those that follow in the background."""
        focus = self.focus_now()
        if focus is None:
            return
        active = self.active_pane()
        for pane in self.panes():
            if pane is active or pane.background:
                pane.show_focus(focus)

    @on(TabbedContent.TabActivated)
    def _tab_shown(self) -> None:
        self.show_panes()

    @on(DataTable.RowHighlighted, "#backtrace")
    def _frame_highlighted(self) -> None:
        self.show_panes()

    @on(DataTable.RowSelected, "#backtrace")
    def _frame_chosen(self) -> None:
        """Enter on a frame: its source."""
        self.action_show_tab("source")

    def action_show_tab(self, pane_id: str) -> None:
        """Show the pane's tab; a pane that asks for input (memory, watch, trace) gets the
        keyboard (Escape gives it back to the threads)."""
        self.query_one(TabbedContent).active = f"tab-{pane_id}"
        self.show_panes()
        for box in self.query_one(f"#{pane_id}").query(Input).results(Input):
            box.focus()
            break

    def action_tab(self, index: int) -> None:
        if 0 <= index < len(PANES):
            self.action_show_tab(PANES[index].pane_id)

    def action_next_tab(self, step: int) -> None:
        ids = [p.pane_id for p in PANES]
        active = self.query_one(TabbedContent).active.removeprefix("tab-")
        self.action_show_tab(ids[(ids.index(active) + step) % len(ids)] if active in ids else ids[0])

    def action_zoom(self) -> None:
        """The tabbed panes full-screen, or back (at 80x24 a pane has few lines)."""
        if self.maximized is not None:
            self.minimize()
        else:
            self.maximize(self.query_one("#panes"), container=False)

    def on_resize(self, event: events.Resize) -> None:
        self.set_class(event.size.width >= WIDE, "wide")

    @on(TracePane.Rate)
    def _trace_rate(self, message: TracePane.Rate) -> None:
        self.query_one(StatusBar).trace(message.per_second, message.lost, message.dropped_bytes,
                                        message.unit)

    # ---- the command bar --------------------------------------------------------------

    def action_command(self) -> None:
        bar = self.query_one(CommandBar)
        bar.add_class("shown")
        self.query_one("#completions").add_class("shown")
        bar.focus()

    @on(Input.Submitted, "#command")
    def _command_given(self, event: Input.Submitted) -> None:
        bar = self.query_one(CommandBar)
        line = event.value.strip()
        bar.remember(line)
        bar.value = ""
        self._close_command()
        if line:
            self.run_command(line)

    def _close_command(self) -> None:
        self.query_one(CommandBar).remove_class("shown")
        self.query_one("#completions", Static).remove_class("shown")
        self.query_one(ThreadsTable).focus()

    @work(thread=True, group="command")
    def run_command(self, text: str) -> None:
        ran = run_line(self.guest, text, self.read_only,
                       dump=self.dump.path if self.dump is not None else None)
        self.app.call_from_thread(self._command_ran, ran.line, ran.output, ran.code)
        if ran.moved:
            self.app.call_from_thread(self.action_refresh)

    def _command_ran(self, line: str, output: str, code: int) -> None:
        self.query_one(OutputPane).add(line, output, code)
        self.action_show_tab("output")
        self.query_one(StatusBar).say(f"{line}: exit code {code}", "red" if code else "green")


def _dump(guest: str) -> api.Dump | None:
    """The bundle ``guest`` names, if it is one (a bundle that cannot be read shows its
    error when the screen reads it)."""
    try:
        return api.dump(guest)
    except UndebugError:
        return None
