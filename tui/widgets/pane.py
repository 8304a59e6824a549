"""What a tabbed pane of the guest screen is: a widget that shows something about the
focus (the guest, the stop, the selected thread and frame), reads what it needs itself in
its own workers, and says which ``undebug`` lines give the same data.

A new pane is a widget file that subclasses :class:`Pane` (with a Textual widget class)
plus one line in :data:`tui.panes.PANES`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar

from rich.text import Text
from textual.widgets import RichLog

from undebug.api import Frame, GuestThread


@dataclass(frozen=True)
class Focus:
    """What the panes are about. ``stopped``: the guest is held at stop ``run_token``
    (a consistent picture); else it runs and what is read is a moving picture."""

    guest: str
    run_token: int
    stopped: bool
    thread: GuestThread | None = None
    frame: Frame | None = None  # the frame selected in the backtrace pane (frame 0 at first)
    names: Mapping[int, str] = field(default_factory=dict)  # thread id -> name, raw: escape it

    @property
    def pc(self) -> int | None:
        if self.frame is not None:
            return self.frame.pc
        return self.thread.registers.get("rip") if self.thread is not None else None


class Pane:
    """Mixed into a Textual widget class (``class SourcePane(Pane, RichLog)``)."""

    pane_id: ClassVar[str]  # the widget's id and its tab's
    pane_title: ClassVar[str]  # the tab's label
    # True: given every focus, shown or not (it follows a stream); False: only when its
    # tab is shown (what it reads costs: a gdb, a pause)
    background: ClassVar[bool] = False
    focus_state: Focus | None = None

    def show_focus(self, focus: Focus) -> None:
        """The focus moved (a new stop, thread or frame) and the pane is on screen: show
        it. Called on the app's thread; blocking reads go to the pane's own workers."""
        self.focus_state = focus

    def equivalent(self, focus: Focus) -> list[str]:
        """The ``undebug`` lines that give what the pane shows."""
        return []


class TextPane(RichLog):
    """Lines of text with one of them marked (the pc, the source line), kept as plain text
    too (``plain``: what tests and the clipboard read)."""

    DEFAULT_CSS = """
    TextPane { height: 1fr; }
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(wrap=False, markup=False, highlight=False, max_lines=5000,
                         auto_scroll=False, **kwargs)  # type: ignore[arg-type]
        self.plain: list[str] = []
        self.mark: int | None = None  # the index in ``plain`` of the line marked

    def show_lines(self, lines: list[Text], mark: int | None = None) -> None:
        """Replace the text with ``lines``, line ``mark`` (an index) highlighted and
        scrolled into the middle of the pane."""
        self.clear()
        self.plain = [line.plain for line in lines]
        self.mark = mark
        for i, line in enumerate(lines):
            if i == mark:
                line = line.copy()
                line.stylize("reverse")
            self.write(line)
        if mark is not None:
            self.scroll_to(y=max(0, mark - self.size.height // 2), animate=False)
        else:
            self.scroll_home(animate=False)
