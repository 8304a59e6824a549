"""What the memory-map, heap and network panes share: each shows one thing about the
whole guest (not the selected thread), read through :mod:`undebug.api` in the pane's own
worker once per run token. A stopped guest is read once at its stop; a running one as it
runs (no pause behind the user's back), at the new tokens of the screen's live ticks,
and titled LIVE: a moving picture, where ``p`` gives a consistent snapshot."""

from __future__ import annotations

from typing import Generic, TypeVar

from rich.text import Text
from textual import work
from textual.containers import Vertical
from textual.widgets import Static
from textual.worker import get_current_worker

from tui.widgets.pane import Focus, Pane
from tui.widgets.text import guest
from undebug import api
from undebug.errors import UndebugError

__all__ = ["PerStopPane"]

_T = TypeVar("_T")


class PerStopPane(Pane, Vertical, Generic[_T]):
    """Subclasses say what to read (:meth:`fetch`, in a worker thread) and how to show
    it (:meth:`paint`, on the app's thread); ``#<pane_id>-note`` is a line for what went
    wrong (a Static the subclass composes)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.asked: int | None = None  # the run token last read for
        self.shown: tuple[int, _T] | None = None  # (run token, what is on screen)

    def fetch(self, session: api.Session) -> _T:
        raise NotImplementedError

    def paint(self, data: _T, title: str) -> None:
        raise NotImplementedError

    def show_focus(self, focus: Focus) -> None:
        super().show_focus(focus)
        if self.asked != focus.run_token:
            self.asked = focus.run_token
            self.read(focus.guest, focus.run_token, focus.stopped)

    @work(exclusive=True, thread=True, group="per-stop")
    def read(self, name: str, token: int, stopped: bool) -> None:
        """Of a guest at a stop, held still for the read (it is already: this only makes
        sure a ``c`` meanwhile cannot tear it); of a running one, read as it runs."""
        try:
            with api.attach(name, stop=stopped) as session:
                data = self.fetch(session)
        except UndebugError as exc:
            self.app.call_from_thread(self._failed, token, exc.message)
            return
        if not get_current_worker().is_cancelled:  # a newer token's read replaces it
            self.app.call_from_thread(self._show, token, stopped, data)

    def _show(self, token: int, stopped: bool, data: _T) -> None:
        self.shown = (token, data)
        self.paint(data, f"{self.pane_title} " +
                   (f"at stop #{token}" if stopped else "LIVE (a moving picture: p snapshots)"))

    def _failed(self, token: int, why: str) -> None:
        self.asked = None  # read again at the next focus
        self.note([f"cannot read the guest (stop #{token}): {why}"])

    def note(self, lines: list[str]) -> None:
        """The warnings of the read (guest text: escaped), under the pane's table."""
        note = self.query_one(f"#{self.pane_id}-note", Static)
        note.update(Text("\n").join(guest(line, "yellow") for line in lines))
        note.display = bool(lines)
