"""The ``:`` command bar: an undebug command line, completed with Tab as the shell
completes it (tui/completion.py: command names, options, thread ids and names, symbols),
with the lines run before on up and down. The screen runs what is submitted."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from rich.text import Text
from textual import work
from textual.binding import Binding, BindingType
from textual.widgets import Input, Static

from tui.completion import LineCompleter
from undebug.text import escape

SHOWN = 12  # candidates listed under the bar


class CommandBar(Input):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("tab", "complete", "complete", priority=True, show=False),
        Binding("up", "history(-1)", "earlier", show=False),
        Binding("down", "history(1)", "later", show=False),
    ]

    def __init__(self, guest: str, **kwargs: Any) -> None:
        super().__init__(placeholder="an undebug command (Tab completes; Enter runs; Escape "
                         "closes): threads, bt --thread 3, mem planted_counter 16, ...",
                         **kwargs)
        self.completer = LineCompleter(guest)
        self.history: list[str] = []
        self._at = 0  # index in history while moving through it
        self.candidates: list[str] = []

    def remember(self, line: str) -> None:
        if line and (not self.history or self.history[-1] != line):
            self.history.append(line)
        self._at = len(self.history)

    def action_history(self, step: int) -> None:
        if not self.history:
            return
        self._at = max(0, min(len(self.history), self._at + step))
        self.value = self.history[self._at] if self._at < len(self.history) else ""
        self.cursor_position = len(self.value)

    def action_complete(self) -> None:
        self.complete(self.value[: self.cursor_position], self.value[self.cursor_position :])

    @work(exclusive=True, thread=True, group="complete")
    def complete(self, before: str, after: str) -> None:
        """The completions of the text before the cursor (completion may ask the guest's
        supervisor for its threads: off the app's thread)."""
        found = list(self.completer.get_completions(Document(before),
                                                    CompleteEvent(completion_requested=True)))
        texts = sorted({c.text for c in found})
        shown = sorted({c.display_text for c in found})
        start = min((c.start_position for c in found), default=0)
        self.app.call_from_thread(self._completed, before, after, start, texts, shown)

    def _completed(self, before: str, after: str, start: int, texts: list[str],
                   shown: list[str]) -> None:
        if self.value[: self.cursor_position] != before:  # typed on meanwhile
            return
        self.candidates = texts
        if texts:
            common = os.path.commonprefix(texts)  # noqa: RUF071 (characters are meant)
            insert = common + (" " if len(texts) == 1 else "")
            head = before[: len(before) + start] + insert
            if len(insert) >= -start:
                self.value = head + after
                self.cursor_position = len(head)
        hint = self.screen.query("#completions").results(Static)
        for box in hint:
            more = f"  (+{len(shown) - SHOWN} more)" if len(shown) > SHOWN else ""
            box.update(Text(("  ".join(escape(s) for s in shown[:SHOWN]) + more)
                            if len(texts) > 1 else "", style="dim"))
