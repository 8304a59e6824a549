"""OTLP protobuf requests built from span columns with numpy, for the http/protobuf path.

The SDK's encoder makes a protobuf message object per span, attribute and event from
``ReadableSpan``\\ s: it was most of the time of an export. Here the wire bytes of
``opentelemetry.proto.trace.v1.Span`` messages are laid out for a whole batch at once
(packing.py): the fields the SDK writes for the same span (trace and span ids, parent,
name, kind INTERNAL, times, attributes, events, an unset status, the flags saying the
parent's remoteness is known), field by field. The resource and scope are encoded once
with the official messages. tests/test_export_columns.py decodes these requests with
opentelemetry-proto and compares them with the SDK's encoding of the same spans.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from tracers.export import packing as pk
from tracers.export.attributes import AttrValue
from tracers.export.columns import Attr, SpanColumns, event_groups

if TYPE_CHECKING:
    from tracers.export.packing import Laid, Piece

__all__ = ["request", "resource_field", "span_messages"]

_FLAGS_HAS_IS_REMOTE = 0x100


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _varint(len(body)) + body


def _key_value(key: str, any_value: bytes) -> bytes:
    return _field(0x0A, key.encode()) + _field(0x12, any_value)


def _string_value(text: str) -> bytes:
    return _field(0x0A, text.encode())


def _attr(a: Attr, n: int, tag: int) -> list[Piece]:
    """One KeyValue field (``tag``: the attributes field of the message) per record."""
    if a.ints is not None:
        # the head (up to the value) depends on the value's size: one per size
        key = _field(0x0A, a.key.encode())
        heads = []
        for size in range(11):  # an int64 varint of `size` bytes
            value = b"\x18" + b"\0" * size
            heads.append(bytes([tag]) + _varint(len(key) + 2 + len(value)) + key + b"\x12"
                         + _varint(len(value)) + b"\x18")
        for digits in range(21):  # past int64: the decimal string
            value = _field(0x0A, b"0" * digits)
            heads.append(bytes([tag]) + _varint(len(key) + 2 + len(value)) + key + b"\x12"
                         + _varint(len(value)) + b"\x0a" + bytes([digits]))
        big = a.ints > np.uint64((1 << 63) - 1)
        number = pk.choose(big, pk.decimal(a.ints), pk.varint(a.ints))
        pieces = [pk.table(heads, np.where(big, 11 + number.length, number.length)), number]
    elif a.texts is not None:
        assert a.index is not None
        pieces = [pk.table([_field(tag, _key_value(a.key, _string_value(t))) for t in a.texts],
                           a.index)]
    else:
        pieces = [pk.const(_field(tag, _key_value(a.key, _string_value(a.text or ""))), n)]
    if a.present is not None:
        return [pk.present(p, a.present) for p in pieces]
    return pieces


def _attrs(attrs: list[Attr], n: int, tag: int) -> list[Piece]:
    return [p for a in attrs for p in _attr(a, n, tag)]


def _le64(values: np.ndarray) -> Piece:
    return pk.fixed(values.astype("<u8").view(np.uint8).reshape(len(values), 8))


def span_messages(c: SpanColumns) -> Laid:
    """Per span, the ``spans`` field (2) of a ScopeSpans: tag, length, Span message (its
    events last: protobuf takes fields in any order)."""
    n, k = len(c), len(c.ev_id)
    events, event_size = [], np.zeros(k, np.int64)
    for rows, tp, group in event_groups(c.tps, c.ev_id, c.ev_cpu, c.ev_args):
        m = len(rows)
        body = [pk.const(b"\x09", m), _le64(c.ev_time[rows]),
                pk.const(_field(0x12, tp.name.encode()), m), *_attrs(group, m, 0x1A)]
        length = pk.varint(pk.size(body))
        event_size[rows] = 1 + length.length + pk.size(body)
        events.append(pk.Group(rows, [pk.const(b"\x5a", m), length, *body]))
    in_span = np.bincount(c.ev_span, event_size, minlength=n).astype(np.int64)
    heads = []
    for rows, group in c.span_groups():
        m = len(rows)
        extra = Attr("unikernel.dropped_events", ints=c.dropped[rows].astype(np.uint64),
                     present=c.dropped[rows] > 0)  # as readable_span() gives it to the SDK
        name = c.tps.by_id[int(c.begin_id[rows[0]])].name
        has = c.has_parent[rows]
        body = [pk.const(b"\x0a\x10", m), pk.fixed(c.trace[rows]), pk.const(b"\x12\x08", m),
                pk.fixed(c.span[rows]), pk.present(pk.const(b"\x22\x08", m), has),
                pk.present(pk.fixed(c.parent[rows]), has),
                pk.const(_field(0x2A, name.encode()) + b"\x30\x01\x39", m),
                _le64(c.start_ns[rows]), pk.const(b"\x41", m), _le64(c.end_ns[rows]),
                *_attrs([*group, extra], m, 0x4A),
                pk.const(b"\x7a\x00\x85\x01" + _FLAGS_HAS_IS_REMOTE.to_bytes(4, "little"), m)]
        length = pk.varint(pk.size(body) + in_span[rows])
        heads.append(pk.Group(rows, [pk.const(b"\x12", m), length, *body]))
    return pk.spans_with_events(n, heads, events, c.ev_span)


def request(resource: bytes, spans: bytes) -> bytes:
    """An ExportTraceServiceRequest of one resource (:func:`resource_field`) and scope
    around ``spans`` (Span fields as :func:`span_messages` makes them, end to end)."""
    scope_spans = _SCOPE + spans
    resource_spans = resource + b"\x12" + _varint(len(scope_spans)) + scope_spans
    return b"\x0a" + _varint(len(resource_spans)) + resource_spans


_SCOPE = _field(0x0A, _field(0x0A, b"undebug") + _field(0x12, b"1"))


def resource_field(resource: dict[str, AttrValue]) -> bytes:
    """The resource field of a ResourceSpans, encoded with the official messages."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource

    pairs = []
    for k, v in resource.items():
        value = AnyValue(bool_value=v) if isinstance(v, bool) else \
            AnyValue(int_value=v) if isinstance(v, int) else \
            AnyValue(double_value=v) if isinstance(v, float) else AnyValue(string_value=v)
        pairs.append(KeyValue(key=k, value=value))
    return _field(0x0A, Resource(attributes=pairs).SerializeToString())
