"""The Textual application: which screen opens, and the keys every screen shares."""

from __future__ import annotations

from typing import ClassVar

from textual.app import App
from textual.binding import Binding, BindingType

from tui.screens.guest import GuestScreen
from tui.screens.guests import GuestsScreen
from tui.screens.help import HelpScreen

# What the help screen says a key does, beyond its footer label.
_DESCRIPTIONS = {
    "stop": "stop (pause) the guest", "continue": "let the guest run",
    "step": "one instruction on the vCPU of the selected thread",
    "refresh": "read the guest again now",
    "break": "set a breakpoint (a function, FILE:LINE or an address); when a vCPU hits "
    "it the guest stops and its thread is selected", "filter": "filter threads by a regular expression",
    "case": "filter: match case or ignore it", "sort": "sort threads by the next column "
    "(or click a column's header; again: reverse)", "quit": "quit (the guest stays as it is)",
    "help": "this screen", "open": "open the highlighted guest",
    "next pane": "move between panes", "clear filter": "clear the filter, close it",
    "copy bt": "copy the selected thread's backtrace (to the terminal's clipboard: OSC 52)",
    "as CLI": "show the undebug commands that give what is on screen",
}


class UndebugApp(App[None]):
    TITLE = "undebug"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"), Binding("question_mark", "help", "help")]

    def __init__(self, guest: str | None, read_only: bool = False) -> None:
        super().__init__()
        self.guest = guest
        self.read_only = read_only

    def on_mount(self) -> None:
        if self.guest is None:
            self.push_screen(GuestsScreen(self.read_only))
        else:
            self.push_screen(GuestScreen(self.guest, self.read_only))

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        keys = []
        for binding in [*self.screen.BINDINGS, *self.BINDINGS]:
            assert isinstance(binding, Binding)
            label = binding.key_display or ", ".join(
                self.get_key_display(Binding(k, "")) for k in binding.key.split(","))
            keys.append((label, _DESCRIPTIONS.get(binding.description, binding.description)))
        if self.read_only:
            keys.append(("", "read-only (--read-only): stop, continue and step are refused"))
        self.push_screen(HelpScreen(keys))
