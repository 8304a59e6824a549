"""The console pane: the guest's serial output, its tail at first, then followed (read
whether or not its tab is shown, so nothing printed is missed)."""

from __future__ import annotations

from typing import Any

from textual import work
from textual.widgets import RichLog

from tui.widgets.pane import Focus, Pane
from tui.widgets.text import guest
from undebug import api
from undebug.errors import UndebugError

PERIOD = 0.5  # s between looks at the console log


class ConsolePane(Pane, RichLog):
    pane_id = "console"
    pane_title = "console"
    background = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_lines=1000, wrap=False, markup=False, highlight=False, **kwargs)
        self.console: api.Console | None = None
        self.guest: str | None = None
        self.border_title = "console"

    def show_focus(self, focus: Focus) -> None:
        super().show_focus(focus)
        if self.guest is None:
            self.guest = focus.guest
            self.read_console()
            self.set_interval(PERIOD, self.read_console)

    @work(exclusive=True, thread=True, group="console")
    def read_console(self) -> None:
        if self.guest is None:
            return
        try:
            if self.console is None:
                self.console = api.Console(self.guest)
            lines = self.console.poll()
        except UndebugError as exc:
            self.app.call_from_thread(self.write, guest(f"the console: {exc.message}", "red"))
            return
        if lines:
            self.app.call_from_thread(self.add, lines)

    def add(self, lines: list[api.GuestText]) -> None:
        for line in lines:
            self.write(guest(line))

    def equivalent(self, focus: Focus) -> list[str]:
        return [f"undebug logs {focus.guest} -n 200 -f"]
