"""Which spans an export keeps: ``--filter NAME`` (globs on the span's name) and
``--since S`` / ``--until S`` (when the span began, in seconds since the guest booted, as
``trace show`` prints times).

A span left out still nests: its kept descendants become children of its nearest kept
ancestor (or the outermost of their trace), and its events go to that ancestor, so what
is exported has no dangling parent.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

__all__ = ["Selection"]


@dataclass(frozen=True)
class Selection:
    names: tuple[str, ...] = ()
    since_ns: int | None = None
    until_ns: int | None = None

    @classmethod
    def of(cls, names: list[str] | None, since_s: float | None, until_s: float | None) \
            -> Selection | None:
        """None when nothing is selected (every span is kept)."""
        if not names and since_s is None and until_s is None:
            return None
        return cls(tuple(names or ()), None if since_s is None else int(since_s * 1e9),
                   None if until_s is None else int(until_s * 1e9))

    def keeps(self, name: str, since_boot_ns: int) -> bool:
        if self.names and not any(fnmatch.fnmatchcase(name, glob) for glob in self.names):
            return False
        if self.since_ns is not None and since_boot_ns < self.since_ns:
            return False
        return self.until_ns is None or since_boot_ns <= self.until_ns
