"""The memory pane: a hex view of guest memory at an address or a symbol the user types
(as ``undebug mem`` reads it), read again at each stop."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input

from tui.widgets.pane import Focus, Pane, TextPane
from tui.widgets.text import guest
from undebug import api
from undebug.errors import UndebugError
from undebug.text import hexdump

LENGTH = 256  # bytes shown from the address


class MemoryPane(Pane, Vertical):
    pane_id = "memory"
    pane_title = "memory"
    DEFAULT_CSS = """
    MemoryPane #memory-at { height: 3; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.where = ""  # what the user typed: an address or a symbol
        self.shown: tuple[int, str] | None = None  # (run token, where) on screen
        self.address: int | None = None

    def compose(self) -> ComposeResult:
        yield Input(placeholder="jump to: an address (0x...) or a symbol, Enter", id="memory-at")
        yield TextPane(id="memory-bytes")

    @property
    def view(self) -> TextPane:
        return self.query_one("#memory-bytes", TextPane)

    def show_focus(self, focus: Focus) -> None:
        super().show_focus(focus)
        if not self.where:
            self.view.show_lines([Text("type an address or a symbol above (Enter)", style="dim")])
        elif self.shown != (focus.run_token, self.where) or not focus.stopped:
            self.read(focus.guest, self.where, focus.run_token, focus.stopped)

    @on(Input.Submitted, "#memory-at")
    def _jump(self, event: Input.Submitted) -> None:
        self.where = event.value.strip()
        if self.focus_state is not None:
            self.shown = None
            self.show_focus(self.focus_state)

    @work(exclusive=True, thread=True, group="memory")
    def read(self, name: str, where: str, token: int, stopped: bool) -> None:
        """The bytes at ``where``: of a stopped guest at its stop; of a running one read
        as it runs (a moving picture, as the live threads)."""
        try:
            with api.attach(name, stop=False) as session:
                address = session.address(where)
                data = session.read(address, LENGTH)
        except UndebugError as exc:
            self.app.call_from_thread(self._failed, where, exc.message)
            return
        self.app.call_from_thread(self._show, where, token, address, data, stopped)

    def _failed(self, where: str, why: str) -> None:
        self.shown, self.address = None, None
        self.view.show_lines([guest(f"{where}: {why}", "yellow")])

    def _show(self, where: str, token: int, address: int, data: bytes, stopped: bool) -> None:
        self.shown, self.address = (token, where), address
        self.view.border_title = f"{guest(where).plain} = {address:#x}" + ("" if stopped else " LIVE")
        self.view.show_lines([Text(line) for line in hexdump(address, data)])

    def equivalent(self, focus: Focus) -> list[str]:
        return [f"undebug mem {focus.guest} {self.where} {LENGTH}"] if self.where else []
