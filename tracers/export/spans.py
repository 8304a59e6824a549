"""Spans and span events for export, built from a recording batch by batch.

The exporters (OTLP, Jaeger JSON, ...) all take :class:`ExportSpan`\\ s: what the guest's
span begin/end records mean once matched per thread (FORMAT.md section 6), with the
parent a span had when it began, the tracepoints it saw as events, and the faults and
panics that hit it as exception events. Memory is bounded: only open spans are held
(at most ``max_depth`` per thread, ``max_events`` events each); a span leaves as soon as
it ends.

Identity is derived from the recording, never random (ids.py): a span id is a hash of
its begin record (the guest's boot TSC and build-id, then CPU, TSC, sequence number and
thread), so exporting the same recording twice (a retry) sends the same ids and a backend
de-duplicates instead of doubling. Each outermost span starts its own trace, whose id is
the same kind of hash.

Speed: a batch that nests cleanly is placed with numpy (nesting.py, nested_spans.py)
and, when its tracepoints have only unsigned arguments, kept as columns (columns.py)
that the encoders write with numpy; anything else is walked record by record here.
Both give the same spans (tests/test_export_columns.py).

Time: a record's wall clock is ``anchor + (tsc - header_tsc) / tsc_hz`` (FORMAT.md
section 9), where the anchor is the host's clock when the stream header arrived. Its
error is the header's transport latency (sub-millisecond on virtio-serial) plus the
guest's TSC calibration error times the time since the header (refguest calibrates
``tsc_khz`` against the PIT: tens of ppm, so tens of microseconds per second of
recording). A session without an anchor (a flight recorder) is exported at its time
since boot counted from the Unix epoch, and the exporter warns.
"""

from __future__ import annotations

import numpy as np

from tracers.export import nesting
from tracers.export.attributes import (
    INT64_MAX,
    LEVELS,
    AttrValue,
    code_attributes,
    plain_names,
    tracepoint_args,
    word_value,
)
from tracers.export.batch_rows import BatchRows, OpenSpan, derived_id, innermost_kept, key_session
from tracers.export.columns import SpanColumns
from tracers.export.ids import SPAN, TRACE
from tracers.export.nested_spans import NestedPath
from tracers.export.select import Selection
from tracers.export.spans_model import ExportCounts, ExportSpan, SpanEvent
from tracers.export.traceparent import TraceParent, parse_traceparent
from tracers.format import (
    ID_FAULT,
    ID_LOG_STR,
    ID_PANIC,
    ID_SPAN_CONTEXT,
    ID_THREAD_NAME,
    RESERVED_FIRST,
)
from tracers.metadata import (
    ARG_STRING,
    KIND_LOG,
    KIND_SPAN_BEGIN,
    KIND_SPAN_END,
    Tracepoint,
    Tracepoints,
)
from tracers.model import TraceModel
from tracers.records import Session

__all__ = ["VECTOR_NAMES", "ExportCounts", "ExportSpan", "SpanBuilder", "SpanEvent"]

VECTOR_NAMES = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
                8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF",
                17: "#AC", 18: "#MC", 19: "#XM"}


class SpanBuilder(NestedPath):
    """Feed it each batch's :class:`TraceModel` in stream order; it returns the spans that
    ended there. ``finish`` returns those still open, ended at their session's last
    record, marked unterminated."""

    def __init__(self, tracepoints: Tracepoints, *, max_events: int = 128,
                 max_depth: int = 256, traceparent: str | None = None,
                 select: Selection | None = None, fast: bool = True) -> None:
        self.tps = tracepoints
        self.fast = fast  # False: every batch walked record by record (to compare with)
        self.select = select
        # the host's (run --traceparent): the parent of every outermost span
        self.host_parent = None if traceparent is None else \
            (traceparent, parse_traceparent(traceparent))
        self.contexts: dict[tuple[int, int], str] = {}  # a thread's next span's, pending
        self.max_events, self.max_depth = max_events, max_depth
        self.counts = ExportCounts()
        self.names: dict[int, bytes] = {}
        # (session, tid) -> open spans, outermost first
        self.open: dict[tuple[int, int], list[OpenSpan]] = {}
        self.last_ns: dict[int, int] = {}  # session -> the newest time seen in it
        self.sessions: dict[int, Session] = {}
        self._session = -1
        self._plain: dict[int, tuple[str, ...]] = {}  # tracepoint -> its unsigned args' names
        self._codes: dict[int, dict[str, AttrValue]] = {}
        self._seen_unanchored: set[int] = set()
        self._fast_tables(tracepoints)

    # ---- feeding -------------------------------------------------------------------------

    def feed(self, model: TraceModel) -> list[ExportSpan]:
        """The spans that ended in this batch, as objects."""
        return [span for part in self.feed_parts(model) for span in
                (part.spans() if isinstance(part, SpanColumns) else [part])]

    def feed_parts(self, model: TraceModel) -> list[ExportSpan | SpanColumns]:
        """The spans that ended in this batch, in the order they ended but for columns,
        which come before the objects of the same part (a span in columns began in the
        batch, so it is the descendant of no object)."""
        r = model.records
        if len(r) == 0:
            return []
        for s in model.sessions:
            self.sessions[s.index] = s
        wall, known = model.wall_clock_ns()
        since_boot = model.ns_since_boot
        times = np.where(known, wall, since_boot)
        for s in np.unique(r.session[~known]).tolist():
            if s not in self._seen_unanchored:
                self._seen_unanchored.add(s)
                self.counts.unanchored_sessions.append(int(s))
        ended: list[ExportSpan | SpanColumns] = []
        order = model.order
        # what is not a tracepoint or one of these records carries nothing to export
        wanted = (r.id < RESERVED_FIRST) | np.isin(r.id, (ID_FAULT, ID_PANIC, ID_LOG_STR,
                                                          ID_THREAD_NAME, ID_SPAN_CONTEXT))
        rows = order[wanted[order]]
        cols = BatchRows(r, times, since_boot)
        sessions = r.session[rows]
        cuts = np.flatnonzero(sessions[1:] != sessions[:-1]) + 1
        for part in np.split(rows, cuts) if len(rows) else []:
            session = int(r.session[part[0]])
            if session != self._session:
                ended += self._leave_sessions(session)
            self.last_ns[session] = max(self.last_ns.get(session, 0),
                                        int(times[part].max()))
            # the records only the walk takes (thread names come first, faults last):
            # walked up to the last of them, the rest is the fast path's if it can
            other = np.flatnonzero(self._kinds[r.id[part]] == nesting.OTHER) \
                if self.fast else np.array([len(part) - 1])
            if len(other):
                self._walk(cols, part[: other[-1] + 1].tolist(), ended)  # type: ignore[arg-type]
                part = part[other[-1] + 1:]
            if len(part) and not self._nested(cols, part, ended):
                self._walk(cols, part.tolist(), ended)  # type: ignore[arg-type]
        return ended

    def _walk(self, c: BatchRows, rows: list[int], ended: list[ExportSpan]) -> None:
        tps = self.tps.by_id
        counts = self.counts
        ids, tids, sessions, times = c.id, c.tid, c.session, c.times
        for i in rows:
            ident = ids[i]
            key = (sessions[i], tids[i])
            tp = tps.get(ident)
            kind = tp.kind if tp is not None else 0
            if kind == KIND_SPAN_BEGIN:
                self._begin(c, i, key, tp)  # type: ignore[arg-type]
            elif kind == KIND_SPAN_END:
                self._end(c, i, key, tp, ended)  # type: ignore[arg-type]
            elif ident == ID_THREAD_NAME:
                self.names[c.args[i][0] & 0xFFFF] = c.text(i)
            elif ident == ID_SPAN_CONTEXT:
                self.contexts[key] = c.text(i).decode(errors="backslashreplace")
            elif ident in (ID_FAULT, ID_PANIC):
                self._exception(c, i, key, ended)
            else:
                span = innermost_kept(self.open.get(key))
                if span is None:
                    counts.outside_spans += 1
                    continue
                if len(span.events) >= self.max_events:
                    span.dropped_events += 1
                    counts.dropped_events += 1
                    continue
                span.events.append(self._event(c, i, ident, tp, times[i]))
                counts.span_events += 1

    def _event(self, c: BatchRows, i: int, ident: int, tp: Tracepoint | None, time_ns: int) \
            -> SpanEvent:
        words = c.args[i]
        cpu = c.cpu[i]
        if ident == ID_LOG_STR:
            level = words[0] if words else 0
            return SpanEvent("log", time_ns, {"log.level": LEVELS.get(level, str(level)),
                                              "log.message": c.text(i).decode(errors="replace"),
                                              "cpu.logical_number": cpu})
        if tp is None:
            self.counts.unknown_ids += 1
            attrs: dict[str, AttrValue] = {"unikernel.tracepoint.id": ident}
            attrs.update({f"a{k}": word_value(0, w, []) for k, w in enumerate(words)})
            return SpanEvent(f"tp#{ident}", time_ns, attrs)
        attrs = self._args(tp, words, c.text(i) if ARG_STRING in tp.arg_types else b"")
        attrs.update(self._code(tp))
        attrs["cpu.logical_number"] = cpu
        if tp.kind == KIND_LOG:
            attrs["log.level"] = LEVELS.get(tp.level, str(tp.level))
        return SpanEvent(tp.name, time_ns, attrs)

    def _args(self, tp: Tracepoint, words: list[int], text: bytes) -> dict[str, AttrValue]:
        """Arguments by name; unsigned ones (most) without a call per value."""
        plain = self._plain.get(tp.id)
        if plain is None:
            plain = self._plain[tp.id] = plain_names(tp) or ()
        if plain or not tp.nargs:
            return {k: v if v <= INT64_MAX else str(v)
                    for k, v in zip(plain, words, strict=False)}
        return tracepoint_args(tp, words, text)

    def _code(self, tp: Tracepoint) -> dict[str, AttrValue]:
        code = self._codes.get(tp.id)
        if code is None:
            code = self._codes[tp.id] = code_attributes(tp)
        return code

    def _begin(self, c: BatchRows, i: int, key: tuple[int, int], tp: Tracepoint) -> None:
        stack = self.open.setdefault(key, [])
        if len(stack) >= self.max_depth:
            self.counts.too_deep += 1
            return
        # the nearest selected ancestor is the parent
        parent = innermost_kept(stack)
        trace_id = (parent or stack[-1].span).trace_id if stack else None
        span = self._span(c, i, key, tp, parent, trace_id)
        kept = self.select is None or self.select.keeps(tp.name, c.since_boot[i])
        stack.append(OpenSpan(span, tp.name, kept))

    def _span(self, c: BatchRows, i: int, key: tuple[int, int], tp: Tracepoint,
              parent: ExportSpan | None, trace_id: bytes | None) -> ExportSpan:
        """The span record ``i`` begins. ``trace_id``: the trace of the spans it is inside
        (None: it is outermost), ``parent`` the one of them it is a child of."""
        session = self.sessions[key[0]]
        cpu, tsc, seq, time_ns = c.cpu[i], c.tsc[i], c.seq[i], c.times[i]
        span_id = derived_id(session, cpu, tsc, seq, key[1], 8, SPAN)
        attrs: dict[str, AttrValue] = {"thread.id": key[1], "cpu.logical_number": cpu,
                                       **self._code(tp)}
        # a traceparent: the guest's for this span, else the host's for an outermost one
        given = self.contexts.pop(key, None) if self.contexts else None
        context: tuple[str, TraceParent | str] | None = None
        if given is not None:
            context = (given, parse_traceparent(given))
            attrs["unikernel.traceparent.source"] = "guest"
        elif trace_id is None and self.host_parent is not None:
            context = self.host_parent
            attrs["unikernel.traceparent.source"] = "host"
        remote = False
        parent_id: bytes | None
        if context is not None and isinstance(context[1], TraceParent):
            trace_id, parent_id, root, remote = context[1].trace_id, context[1].span_id, \
                True, True
            self.counts.joined += 1
        elif trace_id is not None:
            parent_id, root = (parent.span_id, False) if parent else (None, True)
        else:
            trace_id = derived_id(session, cpu, tsc, seq, key[1], 16, TRACE)
            parent_id, root = None, True
            self.counts.traces += 1
        if context is not None and isinstance(context[1], str):
            attrs["unikernel.traceparent"] = context[0]
            attrs["unikernel.traceparent.error"] = context[1]
            self.counts.bad_traceparents += 1
        attrs.update({f"unikernel.args.{k}": v for k, v in
                      self._args(tp, c.args[i], b"").items()})
        if key_session(self.sessions, key[0]) is not None:
            attrs["unikernel.session"] = key[0]
        return ExportSpan(trace_id, span_id, parent_id, tp.name, time_ns, time_ns, attrs,
                          local_root=root, remote_parent=remote)

    def _end(self, c: BatchRows, i: int, key: tuple[int, int], tp: Tracepoint,
             ended: list[ExportSpan]) -> None:
        stack = self.open.get(key, [])
        at = next((k for k in range(len(stack) - 1, -1, -1) if stack[k].tp_name == tp.name),
                  None)
        if at is None:
            self.counts.unmatched_ends += 1
            return
        entry = stack.pop(at)
        if not entry.kept:
            self.counts.left_out += 1
            return
        ended.append(self._close(entry.span, tp, c.args[i], c.times[i], key[1]))

    def _close(self, span: ExportSpan, tp: Tracepoint, words: list[int], time_ns: int,
               tid: int) -> ExportSpan:
        span.end_ns = max(time_ns, span.start_ns)
        for k, v in self._args(tp, words, b"").items():
            if span.attributes.get(f"unikernel.args.{k}") != v:
                span.attributes[f"unikernel.end_args.{k}"] = v
        return self._done(span, tid)

    def _exception(self, c: BatchRows, i: int, key: tuple[int, int],
                   ended: list[ExportSpan]) -> None:
        """A fault or panic: an exception event with error status on the thread's
        innermost open span, or, with none open, a span of its own (so it is seen)."""
        self.counts.exceptions += 1
        words = [*c.args[i], 0, 0, 0, 0]
        time_ns, cpu = c.times[i], c.cpu[i]
        if c.id[i] == ID_FAULT:
            vector = words[0]
            kind = "fault"
            message = (f"{VECTOR_NAMES.get(vector, f'vector {vector}')} (vector {vector}) "
                       f"error {words[1]:#x} at rip {words[2]:#x}, address {words[3]:#x}")
        else:
            kind = "panic"
            message = c.text(i).decode(errors="replace")
        event = SpanEvent("exception", time_ns, {"exception.type": kind,
                                                 "exception.message": message,
                                                 "cpu.logical_number": cpu})
        target = innermost_kept(self.open.get(key))
        if target is not None:
            span = target
            span.events.append(event)  # past max_events too: an exception is never dropped
            span.error = message
            return
        session = self.sessions[key[0]]
        tsc, seq = c.tsc[i], c.seq[i]
        span = ExportSpan(derived_id(session, cpu, tsc, seq, key[1], 16, TRACE),
                          derived_id(session, cpu, tsc, seq, key[1], 8, SPAN), None,
                          kind, time_ns, time_ns,
                          {"thread.id": key[1], "cpu.logical_number": cpu}, [event], message)
        host = self.host_parent[1] if self.host_parent else None
        if isinstance(host, TraceParent):  # part of the host's trace, as the spans are
            span.trace_id, span.parent_id, span.remote_parent = host.trace_id, host.span_id, True
            self.counts.joined += 1
        else:
            self.counts.traces += 1
        ended.append(self._done(span, key[1]))

    def _done(self, span: ExportSpan, tid: int) -> ExportSpan:
        name = self.names.get(tid)
        if name is not None:
            span.attributes["thread.name"] = name.decode(errors="replace")
        self.counts.spans += 1
        return span

    # ---- the end -------------------------------------------------------------------------

    def _leave_sessions(self, session: int) -> list[ExportSpan]:
        """A new stream header: spans open in earlier sessions can no longer end (spans
        match within a session), so they leave now, unterminated."""
        self._session = session
        gone = [key for key in self.open if key[0] != session]
        return self._unterminated(gone)

    def finish(self) -> list[ExportSpan]:
        """The spans still open at the end of the recording, innermost first."""
        return self._unterminated(list(self.open))

    def _unterminated(self, keys: list[tuple[int, int]]) -> list[ExportSpan]:
        out: list[ExportSpan] = []
        for key in keys:
            for entry in reversed(self.open.pop(key)):
                if not entry.kept:
                    self.counts.left_out += 1
                    continue
                span = entry.span
                span.end_ns = max(self.last_ns.get(key[0], span.start_ns), span.start_ns)
                span.attributes["unikernel.span.unterminated"] = True
                if span.error is None:
                    span.error = "unterminated: the recording ends before this span does"
                self.counts.unterminated += 1
                out.append(self._done(span, key[1]))
        return out
