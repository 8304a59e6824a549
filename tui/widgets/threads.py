"""The threads pane: one row per guest thread, sortable by any column, filtered by a
regular expression over its text; the highlighted row is the selected thread."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import on
from textual.message import Message
from textual.widgets import DataTable

from tui.widgets.text import guest
from undebug.api import GuestThread, ThreadsView

COLUMNS = ("ID", "NAME", "STATE", "CPU", "WAIT", "WHERE")
_SORT_KEYS: tuple[Callable[[GuestThread, str], Any], ...] = (
    lambda t, where: t.id,
    lambda t, where: t.name.lower(),
    lambda t, where: t.state,
    lambda t, where: (t.cpu is None, t.cpu),
    lambda t, where: t.wait_reason or "",
    lambda t, where: where,
)


class ThreadsTable(DataTable[Text]):
    """Parents call :meth:`show` with each new view; the table posts :class:`Selected`."""

    DEFAULT_CSS = """
    ThreadsTable { height: 1fr; }
    """

    @dataclass
    class Selected(Message):
        thread_id: int

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)
        self.view: ThreadsView | None = None
        self.selected: int | None = None
        self.pattern: re.Pattern[str] | None = None
        self.sort_column = 0
        self.sort_reverse = False
        self.shown: list[int] = []  # thread ids, in the order on screen

    def on_mount(self) -> None:
        self.add_columns(*COLUMNS)

    def show(self, view: ThreadsView, select: int | None = None) -> None:
        self.view = view
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

    def _visible(self) -> list[GuestThread]:
        assert self.view is not None
        where = self.view.where
        rows = [t for t in self.view.threads if self.pattern is None or any(
            self.pattern.search(text) for text in (
                t.name, t.state, t.wait_reason or "", where.get(t.id, ""), str(t.id)))]
        key = _SORT_KEYS[self.sort_column]
        rows.sort(key=lambda t: key(t, where.get(t.id, "")), reverse=self.sort_reverse)
        return rows

    def _fill(self) -> None:
        if self.view is None:
            return
        rows = self._visible()
        where = self.view.where
        self.shown = [t.id for t in rows]
        self.clear()
        self.add_rows([Text(str(t.id)), guest(t.name, "bold"), guest(t.state),
                       Text("-" if t.cpu is None else str(t.cpu)), guest(t.wait_reason),
                       guest(where.get(t.id))] for t in rows)
        if not rows:
            return
        row = self.shown.index(self.selected) if self.selected in self.shown else 0
        self.move_cursor(row=row, animate=False)
        if self.shown[row] != self.selected:
            self.selected = self.shown[row]
            self.post_message(self.Selected(self.selected))

    @on(DataTable.RowHighlighted)
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if 0 <= event.cursor_row < len(self.shown) and self.shown[event.cursor_row] != self.selected:
            self.selected = self.shown[event.cursor_row]
            self.post_message(self.Selected(self.selected))

    @on(DataTable.HeaderSelected)
    def _header(self, event: DataTable.HeaderSelected) -> None:
        event.stop()
        self.sort_by(event.column_index)
