"""The source pane: the source around the selected frame's line, when the file is on
this machine (Enter on a backtrace frame opens it). The disassembly pane reads source
lines through :func:`source_lines` too."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from rich.text import Text
from textual import work

from tui.widgets.pane import Focus, Pane, TextPane
from tui.widgets.text import guest
from undebug import api
from undebug.errors import UndebugError

MAX_SOURCE = 8 << 20  # a bigger "source file" is not one: not read
CONTEXT = 200  # lines shown each side of the frame's line


@lru_cache(maxsize=32)
def _read(path: Path, mtime_ns: int) -> tuple[str, ...]:
    with path.open("rb") as f:
        data = f.read(MAX_SOURCE + 1)
    if len(data) > MAX_SOURCE:
        return ()
    return tuple(data.decode("utf-8", "replace").splitlines())


def source_lines(path: Path) -> tuple[str, ...]:
    """The lines of ``path`` (cached while the file is unchanged); () if unreadable."""
    try:
        return _read(path, os.stat(path).st_mtime_ns)
    except OSError:
        return ()


def numbered(number: int, text: str, width: int = 5) -> Text:
    """One source line as the panes show it: its number, then the text (escaped: a file
    may hold anything)."""
    line = Text(f"{number:>{width}}  ", style="dim")
    line.append_text(guest(text.expandtabs(8)))
    return line


def _short(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class SourcePane(Pane, TextPane):
    pane_id = "source"
    pane_title = "source"

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.shown: tuple[str, int] | None = None  # (file, line) on screen
        self.border_title = "source"

    def show_focus(self, focus: Focus) -> None:
        super().show_focus(focus)
        frame = focus.frame
        if frame is None or frame.file is None or frame.line is None:
            self.shown = None
            self.show_lines([Text("no source line for this frame (no DWARF line for its pc)",
                                  style="dim")])
            return
        if self.shown != (frame.file, frame.line):
            self.read_source(focus.guest, frame.file, frame.line)

    @work(exclusive=True, thread=True, group="source")
    def read_source(self, name: str, file: str, line: int) -> None:
        try:
            path = api.source_path(name, file)
        except UndebugError as exc:
            path, why = None, exc.message
        else:
            why = f"{file} is not on this machine (looked in its compilation directories)"
        lines = source_lines(path) if path is not None else ()
        self.app.call_from_thread(self._show, file, line, path, lines, why)

    def _show(self, file: str, line: int, path: Path | None, lines: tuple[str, ...],
              why: str) -> None:
        self.shown = (file, line)
        if path is None or not lines:
            self.border_title = "source"
            self.show_lines([guest(why if path is None else f"{path}: cannot read it", "yellow")])
            return
        self.border_title = f"source: {guest(_short(path)).plain}:{line}"
        first = max(1, line - CONTEXT)
        last = min(len(lines), line + CONTEXT)
        self.show_lines([numbered(n, lines[n - 1]) for n in range(first, last + 1)],
                        mark=line - first if line <= len(lines) else None)

    def equivalent(self, focus: Focus) -> list[str]:
        if focus.thread is None:
            return []
        return [f"undebug bt {focus.guest} --thread {focus.thread.id}"]
