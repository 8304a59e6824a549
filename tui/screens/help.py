"""The help screen: every key of the screen it was opened from, and what it does."""

from __future__ import annotations

from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

INTRO = ("The threads pane lists the guest's own threads; the one on vCPU 0 is selected "
         "when the screen opens. Move with the arrow keys (or j/k): the backtrace and "
         "registers follow the selected thread, and the tabs below (1-9, 0) show its code, "
         "source, memory, watched expressions, trace, console, and the guest's memory map "
         "(what looks wrong in red), heap and network. Tab moves to the "
         "backtrace: the highlighted frame is the one disassembled; Enter shows its "
         "source line. Views are read once per stop; while the guest runs, the threads "
         "are re-read every second, marked LIVE (p: a consistent snapshot). : runs any "
         "undebug command.")


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 76; max-width: 100%; height: auto; max-height: 90%;
                                  border: round $accent; background: $surface; padding: 0 1; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "close", "close")]

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        super().__init__()
        self.keys = keys

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        for key, description in self.keys:
            table.add_row(key, description)
        with VerticalScroll():
            yield Static(Text(INTRO + "\n"))
            yield Static(table)
            yield Static(Text("\nescape, q or ? closes this help.", style="dim"))

    def action_close(self) -> None:
        self.dismiss()
