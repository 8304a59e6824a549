"""Spans of a cleanly nested batch as columns (the span builder's fast path), and the one
description of their attributes that every encoder of columns and ``spans()`` follow.

A batch that nests cleanly (tracers/export/nesting.py) and whose tracepoints have only
unsigned arguments is kept as arrays: ids, times, threads, argument words, and its span
events by span. The encoders (OTLP protobuf, OTLP/JSON, Jaeger JSON) write them with numpy
(tracers/export/packing.py); ``spans()`` makes the same spans as
:class:`~tracers.export.spans.ExportSpan`\\ s, equal to what the record-by-record walk
makes, for the writers without a column path and for the tests that compare the two.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from tracers.export.attributes import (
    INT64_MAX,
    LEVELS,
    AttrValue,
    code_attributes,
    plain_names,
)
from tracers.export.spans_model import ExportSpan, SpanEvent
from tracers.metadata import KIND_LOG, Tracepoint, Tracepoints

__all__ = ["Attr", "SpanColumns", "event_attrs", "event_groups", "make_events", "span_attrs"]

_I64 = npt.NDArray[np.int64]
_U64 = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class Attr:
    """One attribute of a group of records: integer values (as OTLP holds them: past
    int64, their decimal string), a constant string, or an entry of ``texts`` by
    ``index``; ``present``: only for those records."""

    key: str
    ints: _U64 | None = None
    text: str | None = None
    texts: list[str] | None = None
    index: _I64 | None = None
    present: npt.NDArray[np.bool_] | None = None

    def value(self, i: int) -> AttrValue | None:
        if self.present is not None and not self.present[i]:
            return None
        if self.ints is not None:
            v = int(self.ints[i])
            return v if v <= INT64_MAX else str(v)
        if self.texts is not None:
            assert self.index is not None
            return self.texts[int(self.index[i])]
        return self.text


def _consts(attrs: dict[str, AttrValue], n: int) -> list[Attr]:
    return [Attr(k, ints=np.full(n, v, np.uint64)) if isinstance(v, int) else Attr(k, text=str(v))
            for k, v in attrs.items()]


@dataclass
class SpanColumns:
    """Spans (rows) and their events (``ev_*``, sorted by span, then time). ``session``:
    the value of ``unikernel.session`` when spans carry it; ``names``: thread names."""

    tps: Tracepoints
    session: int | None
    names: dict[int, str]
    trace: npt.NDArray[np.uint8]  # (n, 16)
    span: npt.NDArray[np.uint8]  # (n, 8)
    parent: npt.NDArray[np.uint8]  # (n, 8)
    has_parent: npt.NDArray[np.bool_]
    begin_id: _I64
    end_id: _I64  # -1: still open
    tid: _I64
    cpu: _I64
    start_ns: _I64
    end_ns: _I64
    begin_args: _U64
    end_args: _U64
    dropped: _I64
    ev_span: _I64
    ev_id: _I64
    ev_cpu: _I64
    ev_time: _I64
    ev_args: _U64

    def __len__(self) -> int:
        return len(self.tid)

    def take(self, rows: _I64) -> SpanColumns:
        """These spans (in this order) and their events."""
        new = np.full(len(self), -1, np.int64)
        new[rows] = np.arange(len(rows))
        keep = np.flatnonzero(new[self.ev_span] >= 0)
        keep = keep[np.argsort(new[self.ev_span[keep]], kind="stable")]
        span_cols = {k: getattr(self, k)[rows] for k in (
            "trace", "span", "parent", "has_parent", "begin_id", "end_id", "tid", "cpu",
            "start_ns", "end_ns", "begin_args", "end_args", "dropped")}
        ev_cols = {k: getattr(self, k)[keep] for k in ("ev_id", "ev_cpu", "ev_time",
                                                       "ev_args")}
        return SpanColumns(self.tps, self.session, self.names, ev_span=new[self.ev_span[keep]],
                           **span_cols, **ev_cols)

    # ---- the attributes, by group ---------------------------------------------------------

    def span_groups(self) -> Iterator[tuple[_I64, list[Attr]]]:
        """Spans by (begin, end) tracepoint, with their attributes in the walk's order."""
        pair = self.begin_id * (1 << 17) + self.end_id + 1
        for key in np.unique(pair).tolist():
            rows = np.flatnonzero(pair == key)
            yield rows, span_attrs(self, rows)

    def event_groups(self) -> Iterator[tuple[_I64, Tracepoint, list[Attr]]]:
        return event_groups(self.tps, self.ev_id, self.ev_cpu, self.ev_args)

    def thread_names(self) -> tuple[list[str], _I64, npt.NDArray[np.bool_]]:
        """Every named thread's name, each span's index into them, and whether it has one."""
        tids = sorted(self.names)
        texts = [self.names[t] for t in tids] or [""]
        if not tids:
            return texts, np.zeros(len(self), np.int64), np.zeros(len(self), np.bool_)
        at = np.searchsorted(np.array(tids), self.tid)
        at = np.minimum(at, len(tids) - 1)
        return texts, at, np.array(tids)[at] == self.tid

    # ---- as objects -----------------------------------------------------------------------

    def events(self) -> Iterator[tuple[int, SpanEvent]]:
        """(span row, event) in the columns' order."""
        made = make_events(self.tps, self.ev_id, self.ev_time, self.ev_cpu, self.ev_args)
        yield from zip(self.ev_span.tolist(), made, strict=True)

    def spans(self) -> list[ExportSpan]:
        out: list[ExportSpan] = []
        for i in range(len(self)):
            parent = self.parent[i].tobytes() if self.has_parent[i] else None
            out.append(ExportSpan(
                self.trace[i].tobytes(), self.span[i].tobytes(), parent,
                self.tps.by_id[int(self.begin_id[i])].name, int(self.start_ns[i]),
                int(self.end_ns[i]), {}, dropped_events=int(self.dropped[i]),
                local_root=parent is None))
        for rows, attrs in self.span_groups():
            for n, r in enumerate(rows.tolist()):
                out[r].attributes = {a.key: v for a in attrs if (v := a.value(n)) is not None}
        for r, event in self.events():
            out[r].events.append(event)
        return out


def event_groups(tps: Tracepoints, ids: npt.NDArray[np.integer], cpu: npt.NDArray[np.integer],
                 args: _U64) -> Iterator[tuple[_I64, Tracepoint, list[Attr]]]:
    """Events by tracepoint, with their attributes."""
    for ident in np.unique(ids).tolist():
        rows = np.flatnonzero(ids == ident)
        tp = tps.by_id[ident]
        yield rows, tp, event_attrs(tp, args[rows], cpu[rows].astype(np.int64))


def make_events(tps: Tracepoints, ids: npt.NDArray[np.integer], times: npt.NDArray[np.integer],
                cpu: npt.NDArray[np.integer], args: _U64) -> list[SpanEvent]:
    """Tracepoint records (of tracepoints with unsigned arguments) as span events."""
    made: list[SpanEvent | None] = [None] * len(ids)
    for rows, tp, attrs in event_groups(tps, ids, cpu, args):
        for k, r in enumerate(rows.tolist()):
            values = {a.key: v for a in attrs if (v := a.value(k)) is not None}
            made[r] = SpanEvent(tp.name, int(times[r]), values)
    return made  # type: ignore[return-value]


def span_attrs(c: SpanColumns, rows: _I64) -> list[Attr]:
    """A span's attributes, as the walk gives them: its thread and CPU, the source
    location, the begin's arguments, the session, the end's arguments that differ, and
    the thread's name (spans still open have neither of the last two yet)."""
    begin = c.tps.by_id[int(c.begin_id[rows[0]])]
    n = len(rows)
    attrs = [Attr("thread.id", ints=c.tid[rows].astype(np.uint64)),
             Attr("cpu.logical_number", ints=c.cpu[rows].astype(np.uint64)),
             *_consts(code_attributes(begin), n)]
    names = plain_names(begin) or ()
    attrs += [Attr(f"unikernel.args.{k}", ints=c.begin_args[rows, j]) for j, k in enumerate(names)]
    if c.session is not None:
        attrs.append(Attr("unikernel.session", ints=np.full(n, c.session, np.uint64)))
    end_ident = int(c.end_id[rows[0]])
    if end_ident < 0:
        return attrs
    position = {k: j for j, k in enumerate(names)}
    for j, k in enumerate(plain_names(c.tps.by_id[end_ident]) or ()):
        values = c.end_args[rows, j]
        same = position.get(k)
        differ = None if same is None else values != c.begin_args[rows, same]
        attrs.append(Attr(f"unikernel.end_args.{k}", ints=values, present=differ))
    texts, index, named = c.thread_names()
    attrs.append(Attr("thread.name", texts=texts, index=index[rows], present=named[rows]))
    return attrs


def event_attrs(tp: Tracepoint, args: _U64, cpu: _I64) -> list[Attr]:
    """A tracepoint event's attributes: its arguments, source location, CPU, log level."""
    n = len(cpu)
    attrs = [Attr(k, ints=args[:, j]) for j, k in enumerate(plain_names(tp) or ())]
    attrs += _consts(code_attributes(tp), n)
    attrs.append(Attr("cpu.logical_number", ints=cpu.astype(np.uint64)))
    if tp.kind == KIND_LOG:
        attrs.append(Attr("log.level", text=LEVELS.get(tp.level, str(tp.level))))
    return attrs
