"""Every guest, as ``undebug ps`` lists them; Enter opens one."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tui import messages
from tui.screens.guest import GuestScreen
from tui.widgets.status import uptime
from tui.widgets.text import guest
from undebug import api

PERIOD = 2.0


class GuestsScreen(Screen[None]):
    DEFAULT_CSS = """
    GuestsScreen DataTable { height: 1fr; }
    GuestsScreen #title { height: 1; background: $panel; padding: 0 1; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "open", "open"), Binding("r", "refresh", "refresh")]

    def __init__(self, read_only: bool = False) -> None:
        super().__init__()
        self.read_only = read_only
        self.names: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static(Text("undebug: guests (Enter opens one)", style="bold"), id="title")
        yield DataTable[Text](cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("NAME", "STATE", "ACCEL", "CPUS", "MEM",
                                              "UPTIME", "IMAGE")
        self.action_refresh()
        self.set_interval(PERIOD, self.action_refresh)

    def action_refresh(self) -> None:
        self.read_guests()

    @work(exclusive=True, thread=True)
    def read_guests(self) -> None:
        found, problems = api.guests()
        self.post_message(messages.GuestsRead(found, problems))

    @on(messages.GuestsRead)
    def _read(self, message: messages.GuestsRead) -> None:
        table = self.query_one(DataTable)
        row = table.cursor_row
        table.clear()
        self.names = [g.name for g in message.guests]
        for g in message.guests:
            table.add_row(guest(g.name, "bold"), guest(g.state), Text(g.accel or "-"),
                          Text(str(g.smp or "-")), Text(f"{g.memory_mb}M" if g.memory_mb else "-"),
                          Text(uptime(g.uptime_s)), guest(g.image))
        if self.names:
            table.move_cursor(row=min(row, len(self.names) - 1), animate=False)
        title = "undebug: guests (Enter opens one)" if self.names else \
            "undebug: no guests (start one with: undebug run -d --name NAME IMAGE)"
        text = Text(title, style="bold")
        for problem in message.problems[-1:]:
            text.append("  ")
            text.append_text(guest(problem, "red"))
        self.query_one("#title", Static).update(text)

    @on(DataTable.RowSelected)
    def _chosen(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_open(self) -> None:
        row = self.query_one(DataTable).cursor_row
        if 0 <= row < len(self.names):
            self.app.push_screen(GuestScreen(self.names[row], self.read_only))
