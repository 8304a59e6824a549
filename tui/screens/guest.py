"""One guest: its threads, the selected thread's backtrace and registers, the tabbed panes
(tui/panes.py: console, disassembly, source, memory, watch, trace, output, memory map,
heap, network), the ``:`` command bar, and run control. Views are read once per stop
(cached by run token); while the guest runs, the threads are re-read every second
without stopping it, marked LIVE, and ``p`` takes a consistent snapshot (pause, read,
resume). A dump bundle's path opens the same screen on the dump: one stop, forever, the
crashed thread selected, run control refused."""

from __future__ import annotations

from typing import ClassVar

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Footer, Input, Static, TabbedContent, TabPane
from textual.worker import get_current_worker

from tui import messages
from tui.panes import PANES
from tui.screens.paned import DUMP_REFUSAL, PanedScreen
from tui.widgets.backtrace import BacktracePane, backtrace_text
from tui.widgets.command_bar import CommandBar
from tui.widgets.registers import RegistersPane
from tui.widgets.status import StatusBar
from tui.widgets.threads import COLUMNS, ThreadsTable
from undebug import api
from undebug.errors import UndebugError

LIVE_PERIOD = 1.0  # s between reads of a running guest's threads (and status checks)


class GuestScreen(PanedScreen):
    DEFAULT_CSS = """
    GuestScreen #body { height: 1fr; }
    GuestScreen #main { height: 1fr; }
    GuestScreen #panes { height: 1fr; }
    GuestScreen.wide #body { layout: horizontal; }
    GuestScreen.wide #main { width: 3fr; }
    GuestScreen.wide #panes { width: 2fr; }
    GuestScreen #left { width: 2fr; }
    GuestScreen #right { width: 1fr; min-width: 34; max-width: 64; }
    GuestScreen #filter, GuestScreen #location, GuestScreen #command,
    GuestScreen #completions { display: none; }
    GuestScreen #filter.shown, GuestScreen #location.shown, GuestScreen #command.shown,
    GuestScreen #completions.shown { display: block; }
    GuestScreen #completions { height: 1; padding: 0 1; }
    GuestScreen TabPane { padding: 0; }
    GuestScreen ThreadsTable, GuestScreen BacktracePane, GuestScreen RegistersPane,
    GuestScreen TextPane, GuestScreen RichLog, GuestScreen WatchTable
    { border: round $primary-darken-2; }
    GuestScreen :focus { border: round $accent; }
    """

    # Each has an id, so a keymap file can rebind it (tui/keymap.py).
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "stop", "stop", id="stop"),
        Binding("c", "cont", "continue", id="continue"),
        Binding("n", "step", "step", id="step"),
        Binding("b", "break", "break", id="break"),
        Binding("p", "snapshot", "snapshot", id="snapshot"),
        Binding("r", "refresh", "refresh", id="refresh"),
        Binding("colon", "command", "command", id="command"),
        Binding("slash", "filter", "filter", id="filter"),
        Binding("ctrl+t", "toggle_case", "case", priority=True, show=False, id="case"),
        Binding("o", "sort", "sort", show=False, id="sort"),
        Binding("y", "copy", "copy bt", show=False, id="copy"),
        Binding("e", "equivalent", "as CLI", show=False, id="equivalent"),
        Binding("right_square_bracket,l", "next_tab(1)", "next tab", show=False, id="next_tab"),
        Binding("left_square_bracket,h", "next_tab(-1)", "previous tab", show=False,
                id="previous_tab"),
        *(Binding(str(i % 10), f"tab({i - 1})", p.pane_title, show=False, id=f"tab.{p.pane_id}")
          for i, p in enumerate(PANES, 1)),
        Binding("z", "zoom", "zoom", show=False, id="zoom"),
        Binding("tab", "app.focus_next", "next pane", show=False, id="focus_next"),
        Binding("escape", "close_filter", "clear filter", show=False, id="close"),
    ]

    def __init__(self, guest: str, read_only: bool = False) -> None:
        super().__init__(guest, read_only)
        self.ignore_case = True
        self._table: ThreadsTable | None = None
        self.holding = False  # a snapshot of the running guest is shown: no live ticks
        self.gone = False  # the session was removed: the last view stays, nothing is read
        self.view_stop = -1  # the run token of the last breakpoint stop selected for

    def compose(self) -> ComposeResult:
        yield StatusBar(self.guest, self.read_only, self.dump)
        with Container(id="body"):
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
            with TabbedContent(id="panes"):
                for i, pane in enumerate(PANES, 1):
                    with TabPane(f"{i % 10} {pane.pane_title}", id=f"tab-{pane.pane_id}"):
                        assert issubclass(pane, Widget)
                        yield pane(id=pane.pane_id)
        yield CommandBar(self.guest, id="command")
        yield Static(id="completions")
        yield Footer()

    @property
    def selected(self) -> int | None:
        """The selected thread's id (read by workers too: a plain attribute read)."""
        return self._table.selected if self._table is not None else None

    def on_mount(self) -> None:
        self._table = self.query_one(ThreadsTable)
        self._table.border_title = "threads"
        self.read_view()
        if self.dump is None:  # a dump never changes: nothing to tick for
            self.set_interval(LIVE_PERIOD, self._tick)

    # ---- reading the guest (workers: blocking calls off the app's thread) -------------

    def _tick(self) -> None:
        """The periodic read, unless the last one is still going (a slow walk of many
        threads): reads never pile up."""
        if not any(w.group == "view" and w.is_running for w in self.workers):
            self.read_view()

    @work(exclusive=True, thread=True, group="view")
    def read_view(self, force: bool = False, snapshot: bool = False) -> None:
        """The status; the threads when the stop changed or the guest runs; on a new stop
        also the selected thread's backtrace (the vCPU-0 thread's at first), read in the
        same consistent snapshot. ``snapshot``: of a running guest too (paused for the
        read, resumed after), held on screen until the next key that reads."""
        worker = get_current_worker()
        if self.gone:
            return
        try:
            status = self.dump.status if self.dump is not None else api.status(self.guest)
        except UndebugError as exc:  # its session was removed: killed and forgotten
            self.post_message(messages.GuestGone(exc.message))
            return
        try:
            shown = self.view
            if status.ended or (not force and shown is not None and not shown.live
                                and (self.holding or not status.runs)
                                and (self.holding or status.run_token == shown.run_token)):
                self.post_message(messages.ViewRead(status, None))
                return
            live = status.runs and shown is not None and not snapshot
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
            self.holding = snapshot and status.runs
            self.post_message(messages.ViewRead(status, view, backtrace))

    def _wanted(self, view: api.ThreadsView, status: api.GuestStatus) -> api.GuestThread | None:
        """The thread to select in a stopped view: the one on the vCPU that hit a
        breakpoint (a new stop the guest made), else the one selected, else the one on
        vCPU 0 (opening), else the first. A dump opens on the thread that crashed."""
        crashed = self.dump.crash_thread if self.dump is not None and self.view is None else None
        found = next((t for t in view.threads if t.id == crashed), None)
        if found is not None:
            return found
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
            label = " LIVE" if view.live else " SNAPSHOT" if self.holding else ""
            table.border_title = f"threads ({len(view.threads)}){label}"
            self.query_one(RegistersPane).note_stop(view)
            self._show_selected(read_backtrace=not view.live)
            for warning in [] if view.live else view.warnings[-1:]:  # live: torn, and says so
                self.query_one(StatusBar).say(warning)
        live = self.view is not None and self.view.live and message.status.runs
        self.query_one(StatusBar).show(message.status, live, self.holding)
        self.show_panes()

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
            self.show_panes()

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
        self.show_panes()

    # ---- keys -----------------------------------------------------------------------

    def _may_control(self) -> bool:
        if self.dump is not None:
            self.query_one(StatusBar).say(DUMP_REFUSAL)
            return False
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
        self.holding = False
        self.read_view(force=True)

    def action_snapshot(self) -> None:
        """A consistent picture of a running guest: paused, read, resumed (then held
        until r); of a stopped one, the stop read again."""
        self.backtraces.clear()
        self.read_view(force=True, snapshot=True)

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
        focus = self.focus_now()
        active = self.active_pane()
        if focus is not None and active is not None:
            lines += [line for line in active.equivalent(focus) if line not in lines]
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
        """Escape: close the command bar, the location box, or clear and close the filter."""
        if self.query_one(CommandBar).has_class("shown"):
            self._close_command()
            return
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
