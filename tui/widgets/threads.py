"""The threads pane: one row per guest thread, sortable by any column, filtered by a
regular expression over its text; the row under the cursor is the selected thread.

It is virtual (Textual's line API): only the rows on screen are drawn, so 10,000 threads
cost a sort and a filter in Python per new view, never 10,000 widgets or cells (Textual's
DataTable builds every row up front: ~0.7 s for 10,000).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from undebug.api import GuestThread, ThreadsView
from undebug.text import escape

COLUMNS = ("ID", "NAME", "STATE", "CPU", "WAIT", "WHERE")
GAP = 2
_SORT_KEYS: tuple[Callable[[GuestThread, str], Any], ...] = (
    lambda t, where: t.id,
    lambda t, where: t.name.lower(),
    lambda t, where: t.state,
    lambda t, where: (t.cpu is None, t.cpu),
    lambda t, where: t.wait_reason or "",
    lambda t, where: where,
)


def _cells(thread: GuestThread, where: str) -> tuple[str, ...]:
    """The row's text, guest strings escaped (undebug.text): never markup, never raw."""
    return (str(thread.id), escape(str.__str__(thread.name)), escape(str.__str__(thread.state)),
            "-" if thread.cpu is None else str(thread.cpu),
            escape(str.__str__(thread.wait_reason)) if thread.wait_reason else "-",
            escape(str.__str__(where)) if where else "-")


class ThreadsTable(ScrollView, can_focus=True):
    """Parents call :meth:`show` with each new view; the table posts :class:`Selected`."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {"threads--header", "threads--cursor",
                                             "threads--odd"}
    DEFAULT_CSS = """
    ThreadsTable { height: 1fr; }
    ThreadsTable > .threads--header { text-style: bold; background: $panel; }
    ThreadsTable > .threads--cursor { background: $block-cursor-blurred-background; }
    ThreadsTable:focus > .threads--cursor { background: $block-cursor-background;
                                            color: $block-cursor-foreground; }
    ThreadsTable > .threads--odd { background: $surface-lighten-1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "up", show=False),
        Binding("down,j", "cursor(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home", "cursor(-1_000_000)", "first", show=False),
        Binding("end", "cursor(1_000_000)", "last", show=False),
    ]

    @dataclass
    class Selected(Message):
        thread_id: int

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.view: ThreadsView | None = None
        self.selected: int | None = None
        self.pattern: re.Pattern[str] | None = None
        self.sort_column = 0
        self.sort_reverse = False
        self.cursor_row = 0
        self.shown: list[int] = []  # thread ids, in the order on screen
        self._rows: dict[int, tuple[str, ...]] = {}  # thread id -> its cells, this view
        self._visible: list[tuple[str, ...]] = []
        self._widths = [cell_len(c) for c in COLUMNS]

    # ---- data ---------------------------------------------------------------------

    def show(self, view: ThreadsView, select: int | None = None) -> None:
        self.view = view
        self._rows = {t.id: _cells(t, view.where.get(t.id, "")) for t in view.threads}
        if select is not None:
            self.selected = select
        self._fill()

    def set_filter(self, text: str, ignore_case: bool) -> str | None:
        """Filter by ``text`` (a regex; empty: none); the error when it does not compile."""
        try:
            self.pattern = re.compile(text, re.IGNORECASE if ignore_case else 0) if text else None
        except re.error as exc:
            return f"not a regular expression: {exc}"
        self._fill()
        return None

    def sort_by(self, column: int) -> None:
        """Sort by ``column``; the same column again reverses the order."""
        self.sort_reverse = not self.sort_reverse if column == self.sort_column else False
        self.sort_column = column
        self._fill()

    @property
    def row_count(self) -> int:
        return len(self.shown)

    def row_text(self, row: int) -> tuple[str, ...]:
        """The cells of row ``row`` as shown (escaped)."""
        return self._visible[row]

    def _fill(self) -> None:
        if self.view is None:
            return
        where = self.view.where
        pattern = self.pattern
        threads = [t for t in self.view.threads if pattern is None or any(
            pattern.search(cell) for cell in self._rows[t.id])]
        key = _SORT_KEYS[self.sort_column]
        threads.sort(key=lambda t: key(t, where.get(t.id, "")), reverse=self.sort_reverse)
        self.shown = [t.id for t in threads]
        self._visible = [self._rows[t.id] for t in threads]
        self._widths = [max([cell_len(c)] + [cell_len(r[i]) for r in self._visible])
                        for i, c in enumerate(COLUMNS)]
        self.virtual_size = Size(sum(self._widths) + GAP * len(COLUMNS), len(self.shown) + 1)
        row = self.shown.index(self.selected) if self.selected in self.shown else 0
        self._move(row, announce=True)
        self.refresh()

    # ---- the cursor ---------------------------------------------------------------

    def _move(self, row: int, announce: bool) -> None:
        self.cursor_row = max(0, min(row, len(self.shown) - 1))
        if not self.shown:
            return
        top = self.scroll_offset.y
        rows = max(1, self.scrollable_content_region.height - 1)  # below the header
        if self.cursor_row < top:
            self.scroll_to(y=self.cursor_row, animate=False, force=True)
        elif self.cursor_row >= top + rows:
            self.scroll_to(y=self.cursor_row - rows + 1, animate=False, force=True)
        self.refresh()
        if announce and self.shown[self.cursor_row] != self.selected:
            self.selected = self.shown[self.cursor_row]
            self.post_message(self.Selected(self.selected))

    def action_cursor(self, delta: int) -> None:
        self._move(self.cursor_row + delta, announce=True)

    def action_page(self, direction: int) -> None:
        page = max(1, self.scrollable_content_region.height - 2)
        self._move(self.cursor_row + direction * page, announce=True)

    def on_click(self, event: events.Click) -> None:
        inside = event.get_content_offset(self)  # None: on the border or a scrollbar
        if inside is None:
            return
        x, y = inside.x + self.scroll_offset.x, inside.y
        top = self.scroll_offset.y
        if y == 0:
            edge = 0
            for column, width in enumerate(self._widths):
                edge += width + GAP
                if x < edge:
                    self.sort_by(column)
                    return
        elif top + y - 1 < len(self.shown):
            self._move(top + y - 1, announce=True)

    # ---- drawing (only the lines on screen) ----------------------------------------

    def _line(self, cells: tuple[str, ...], style: Style) -> Strip:
        text = "".join(c + " " * (w - cell_len(c) + GAP) for c, w in zip(cells, self._widths,
                                                                         strict=True))
        strip = Strip([Segment(text, style)], cell_len(text))
        left = self.scroll_offset.x
        return strip.crop_extend(left, left + self.size.width, style)

    def render_line(self, y: int) -> Strip:
        base = self.rich_style
        if y == 0:
            return self._line(COLUMNS, base + self.get_component_rich_style("threads--header"))
        row = self.scroll_offset.y + y - 1
        if row >= len(self._visible):
            return Strip.blank(self.size.width, base)
        style = base
        if row % 2:
            style += self.get_component_rich_style("threads--odd")
        if row == self.cursor_row:
            style += self.get_component_rich_style("threads--cursor")
        return self._line(self._visible[row], style)
