"""The span builder's fast path: a batch that nests cleanly, placed with numpy.

nesting.py finds where each record of such a batch belongs; here the spans are made from
that: as columns (columns.py) when the batch's tracepoints have only unsigned arguments
and no host traceparent is given, else as objects without the record-by-record walk.
Spans that stay open at the batch's end become objects on the threads' stacks either
way, so the next batch (either way) carries them on. Both ways give the walk's spans
(tests/test_export_columns.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tracers.export import nesting
from tracers.export.attributes import plain_names
from tracers.export.batch_rows import BatchRows, OpenSpan, key_session
from tracers.export.columns import SpanColumns, make_events
from tracers.export.ids import SPAN, TRACE, idents
from tracers.export.select import Selection
from tracers.export.spans_model import ExportCounts, ExportSpan, SpanEvent
from tracers.export.traceparent import TraceParent
from tracers.format import ID_LOG_STR, RESERVED_FIRST
from tracers.metadata import KIND_SPAN_BEGIN, KIND_SPAN_END, Tracepoint, Tracepoints
from tracers.records import Session

__all__ = ["NestedPath"]


class NestedPath:
    """The fast path of :class:`~tracers.export.spans.SpanBuilder` (a base of it: the
    builder's state and its ways to make a span, an end and an event are shared)."""

    tps: Tracepoints
    fast: bool
    select: Selection | None
    host_parent: tuple[str, TraceParent | str] | None
    contexts: dict[tuple[int, int], str]
    max_events: int
    max_depth: int
    counts: ExportCounts
    names: dict[int, bytes]
    open: dict[tuple[int, int], list[OpenSpan]]
    sessions: dict[int, Session]

    if TYPE_CHECKING:  # the builder's (spans.py)
        def _span(self, c: BatchRows, i: int, key: tuple[int, int], tp: Tracepoint,
                  parent: ExportSpan | None, trace_id: bytes | None) -> ExportSpan: ...
        def _close(self, span: ExportSpan, tp: Tracepoint, words: list[int], time_ns: int,
                   tid: int) -> ExportSpan: ...
        def _event(self, c: BatchRows, i: int, ident: int, tp: Tracepoint | None,
                   time_ns: int) -> SpanEvent: ...

    def _fast_tables(self, tracepoints: Tracepoints) -> None:
        """Per record id, for nesting.py: its kind there and its span's name (a number)."""
        self._kinds = np.full(1 << 16, nesting.OTHER, np.int8)
        self._kinds[:RESERVED_FIRST] = nesting.EVENT
        self._kinds[ID_LOG_STR] = nesting.EVENT
        self._name_codes = np.full(1 << 16, -1, np.int32)
        codes: dict[str, int] = {}
        for tp in tracepoints.by_id.values():
            if tp.kind in (KIND_SPAN_BEGIN, KIND_SPAN_END) and tp.id < RESERVED_FIRST:
                self._kinds[tp.id] = nesting.BEGIN if tp.kind == KIND_SPAN_BEGIN else \
                    nesting.END
                self._name_codes[tp.id] = codes.setdefault(tp.name, len(codes))
        self._codes_of = codes
        # ids whose records the column path takes: tracepoints with unsigned arguments only
        self._plain_ok = np.zeros(1 << 16, np.bool_)
        for tp in tracepoints.by_id.values():
            if tp.id < RESERVED_FIRST and plain_names(tp) is not None:
                self._plain_ok[tp.id] = True


    def _nested(self, c: BatchRows, rows: np.ndarray,
                ended: list[ExportSpan | SpanColumns]) -> bool:
        """The fast path: one session's rows placed by nesting.py, then only spans and
        events made here. False (nothing done): the batch needs the walk."""
        if not self.fast or self.select is not None or self.contexts or not len(rows):
            return False
        session = c.session[int(rows[0])]
        ids = c.r.id[rows]
        tids = c.r.tid[rows]
        carried = {key[1]: [self._codes_of[o.tp_name] for o in stack]
                   for key, stack in self.open.items() if key[0] == session and stack}
        n = nesting.nest(tids, self._kinds[ids], self._name_codes[ids], carried,
                         self.max_depth)
        if n is None:
            return False
        stacks = {tid: self.open[(session, tid)] for tid in carried}
        if self.host_parent is None and self._plain_ok[ids].all():
            self._columns(c, rows, n, session, stacks, ended)
            return True
        tps, counts = self.tps.by_id, self.counts

        def span_of(ref: int, tid: int) -> ExportSpan:
            return made[ref] if ref >= 0 else stacks[tid][-1 - ref].span

        made: list[ExportSpan] = []
        for i, ref in zip(rows[n.begins].tolist(), n.begin_parent.tolist(), strict=True):
            tid = c.tid[i]
            parent = None if ref == nesting.NONE else span_of(ref, tid)
            made.append(self._span(c, i, (session, tid), tps[c.id[i]], parent,
                                   parent.trace_id if parent else None))
        for i, ref in zip(rows[n.ends].tolist(), n.end_span.tolist(), strict=True):
            tid = c.tid[i]
            ended.append(self._close(span_of(ref, tid), tps[c.id[i]], c.args[i], c.times[i],
                                     tid))
        times, max_events = c.times, self.max_events
        for i, ref in zip(rows[n.events].tolist(), n.event_span.tolist(), strict=True):
            if ref == nesting.NONE:
                counts.outside_spans += 1
                continue
            span = span_of(ref, c.tid[i])
            if len(span.events) >= max_events:
                span.dropped_events += 1
                counts.dropped_events += 1
                continue
            ident = c.id[i]
            span.events.append(self._event(c, i, ident, tps.get(ident), times[i]))
            counts.span_events += 1
        for tid, refs in n.still_open.items():
            self.open[(session, tid)] = [
                stacks[tid][-1 - ref] if ref < 0 else OpenSpan(made[ref], made[ref].name)
                for ref in refs]
        return True

    def _columns(self, c: BatchRows, rows: np.ndarray, n: nesting.Nesting, session: int,
                 stacks: dict[int, list[OpenSpan]], ended: list[ExportSpan | SpanColumns]) -> None:
        """The column path: the batch's spans as arrays; those still open at its end
        become objects (on the stacks), as do the ends and events of spans carried in."""
        r, counts, times = c.r, self.counts, c.times_ns
        where = self.sessions[session]
        b = rows[n.begins]
        ref = n.begin_parent
        nb = len(b)
        span_id = idents(where, r.cpu[b], r.tsc[b], r.seq[b], r.tid[b], 8, SPAN)
        trace = np.zeros((nb, 16), np.uint8)
        parent = np.zeros((nb, 8), np.uint8)
        root = ref == nesting.NONE
        trace[root] = idents(where, r.cpu[b[root]], r.tsc[b[root]], r.seq[b[root]],
                             r.tid[b[root]], 16, TRACE)
        counts.traces += int(root.sum())
        for j in np.flatnonzero((ref < 0) & ~root).tolist():  # children of spans carried in
            outer = stacks[int(r.tid[b[j]])][-1 - int(ref[j])].span
            trace[j] = np.frombuffer(outer.trace_id, np.uint8)
            parent[j] = np.frombuffer(outer.span_id, np.uint8)
        own = ref >= 0
        parent[own] = span_id[ref[own]]
        for level in np.unique(n.begin_level[own]).tolist():  # outer levels first
            at = own & (n.begin_level == level)
            trace[at] = trace[ref[at]]
        # the ends: of spans begun here (columns) or carried in (objects)
        e = rows[n.ends]
        mine = n.end_span >= 0
        closed = n.end_span[mine]
        end_id = np.full(nb, -1, np.int64)
        end_ns = times[b].astype(np.int64)
        end_args = np.zeros_like(r.args[b])
        end_id[closed] = r.id[e[mine]]
        end_ns[closed] = np.maximum(times[e[mine]], end_ns[closed])
        end_args[closed] = r.args[e[mine]]
        # events: kept up to max_events a span (in time order), the rest counted
        v = rows[n.events]
        to = n.event_span
        counts.outside_spans += int((to == nesting.NONE).sum())
        into = np.flatnonzero(to >= 0)
        by_span = into[np.argsort(to[into], kind="stable")]
        count = np.bincount(to[by_span], minlength=nb)
        rank = np.arange(len(by_span)) - (np.cumsum(count) - count)[to[by_span]]
        keep = by_span[rank < self.max_events]
        dropped = np.bincount(to[by_span[rank >= self.max_events]], minlength=nb)
        counts.dropped_events += int(dropped.sum())
        counts.span_events += len(keep)
        ve = v[keep]
        cols = SpanColumns(
            self.tps, key_session(self.sessions, session),
            {t: name.decode(errors="replace") for t, name in self.names.items()},
            trace, span_id, parent, ~root, r.id[b].astype(np.int64), end_id,
            r.tid[b].astype(np.int64), r.cpu[b].astype(np.int64), times[b].astype(np.int64),
            end_ns, r.args[b], end_args, dropped.astype(np.int64), to[keep],
            r.id[ve].astype(np.int64), r.cpu[ve].astype(np.int64),
            times[ve].astype(np.int64), r.args[ve])
        if len(closed):
            ended.append(cols.take(closed))
            counts.spans += len(closed)
        tps = self.tps.by_id
        for i, at in zip(e[~mine].tolist(), n.end_span[~mine].tolist(), strict=True):
            tid = int(r.tid[i])
            ended.append(self._close(stacks[tid][-1 - at].span, tps[int(r.id[i])],
                                     r.args[i].tolist(), int(times[i]), tid))
        carried_in = np.flatnonzero((to < 0) & (to != nesting.NONE))
        if len(carried_in):
            for j, event in zip(carried_in.tolist(), make_events(
                    self.tps, r.id[v[carried_in]], times[v[carried_in]], r.cpu[v[carried_in]],
                    r.args[v[carried_in]]), strict=True):
                span = stacks[int(r.tid[v[j]])][-1 - int(to[j])].span
                if len(span.events) >= self.max_events:
                    span.dropped_events += 1
                    counts.dropped_events += 1
                    continue
                span.events.append(event)
                counts.span_events += 1
        still = [j for refs in n.still_open.values() for j in refs if j >= 0]
        objects = dict(zip(still, cols.take(np.array(still, np.int64)).spans(), strict=True))
        for tid, refs in n.still_open.items():
            self.open[(session, tid)] = [
                stacks[tid][-1 - j] if j < 0 else OpenSpan(objects[j], objects[j].name)
                for j in refs]
