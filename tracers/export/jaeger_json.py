"""Jaeger JSON files: ``{"data": [{"traceID", "spans", "processes"}, ...]}``, the format
of Jaeger's ``/api/traces`` that its UI opens without a backend (Search → Upload).

A trace is written when its outermost span ends (spans leave the builder as they end, so
its descendants came first); memory holds the open traces only, and a trace holding more
than ``max_held`` spans is written in parts (entries with the same traceID, which the UI
merges).
"""

from __future__ import annotations

import json
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from tracers.export import packing as pk
from tracers.export.attributes import AttributeJson, AttrValue
from tracers.export.columns import SpanColumns
from tracers.export.json_columns import TEXT_SPANS, in_parts, jaeger_spans
from tracers.export.spans import ExportSpan

__all__ = ["JaegerJsonWriter", "jaeger_tags"]

PROCESS = "p1"
WRITE_PARTS = 1024
"""Parts (a span's text, a comma, a trace's head or tail) joined for one write: ~0.7 MiB,
a buffer malloc takes back and gives again, where a batch's whole text (~45 MiB, past
its mmap threshold) was mapped and faulted in afresh for every batch."""


def _tag(k: str, v: AttrValue) -> dict[str, Any]:
    kind = "bool" if isinstance(v, bool) else "int64" if isinstance(v, int) \
        else "float64" if isinstance(v, float) else "string"
    return {"key": k, "type": kind, "value": v}


def jaeger_tags(attrs: dict[str, AttrValue]) -> list[dict[str, Any]]:
    return [_tag(k, v) for k, v in attrs.items()]


def _us(ns: int) -> int:
    return ns // 1000


class _SpanText:
    """A span as Jaeger JSON text, made with f-strings rather than dicts."""

    def __init__(self) -> None:
        self.tags = AttributeJson(_tag, lambda k: f'{{"key":{json.dumps(k)},"type":"int64",'
                                  '"value":', "}")

    def span(self, span: ExportSpan) -> str:
        tags = self.tags.text
        attrs = span.attributes
        if span.error is not None:
            attrs = {**attrs, "error": True, "otel.status_code": "ERROR",
                     "otel.status_description": span.error}
        trace = span.trace_id.hex()
        refs = "" if span.parent_id is None else \
            f'{{"refType":"CHILD_OF","traceID":"{trace}","spanID":"{span.parent_id.hex()}"}}'
        logs = ",".join(f'{{"timestamp":{_us(e.time_ns)},"fields":['
                        f'{tags({"event": e.name, **e.attributes})}]}}' for e in span.events)
        return (f'{{"traceID":"{trace}","spanID":"{span.span_id.hex()}","flags":1,'
                f'"operationName":{json.dumps(span.name)},"references":[{refs}],'
                f'"startTime":{_us(span.start_ns)},'
                f'"duration":{_us(span.end_ns) - _us(span.start_ns)},"tags":[{tags(attrs)}],'
                f'"logs":[{logs}],"processID":"{PROCESS}","warnings":null}}')


class JaegerJsonWriter:
    def __init__(self, out: IO[bytes], resource: dict[str, AttrValue],
                 max_held: int = 10_000, write_parts: int = WRITE_PARTS,
                 text_spans: int = TEXT_SPANS) -> None:
        self.out = out
        self.max_held = max_held
        self.write_parts = write_parts
        self.text_spans = text_spans
        service = str(resource.get("service.name", "unikernel"))
        tags = {k: v for k, v in resource.items() if k != "service.name"}
        processes = json.dumps({PROCESS: {"serviceName": service,
                                          "tags": jaeger_tags(tags)}}).encode()
        self._tail = b'],"processes":' + processes + b"}\n"  # a trace's entry's end
        self.held: dict[bytes, list[bytes]] = {}  # trace id -> its spans' text
        self.text = _SpanText()
        self.count = 0
        self.traces = 0  # entries written
        out.write(b'{"data":[')

    def write(self, spans: list[ExportSpan]) -> None:
        for span in spans:
            self._hold(span.trace_id, self.text.span(span).encode(), span.local_root)

    def write_columns(self, columns: SpanColumns) -> None:
        """As :meth:`write` would, a trace at a time rather than a span: a trace whose
        outermost span is among the columns is written whole, in the order of its spans
        (none of them is held: a span in columns began in their batch, and so did all
        its descendants); the spans of the others are held."""
        n = len(columns)
        if not n:
            return
        words = columns.trace.view(">u8").reshape(n, 2)
        order = np.lexsort((words[:, 1], words[:, 0]))
        new = np.ones(n, np.bool_)
        new[1:] = (words[order[1:]] != words[order[:-1]]).any(axis=1)
        trace = np.empty(n, np.int64)
        trace[order] = np.cumsum(new) - 1
        roots = np.flatnonzero(~columns.has_parent)
        root_of = np.full(int(trace.max()) + 1, -1, np.int64)
        root_of[trace[roots]] = roots
        mine = root_of[trace]
        held = np.flatnonzero(mine < 0)  # in a trace that ends later
        for part in in_parts(columns, held, self.text_spans):
            for trace_id, text in zip(part.trace, jaeger_spans(part).spans.tolist(),
                                      strict=True):
                self._hold(trace_id.tobytes(), text, False)
        rows = np.flatnonzero(mine >= 0)
        if not len(rows):
            return
        rows = rows[np.argsort(mine[rows] * (n + 1) + rows, kind="stable")]
        first = np.ones(len(rows), np.bool_)
        first[1:] = mine[rows[1:]] != mine[rows[:-1]]
        last = np.append(first[1:], True)
        for lo, part in zip(range(0, len(rows), self.text_spans),
                            in_parts(columns, rows, self.text_spans), strict=True):
            self._traces(part, first[lo:lo + len(part)], last[lo:lo + len(part)])

    def _traces(self, part: SpanColumns, first: npt.NDArray[np.bool_],
                last: npt.NDArray[np.bool_]) -> None:
        """Spans of whole traces in order (``first``/``last``: a trace's first or last
        span), their trace's head before the first and its tail after the last."""
        heads = np.array(pk.strings([pk.const(b',{"traceID":"', int(first.sum())),
                                     pk.hexed(part.trace[first]),
                                     pk.const(b'","spans":[', int(first.sum()))]), object)
        if not self.traces and len(heads):
            heads[0] = heads[0][1:]
        k = len(part)
        parts = np.empty(2 * k + int(last.sum()), object)
        at = np.arange(k) * 2 + np.cumsum(last) - last
        parts[at] = b","
        parts[at[first]] = heads
        parts[at + 1] = jaeger_spans(part).spans
        parts[at[last] + 2] = self._tail
        pieces = parts.tolist()
        for at_part in range(0, len(pieces), self.write_parts):
            self.out.write(b"".join(pieces[at_part:at_part + self.write_parts]))
        self.traces += len(heads)

    def _hold(self, trace_id: bytes, text: bytes, root: bool) -> None:
        self.held.setdefault(trace_id, []).append(text)
        self.count += 1
        if root:
            self._trace(trace_id)
        elif self.count > self.max_held:
            self._trace(max(self.held, key=lambda t: len(self.held[t])))

    def _trace(self, trace_id: bytes) -> None:
        spans = self.held.pop(trace_id)
        self.count -= len(spans)
        self.out.write(b"".join([b"," if self.traces else b"", b'{"traceID":"',
                                 trace_id.hex().encode(), b'","spans":[', b",".join(spans),
                                 self._tail]))
        self.traces += 1

    def close(self) -> None:
        for trace_id in list(self.held):
            self._trace(trace_id)
        self.out.write(b"]}\n")
        self.out.flush()
