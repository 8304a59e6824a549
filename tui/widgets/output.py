"""The output pane: what the ``:`` command bar's commands printed, newest last, as the
CLI prints it (their guest text is escaped by the CLI; what is left of control
characters is made visible here too)."""

from __future__ import annotations

import re
from typing import Any

from rich.text import Text
from textual.widgets import RichLog

from tui.widgets.pane import Focus, Pane

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # the CLI's output has none: a guard


class OutputPane(Pane, RichLog):
    pane_id = "output"
    pane_title = "output"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_lines=5000, wrap=False, markup=False, highlight=False, **kwargs)
        self.border_title = "output of : commands"
        self.plain: list[str] = []
        self.last: str | None = None  # the last command line run

    def add(self, line: str, output: str, code: int) -> None:
        self.last = line
        self.write(Text(f": {line}", style="bold cyan"))
        self.plain.append(f": {line}")
        for text in output.splitlines():
            text = _CONTROL.sub("\ufffd", text)
            self.write(Text(text))
            self.plain.append(text)
        if code:
            self.write(Text(f"(exit code {code})", style="red"))
            self.plain.append(f"(exit code {code})")

    def equivalent(self, focus: Focus) -> list[str]:
        return [f"undebug {self.last}"] if self.last else []
