"""The watch pane: C expressions the user adds, each evaluated by gdb (``undebug eval``,
through :func:`undebug.api.evaluate`: one gdb for the whole list) in the selected thread,
again at each stop. While the guest runs the values stay those of the last stop:
evaluating pauses the guest, which a watch list must not do behind the user's back."""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widgets import DataTable, Input

from tui.widgets.pane import Focus, Pane
from tui.widgets.text import guest
from undebug import api
from undebug.errors import UndebugError


class WatchTable(DataTable[Text]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("delete,x", "forget", "forget", show=False, id="watch.forget")]

    def action_forget(self) -> None:
        pane = self.parent
        if isinstance(pane, WatchPane) and 0 <= self.cursor_row < len(pane.expressions):
            pane.values.pop(pane.expressions.pop(self.cursor_row), None)
            pane.paint()


class WatchPane(Pane, Vertical):
    pane_id = "watch"
    pane_title = "watch"
    DEFAULT_CSS = """
    WatchPane #watch-add { height: 3; }
    WatchPane WatchTable { height: 1fr; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.expressions: list[str] = []
        self.values: dict[str, api.Evaluation] = {}  # expression -> its value at the stop
        self.evaluated: tuple[int, int | None, tuple[str, ...]] | None = None  # what for
        self.stop_label = ""

    def compose(self) -> ComposeResult:
        yield Input(placeholder="watch: a C expression (Enter adds it; x or Delete in the "
                    "list forgets one)", id="watch-add")
        yield WatchTable(cursor_type="row", id="watch-values")

    def on_mount(self) -> None:
        self.query_one(WatchTable).add_columns("EXPRESSION", "VALUE", "TYPE")

    @on(Input.Submitted, "#watch-add")
    def _add(self, event: Input.Submitted) -> None:
        expression = event.value.strip()
        event.input.value = ""
        if expression and expression not in self.expressions:
            self.expressions.append(expression)
            self.paint()
            if self.focus_state is not None:
                self.show_focus(self.focus_state)

    def show_focus(self, focus: Focus) -> None:
        super().show_focus(focus)
        thread = focus.thread.id if focus.thread is not None else None
        wanted = (focus.run_token, thread, tuple(self.expressions))
        if focus.stopped and self.expressions and self.evaluated != wanted:
            self.evaluated = wanted
            self.evaluate(focus.guest, list(self.expressions), thread, focus.run_token)

    @work(exclusive=True, thread=True, group="watch")
    def evaluate(self, name: str, expressions: list[str], thread: int | None, token: int) -> None:
        try:
            found, _ = api.evaluate(name, expressions, thread)
        except UndebugError as exc:
            found = [api.Evaluation(e, error=exc.message) for e in expressions]
        self.app.call_from_thread(self._evaluated, expressions, found, token)

    def _evaluated(self, expressions: list[str], found: list[api.Evaluation], token: int) -> None:
        self.values = {e.expression: e for e in found}
        self.stop_label = f"at stop #{token}"
        self.paint()

    def paint(self) -> None:
        table = self.query_one(WatchTable)
        row = table.cursor_row
        table.clear()
        for expression in self.expressions:
            value = self.values.get(expression)
            if value is None:
                cells = (Text("…", style="dim"), Text(""))
            elif value.error is not None:
                cells = (guest(value.error, "red"), Text(""))
            else:
                cells = (guest(value.value, "bold"), guest(value.type, default=""))
            table.add_row(guest(expression), *cells)
        if self.expressions:
            table.move_cursor(row=min(row, len(self.expressions) - 1), animate=False)
        self.border_title = f"watch ({self.stop_label})" if self.stop_label else "watch"

    def value_of(self, expression: str) -> str | None:
        """The value shown for ``expression`` (None: not evaluated, or an error)."""
        value = self.values.get(expression)
        return None if value is None or value.error else str.__str__(value.value)

    def equivalent(self, focus: Focus) -> list[str]:
        import shlex

        thread = f" --thread {focus.thread.id}" if focus.thread is not None else ""
        return [f"undebug eval {focus.guest} {shlex.quote(e)}{thread}" for e in self.expressions]
