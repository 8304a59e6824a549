"""A batch's records as the span builder reads them, and the spans a thread has open.

The builder's two ways through a batch (the record-by-record walk in spans.py and the
fast path in nested_spans.py) share these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tracers.export.ids import idents
from tracers.export.spans_model import ExportSpan
from tracers.records import Records, Session

__all__ = ["BatchRows", "OpenSpan", "derived_id", "innermost_kept", "key_session"]


class BatchRows:
    """A batch's columns as Python lists, each converted on first use: indexing numpy
    arrays one element at a time costs more than the whole walk (the column path uses
    the arrays, ``r`` and ``times_ns``, and converts none)."""

    id: list[int]
    tid: list[int]
    cpu: list[int]
    tsc: list[int]
    seq: list[int]
    session: list[int]
    args: list[list[int]]
    times: list[int]
    since_boot: list[int]

    def __init__(self, r: Records, times: np.ndarray, since_boot: np.ndarray) -> None:
        self.r, self.times_ns, self._since_boot = r, times, since_boot
        self.strings, self.start = r.strings, r.start

    def __getattr__(self, name: str) -> list[Any]:
        """A column not converted yet (only then is this called): converted, kept."""
        arrays = {"times": self.times_ns, "since_boot": self._since_boot}
        if name in arrays:
            column = arrays[name]
        elif name in ("id", "tid", "cpu", "tsc", "seq", "session", "args"):
            column = getattr(self.r, name)
        else:
            raise AttributeError(name)
        values: list[Any] = column.tolist()
        setattr(self, name, values)
        return values

    def text(self, i: int) -> bytes:
        return self.strings.get(self.start + i, b"")


@dataclass
class OpenSpan:
    span: ExportSpan
    tp_name: str
    kept: bool = True  # selected for export (tracers/export/select.py)


def derived_id(session: Session, cpu: int, tsc: int, seq: int, tid: int, size: int,
           person: bytes) -> bytes:
    made: bytes = idents(session, [cpu], [tsc], [seq], [tid], size, person)[0].tobytes()
    return made


def key_session(sessions: dict[int, Session], session: int) -> int | None:
    """The value of a span's ``unikernel.session``: given when the stream has more than
    one session (or this is not the first)."""
    return session if len(sessions) > 1 or session else None


def innermost_kept(stack: list[OpenSpan] | None) -> ExportSpan | None:
    """The innermost selected span of a thread's open spans."""
    for entry in reversed(stack or ()):
        if entry.kept:
            return entry.span
    return None
