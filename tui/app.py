"""The Textual application: which screen opens, the keys every screen shares, themes,
the keymap file (tui/keymap.py) and the command palette's entries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen

from tui.keymap import keymap_path, load_keymap
from tui.screens.guest import GuestScreen
from tui.screens.guests import GuestsScreen
from tui.screens.help import HelpScreen

THEMES = {"dark": "textual-dark", "light": "textual-light"}

# What the help screen says a key does, beyond its footer label.
_DESCRIPTIONS = {
    "stop": "stop (pause) the guest", "continue": "let the guest run",
    "step": "one instruction on the vCPU of the selected thread",
    "refresh": "read the guest again now",
    "snapshot": "a consistent picture of a running guest: pause, read, resume (held until r)",
    "break": "set a breakpoint (a function, FILE:LINE or an address); when a vCPU hits "
    "it the guest stops and its thread is selected", "filter": "filter threads by a regular expression",
    "case": "filter: match case or ignore it", "sort": "sort threads by the next column "
    "(or click a column's header; again: reverse)", "quit": "quit (the guest stays as it is)",
    "help": "this screen", "open": "open the highlighted guest",
    "next pane": "move between panes", "clear filter": "close the command bar or the "
    "break box; clear the filter, close it",
    "copy bt": "copy the selected thread's backtrace (to the terminal's clipboard: OSC 52)",
    "as CLI": "show the undebug commands that give what is on screen",
    "command": "an undebug command line (Tab completes, up/down: earlier lines); its output "
    "goes to the output tab", "next tab": "the next tab of panes", "previous tab":
    "the previous tab", "zoom": "the tabbed panes full-screen, or back",
    "theme": "light or dark", "palette": "the command palette: every action by name",
}


class UndebugApp(App[None]):
    TITLE = "undebug"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit", id="quit"),
        Binding("question_mark", "help", "help", id="help"),
        Binding("t", "toggle_theme", "theme", show=False, id="theme"),
    ]

    def __init__(self, guest: str | None, read_only: bool = False, theme: str = "dark") -> None:
        super().__init__()
        self.guest = guest
        self.read_only = read_only
        self.theme = THEMES[theme]

    def on_mount(self) -> None:
        keymap, problem = load_keymap()
        if keymap:
            self.set_keymap(keymap)
        if problem:
            self.notify(problem, severity="warning")
        self.push_screen(self.first_screen())

    def first_screen(self) -> Screen[None]:
        """The guests (as ps lists them) without a NAME, else the guest's screen."""
        if self.guest is None:
            return GuestsScreen(self.read_only)
        return GuestScreen(self.guest, self.read_only)

    def action_toggle_theme(self) -> None:
        self.theme = THEMES["light"] if self.theme == THEMES["dark"] else THEMES["dark"]

    def _keys(self) -> list[tuple[Binding, str]]:
        """The screen's and the app's bindings with the keys they have now (the keymap
        applied), for the help screen and the palette."""
        found = []
        bindings = [*self.screen.BINDINGS, *self.BINDINGS]
        for binding in bindings:
            assert isinstance(binding, Binding)
            keys = self._keymap.get(binding.id, binding.key) if binding.id else binding.key
            label = binding.key_display or ", ".join(
                self.get_key_display(Binding(k, "")) for k in keys.split(","))
            found.append((binding, label))
        return found

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        keys = [(label, _DESCRIPTIONS.get(b.description, b.description)
                 + (f"  [{b.id}]" if b.id else "")) for b, label in self._keys()]
        keys.append(("ctrl+p", _DESCRIPTIONS["palette"]))
        keys.append(("", f"rebind keys by their [id] in {keymap_path()}"))
        if self.read_only:
            keys.append(("", "read-only (--read-only): stop, continue and step are refused"))
        if isinstance(self.screen, GuestScreen) and self.screen.dump is not None:
            keys.append(("", "a dump bundle: stop, continue, step and break are refused"))
        self.push_screen(HelpScreen(keys))

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        """Textual's own (themes, keys, quit) and every action of the screen, by name."""
        yield from super().get_system_commands(screen)
        for binding, label in self._keys():
            if binding.id in (None, "quit", "help") or binding.action.startswith("app."):
                continue
            action = binding.action
            yield SystemCommand(f"{binding.description} ({label})",
                                _DESCRIPTIONS.get(binding.description, binding.description),
                                lambda action=action: self.run_action(action, screen))
