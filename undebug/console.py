"""The guest's console log: tails, following, and the line that explains a crash.

The log is guest output, hence untrusted: callers escape it before a terminal sees it,
and reads are bounded so a guest that floods its console cannot exhaust memory.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

__all__ = ["ConsoleFollower", "crash_line", "tail_lines"]

TAIL_BYTES = 64 << 10
MAX_LINE = 64 << 10  # a guest that never prints a newline still gets shown
# What unikernels print when they die: refguest's "PANIC:", Unikraft's "CRIT: ... Crash",
# Linux-style "Kernel panic", assertion and fault reports.
# "CRIT:" is Unikraft's critical log level, what UK_CRASH("...") prints its reason at.
_CRASH = re.compile(rb"panic|assert|fault|exception|crash|abort|oops|\bCRIT:", re.IGNORECASE)


def tail_lines(path: Path, count: int = 20, max_bytes: int = TAIL_BYTES) -> list[bytes]:
    """The last ``count`` lines of the log (raw bytes, without newlines)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return []
    lines = data.replace(b"\r", b"").split(b"\n")
    if size > max_bytes:
        lines = lines[1:]  # the first line is probably cut
    if lines and lines[-1] == b"":
        lines.pop()
    return lines[-count:]


def crash_line(path: Path) -> bytes | None:
    """The most telling crash report in the console tail: the last PANIC-like line."""
    for line in reversed(tail_lines(path, count=200)):
        if _CRASH.search(line):
            return line.strip()
    return None


class ConsoleFollower:
    """Reads what the guest printed since the last call, in whole lines where possible."""

    def __init__(self, path: Path, start_at_end: bool = False) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        if start_at_end:
            with contextlib.suppress(OSError):
                self._offset = path.stat().st_size

    def poll(self, flush_partial: bool = False, limit: int = 1 << 20) -> list[bytes]:
        """New complete lines; with ``flush_partial`` also an unterminated last line."""
        try:
            with self.path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read(limit)
        except OSError:
            chunk = b""
        self._offset += len(chunk)
        data = self._partial + chunk.replace(b"\r", b"")
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if (flush_partial and self._partial) or len(self._partial) > MAX_LINE:
            lines.append(self._partial)
            self._partial = b""
        return lines
