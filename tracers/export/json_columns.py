"""OTLP/JSON and Jaeger JSON text of span columns, made with numpy (packing.py).

The same text, byte for byte, as the writers make from objects (otlp_json.SpanText,
jaeger_json's span text: tests/test_export_columns.py compares them); what differs per
format is only how an attribute is spelled.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from tracers.export import packing as pk
from tracers.export.attributes import AttrValue
from tracers.export.columns import Attr, SpanColumns, event_groups
from tracers.export.packing import Laid, Piece

__all__ = ["TEXT_SPANS", "in_parts", "jaeger_spans", "otlp_spans"]

TEXT_SPANS = 16384
"""Spans whose text is made at once (a batch holds up to ~32 k): their strings (~16-24
MiB) and piece matrices are what a writer holds, so fewer fresh pages are faulted in per
batch, for the same bytes (a span's text is its own). Half a batch costs no more CPU than
a whole one (40 ms a batch either way, measured); a quarter costs ~20% more."""
_INT64_MAX = np.uint64((1 << 63) - 1)
_dumps = json.dumps


def in_parts(c: SpanColumns, rows: npt.NDArray[np.int64] | None = None,
             size: int = TEXT_SPANS) -> Iterator[SpanColumns]:
    """The spans ``rows`` (default all, in order) as columns of at most ``size`` spans."""
    if rows is None:
        if len(c) <= size:
            yield c
            return
        rows = np.arange(len(c), dtype=np.int64)
    for lo in range(0, len(rows), size):
        yield c.take(rows[lo:lo + size])


def _item(key: str, value: AttrValue, jaeger: bool) -> bytes:
    if jaeger:
        kind = "int64" if isinstance(value, int) else "string"
        return _dumps({"key": key, "type": kind, "value": value}, separators=(",", ":")).encode()
    inner = {"intValue": str(value)} if isinstance(value, int) else {"stringValue": value}
    return _dumps({"key": key, "value": inner}, separators=(",", ":")).encode()


def _attr(a: Attr, n: int, jaeger: bool, first: bool = False) -> list[Piece]:
    """One attribute's JSON item per record, after a comma unless ``first``."""
    comma = "" if first else ","
    if a.ints is not None:
        key = _dumps(a.key)
        if jaeger:
            ints = (f'{comma}{{"key":{key},"type":"int64","value":', "}")
            strs = (f'{comma}{{"key":{key},"type":"string","value":"', '"}')
        else:
            ints = (f'{comma}{{"key":{key},"value":{{"intValue":"', '"}}')
            strs = (f'{comma}{{"key":{key},"value":{{"stringValue":"', '"}}')
        big = a.ints > _INT64_MAX
        pieces = [pk.choose(big, _const(strs[0], n), _const(ints[0], n)), pk.decimal(a.ints),
                  pk.choose(big, _const(strs[1], n), _const(ints[1], n))]
    elif a.texts is not None:
        assert a.index is not None
        pieces = [pk.table([comma.encode() + _item(a.key, t, jaeger) for t in a.texts], a.index)]
    else:
        pieces = [pk.const(comma.encode() + _item(a.key, a.text or "", jaeger), n)]
    if a.present is not None:
        assert not first, "the first attribute is always there"
        return [pk.present(p, a.present) for p in pieces]
    return pieces


def _items(attrs: list[Attr], n: int, jaeger: bool, first: bool = True) -> list[Piece]:
    return [p for k, a in enumerate(attrs) for p in _attr(a, n, jaeger, first and k == 0)]


def _const(text: str, n: int) -> Piece:
    return pk.const(text.encode(), n)


def _u64(values: np.ndarray) -> Piece:
    return pk.decimal(values.astype(np.uint64))


def _events(c: SpanColumns, jaeger: bool) -> list[pk.Group]:
    """Each event's item, after a comma unless it is its span's first."""
    later = pk.event_rank(c.ev_span, len(c)) > 0
    out = []
    for rows, tp, group in event_groups(c.tps, c.ev_id, c.ev_cpu, c.ev_args):
        m = len(rows)
        lead = pk.present(_const(",", m), later[rows])
        if jaeger:
            name = _item("event", tp.name, True).decode()
            pieces = [lead, _const('{"timestamp":', m), _u64(c.ev_time[rows] // 1000),
                      _const(f',"fields":[{name}', m), *_items(group, m, True, first=False),
                      _const("]}", m)]
        else:
            pieces = [lead, _const('{"timeUnixNano":"', m), _u64(c.ev_time[rows]),
                      _const(f'","name":{_dumps(tp.name)},"attributes":[', m),
                      *_items(group, m, False), _const("]}", m)]
        out.append(pk.Group(rows, pieces))
    return out


def otlp_spans(c: SpanColumns) -> Laid:
    """Per span, a comma and its OTLP/JSON object (as otlp_json.SpanText writes it)."""
    heads, tails = [], []
    for rows, group in c.span_groups():
        m = len(rows)
        has, dropped = c.has_parent[rows], c.dropped[rows]
        name = _dumps(c.tps.by_id[int(c.begin_id[rows[0]])].name)
        heads.append(pk.Group(rows, [
            _const(',{"traceId":"', m), pk.hexed(c.trace[rows]), _const('","spanId":"', m),
            pk.hexed(c.span[rows]), _const('"', m),
            pk.present(_const(',"parentSpanId":"', m), has),
            pk.present(pk.hexed(c.parent[rows]), has), pk.present(_const('"', m), has),
            _const(f',"name":{name},"kind":1,"startTimeUnixNano":"', m), _u64(c.start_ns[rows]),
            _const('","endTimeUnixNano":"', m), _u64(c.end_ns[rows]),
            _const('","attributes":[', m), *_items(group, m, False),
            _const('],"events":[', m)]))
        tails.append(pk.Group(rows, [
            _const('],"status":{"code":0}', m),
            pk.present(_const(',"droppedEventsCount":', m), dropped > 0),
            pk.present(_u64(dropped), dropped > 0), _const("}", m)]))
    return pk.spans_with_events(len(c), heads, _events(c, False), c.ev_span, tails)


def jaeger_spans(c: SpanColumns) -> Laid:
    """Per span, its Jaeger JSON object (as jaeger_json's span text writes it)."""
    heads = []
    for rows, group in c.span_groups():
        m = len(rows)
        has = c.has_parent[rows]
        name = _dumps(c.tps.by_id[int(c.begin_id[rows[0]])].name)
        trace = pk.hexed(c.trace[rows])
        start_us = c.start_ns[rows] // 1000
        heads.append(pk.Group(rows, [
            _const('{"traceID":"', m), trace, _const('","spanID":"', m),
            pk.hexed(c.span[rows]),
            _const(f'","flags":1,"operationName":{name},"references":[', m),
            pk.present(_const('{"refType":"CHILD_OF","traceID":"', m), has),
            pk.present(trace, has), pk.present(_const('","spanID":"', m), has),
            pk.present(pk.hexed(c.parent[rows]), has), pk.present(_const('"}', m), has),
            _const('],"startTime":', m), _u64(start_us), _const(',"duration":', m),
            _u64(c.end_ns[rows] // 1000 - start_us), _const(',"tags":[', m),
            *_items(group, m, True), _const('],"logs":[', m)]))
    tails = [pk.Group(g.rows, [_const(_TAIL, len(g.rows))]) for g in heads]
    return pk.spans_with_events(len(c), heads, _events(c, True), c.ev_span, tails)


_TAIL = '],"processID":"p1","warnings":null}'
