"""The console pane: the guest's serial output, its tail at first, then followed."""

from __future__ import annotations

from typing import Any

from textual.widgets import RichLog

from tui.widgets.text import guest
from undebug.api import GuestText


class ConsolePane(RichLog):
    DEFAULT_CSS = """
    ConsolePane { height: 7; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_lines=1000, wrap=False, markup=False, highlight=False, **kwargs)

    def add(self, lines: list[GuestText]) -> None:
        for line in lines:
            self.write(guest(line))
