"""One guest: its threads, the selected thread's backtrace and registers, its console,
and run control. Views are read once per stop (cached by run token); while the guest
runs, the threads are re-read every second without stopping it, marked LIVE."""

from __future__ import annotations

from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Footer, Input
from textual.worker import get_current_worker

from tui import messages
from tui.widgets.backtrace import BacktracePane, backtrace_text
from tui.widgets.console import ConsolePane
from tui.widgets.registers import RegistersPane
from tui.widgets.status import StatusBar
from tui.widgets.threads import COLUMNS, ThreadsTable
from undebug import api
from undebug.errors import UndebugError

LIVE_PERIOD = 1.0  # s between reads of a running guest's threads (and status checks)
CONSOLE_PERIOD = 0.5


class GuestScreen(Screen[None]):
    DEFAULT_CSS = """
    GuestScreen #main { height: 1fr; }
    GuestScreen #left { width: 2fr; }
    GuestScreen #right { width: 1fr; min-width: 34; max-width: 64; }
    GuestScreen #filter, GuestScreen #location { display: none; }
    GuestScreen #filter.shown, GuestScreen #location.shown { display: block; }
    GuestScreen ThreadsTable, GuestScreen BacktracePane, GuestScreen RegistersPane,
    GuestScreen ConsolePane { border: round $primary-darken-2; }
    GuestScreen :focus { border: round $accent; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "stop", "stop"),
        Binding("c", "cont", "continue"),
        Binding("n", "step", "step"),
        Binding("b", "break", "break"),
        Binding("r", "refresh", "refresh"),
        Binding("slash", "filter", "filter"),
        Binding("ctrl+t", "toggle_case", "case", priority=True, show=False),
        Binding("o", "sort", "sort"),
        Binding("y", "copy", "copy bt", show=False),
        Binding("e", "equivalent", "as CLI", show=False),
        Binding("tab", "app.focus_next", "next pane", show=False),
        Binding("escape", "close_filter", "clear filter", show=False),
    ]

    def __init__(self, guest: str, read_only: bool = False) -> None:
        super().__init__()
        self.guest = guest
        self.read_only = read_only
        self.view: api.ThreadsView | None = None
        self.status: api.GuestStatus | None = None
        self.backtraces: dict[tuple[int, int], api.Backtrace] = {}
        self.ignore_case = True
        self.console: api.Console | None = None
        self._table: ThreadsTable | None = None
        self.gone = False  # the session was removed: the last view stays, nothing is read
        self.view_stop = -1  # the run token of the last breakpoint stop selected for

    def compose(self) -> ComposeResult:
        yield StatusBar(self.guest, self.read_only)
        with Horizontal(id="main"):
            with Vertical(id="left"):
                yield ThreadsTable(id="threads")
                yield Input(placeholder="filter: a regular expression (ctrl+t: case)",
                            id="filter")
                yield Input(placeholder="break at: a function, FILE:LINE or an address",
                            id="location")
            with Vertical(id="right"):
                yield BacktracePane(id="backtrace")
                yield RegistersPane(id="registers")
        yield ConsolePane(id="console")
        yield Footer()

    @property
    def selected(self) -> int | None:
        """The selected thread's id (read by workers too: a plain attribute read)."""
        return self._table.selected if self._table is not None else None

    def on_mount(self) -> None:
        self._table = self.query_one(ThreadsTable)
        self._table.border_title = "threads"
        self.query_one(ConsolePane).border_title = "console"
        self.read_view()
        self.set_interval(LIVE_PERIOD, self._tick)
        self.set_interval(CONSOLE_PERIOD, self.read_console)

    # ---- reading the guest (workers: blocking calls off the app's thread) -------------

    def _tick(self) -> None:
        """The periodic read, unless the last one is still going (a slow walk of many
        threads): reads never pile up."""
        if not any(w.group == "view" and w.is_running for w in self.workers):
            self.read_view()

    @work(exclusive=True, thread=True, group="view")
    def read_view(self, force: bool = False) -> None:
        """The status; the threads when the stop changed or the guest runs; on a new stop
        also the selected thread's backtrace (the vCPU-0 thread's at first), read in the
        same consistent snapshot."""
        worker = get_current_worker()
        if self.gone:
            return
        try:
            status = api.status(self.guest)
        except UndebugError as exc:  # its session was removed: killed and forgotten
            self.post_message(messages.GuestGone(exc.message))
            return
        try:
            shown = self.view
            if status.ended or (not force and shown is not None and not shown.live
                                and not status.runs and status.run_token == shown.run_token):
                self.post_message(messages.ViewRead(status, None))
                return
            live = status.runs and shown is not None
            with api.attach(self.guest, stop=not live) as session:
                view = session.view()
                backtrace = None
                thread = None if live else self._wanted(view, status)
                if thread is not None:
                    backtrace = (thread.id, session.backtrace(thread.id))
        except UndebugError as exc:
            self.post_message(messages.Notice(f"reading the guest: {exc.message}"))
            return
        if not worker.is_cancelled:
            self.post_message(messages.ViewRead(status, view, backtrace))

    def _wanted(self, view: api.ThreadsView, status: api.GuestStatus) -> api.GuestThread | None:
        """The thread to select in a stopped view: the one on the vCPU that hit a
        breakpoint (a new stop the guest made), else the one selected, else the one on
        vCPU 0 (opening), else the first."""
        stop = status.last_stop
        if stop is not None and stop.reason == "breakpoint" and stop.cpu is not None \
                and status.run_token == view.run_token and self.view_stop != view.run_token:
            on_stop = view.on_cpu(stop.cpu)
            if on_stop is not None:
                return on_stop
        wanted = self.selected
        return next((t for t in view.threads if t.id == wanted), None) \
            or view.on_cpu(0) or (view.threads[0] if view.threads else None)

    @work(exclusive=True, thread=True, group="backtrace")
    def read_backtrace(self, thread_id: int) -> None:
        """One thread's backtrace, in a consistent snapshot (a running guest is paused
        for the read and resumed)."""
        try:
            with api.attach(self.guest) as session:
                read = messages.BacktraceRead(thread_id, session.target.run_token,
                                              session.backtrace(thread_id))
        except UndebugError as exc:
            self.post_message(messages.Notice(
                f"the backtrace of thread {thread_id}: {exc.message}"))
            return
        if not get_current_worker().is_cancelled:
            self.post_message(read)

    @work(exclusive=True, thread=True, group="console")
    def read_console(self) -> None:
        if self.gone:
            return
        try:
            if self.console is None:
                self.console = api.Console(self.guest)
            lines = self.console.poll()
        except UndebugError as exc:
            self.post_message(messages.Notice(f"the console: {exc.message}"))
            return
        if lines:
            self.post_message(messages.ConsoleRead(lines))

    @work(thread=True, group="control")
    def control(self, verb: str, cpu: int | None = None, location: str = "") -> None:
        try:
            if verb == "break":
                bp = api.break_at(self.guest, location)
                self.post_message(messages.Notice(
                    f"breakpoint {bp.id} at {bp.address:#x} ({location}): the guest stops "
                    "when a vCPU gets there", error=False))
                return
            if verb == "stop":
                api.pause(self.guest)
            elif verb == "continue":
                api.resume(self.guest)
            else:
                stop = api.step(self.guest, cpu)
                self.post_message(messages.Notice(
                    f"stepped vCPU {stop.cpu}: pc {stop.pc or 0:#x}", error=False))
        except UndebugError as exc:
            self.post_message(messages.Notice(f"{verb}: {exc.message}"))
        self.app.call_from_thread(self.read_view)

    # ---- results --------------------------------------------------------------------

    @on(messages.ViewRead)
    def _view_read(self, message: messages.ViewRead) -> None:
        self.status = message.status
        view = message.view
        if view is not None:
            self.view = view
            if not view.live:  # a new stop: the backtraces of earlier ones are history
                self.backtraces = {k: v for k, v in self.backtraces.items()
                                   if k[0] == view.run_token}
            table = self.query_one(ThreadsTable)
            select = None
            if message.backtrace is not None:
                select, backtrace = message.backtrace
                self.backtraces[(view.run_token, select)] = backtrace
                self.view_stop = view.run_token
            table.show(view, select=select)
            table.border_title = f"threads ({len(view.threads)})" + (" LIVE" if view.live else "")
            self._show_selected(read_backtrace=not view.live)
            for warning in [] if view.live else view.warnings[-1:]:  # live: torn, and says so
                self.query_one(StatusBar).say(warning)
        live = self.view is not None and self.view.live and message.status.runs
        self.query_one(StatusBar).show(message.status, live)

    @on(messages.GuestGone)
    def _gone(self, message: messages.GuestGone) -> None:
        self.gone = True
        self.query_one(StatusBar).gone(message.reason)

    @on(messages.BacktraceRead)
    def _backtrace_read(self, message: messages.BacktraceRead) -> None:
        self.backtraces[(message.run_token, message.thread_id)] = message.backtrace
        if message.thread_id == self.query_one(ThreadsTable).selected:
            self.query_one(BacktracePane).show(message.thread_id, message.backtrace,
                                               message.run_token)

    @on(messages.ConsoleRead)
    def _console_read(self, message: messages.ConsoleRead) -> None:
        self.query_one(ConsolePane).add(message.lines)

    @on(messages.Notice)
    def _notice(self, message: messages.Notice) -> None:
        self.query_one(StatusBar).say(message.text, "red" if message.error else "green")

    @on(ThreadsTable.Selected)
    def _selected(self, message: ThreadsTable.Selected) -> None:
        self._show_selected(read_backtrace=True)

    def _show_selected(self, read_backtrace: bool) -> None:
        """Registers and backtrace of the selected thread: from the cache when this stop
        already has them, else read (not on a live tick: the stop-time one stays)."""
        table = self.query_one(ThreadsTable)
        if self.view is None or table.selected is None:
            return
        thread = next((t for t in self.view.threads if t.id == table.selected), None)
        if thread is None:
            return
        self.query_one(RegistersPane).show(thread)
        cached = self.backtraces.get((self.view.run_token, thread.id))
        if cached is not None:
            self.query_one(BacktracePane).show(thread.id, cached, self.view.run_token)
        elif read_backtrace:
            self.read_backtrace(thread.id)

    # ---- keys -----------------------------------------------------------------------

    def _may_control(self) -> bool:
        if self.read_only:
            self.query_one(StatusBar).say("read-only: run control is off (--read-only)")
        elif self.gone:
            self.query_one(StatusBar).say("the guest is gone: nothing to control")
        return not (self.read_only or self.gone)

    def action_stop(self) -> None:
        if self._may_control():
            self.control("stop")

    def action_cont(self) -> None:
        if self._may_control():
            self.control("continue")

    def action_step(self) -> None:
        if not self._may_control() or self.view is None:
            return
        if self.status is not None and self.status.runs:
            self.query_one(StatusBar).say("the guest is running: stop it first (s)")
            return
        selected = self.query_one(ThreadsTable).selected
        thread = next((t for t in self.view.threads if t.id == selected), None)
        if thread is None or thread.cpu is None:
            self.query_one(StatusBar).say(f"thread {selected} is not on a vCPU: only a "
                                          "running thread can be stepped")
            return
        self.control("step", thread.cpu)

    def action_refresh(self) -> None:
        self.backtraces.clear()
        self.read_view(force=True)

    def action_copy(self) -> None:
        """The selected thread's backtrace to the clipboard (OSC 52), as text: escaped."""
        pane = self.query_one(BacktracePane)
        if pane.shown is None or self.view is None:
            return
        backtrace = self.backtraces.get(pane.shown)
        if backtrace is None:
            return
        self.app.copy_to_clipboard(backtrace_text(pane.shown[1], backtrace))
        self.query_one(StatusBar).say(f"copied the backtrace of thread {pane.shown[1]}", "green")

    def action_equivalent(self) -> None:
        """The CLI lines that give the data on screen (the supervisor requests behind it)."""
        selected = self.selected
        lines = [f"undebug threads {self.guest}"]
        if selected is not None:
            lines += [f"undebug bt {self.guest} --thread {selected}",
                      f"undebug regs {self.guest} --thread {selected}"]
        lines.append(f"undebug logs {self.guest} -n 200 -f")
        self.query_one(StatusBar).say("; ".join(lines), "cyan")

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("shown")
        box.focus()

    def action_break(self) -> None:
        if self._may_control():
            box = self.query_one("#location", Input)
            box.add_class("shown")
            box.focus()

    @on(Input.Submitted, "#location")
    def _location_given(self, event: Input.Submitted) -> None:
        event.input.remove_class("shown")
        self.query_one(ThreadsTable).focus()
        if event.value.strip():
            self.control("break", location=event.value.strip())
        event.input.value = ""

    def action_close_filter(self) -> None:
        """Escape: close the location box, or clear and close the filter."""
        for box in self.query("#location, #filter").results(Input):
            if box.has_class("shown"):
                box.value = ""
                box.remove_class("shown")
        self._apply_filter()
        self.query_one(ThreadsTable).focus()

    def action_toggle_case(self) -> None:
        self.ignore_case = not self.ignore_case
        self._apply_filter()
        self.query_one(StatusBar).say("filter ignores case" if self.ignore_case else
                                      "filter matches case", "green")

    def action_sort(self) -> None:
        table = self.query_one(ThreadsTable)
        table.sort_by((table.sort_column + 1) % len(COLUMNS))
        self.query_one(StatusBar).say(f"sorted by {COLUMNS[table.sort_column]}", "green")

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self._apply_filter()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.query_one(ThreadsTable).focus()

    def _apply_filter(self) -> None:
        error = self.query_one(ThreadsTable).set_filter(self.query_one("#filter", Input).value,
                                                       self.ignore_case)
        if error:
            self.query_one(StatusBar).say(error, "red")
