"""The backtrace pane: the selected thread's frames, innermost first (function, file:line)."""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from tui.widgets.text import guest
from undebug.api import Backtrace
from undebug.text import escape


def backtrace_text(thread_id: int, backtrace: Backtrace) -> str:
    """The backtrace as lines of plain text (for the clipboard), guest names escaped."""
    lines = [f"thread {thread_id}:"]
    for frame in backtrace.frames:
        where = f" at {escape(frame.file)}:{frame.line}" if frame.file else ""
        lines.append(f"#{frame.index} {frame.pc:#x} in {escape(frame.function or '??')}{where}")
    return "\n".join(lines + [f"warning: {escape(w)}" for w in backtrace.warnings]) + "\n"


class BacktracePane(DataTable[Text]):
    DEFAULT_CSS = """
    BacktracePane { height: 1fr; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", **kwargs)
        self.shown: tuple[int, int] | None = None  # (run token, thread id) on screen

    def on_mount(self) -> None:
        self.add_columns("#", "FUNCTION", "FILE:LINE")

    def show(self, thread_id: int, backtrace: Backtrace, run_token: int) -> None:
        self.shown = (run_token, thread_id)
        self.border_title = f"backtrace of thread {thread_id}"
        self.clear()
        for frame in backtrace.frames:
            function = guest(frame.function, "bold", default=f"{frame.pc:#x}")
            if frame.trap is not None:
                function.append(f" <{frame.trap.name}>", style="red")
            # The file's name only (Unikraft's DWARF has absolute paths); y copies it whole.
            place = guest(f"{PurePath(frame.file).name}:{frame.line}" if frame.file else None,
                          default=f"{frame.pc:#x}")
            self.add_row(Text(str(frame.index)), function, place)
        for warning in backtrace.warnings:
            self.add_row(Text("!", style="yellow"), guest(warning, "yellow"), Text(""))
