"""The span builder's column path (tracers/export/nesting.py, columns.py) and the encoders
of columns (otlp_proto.py, json_columns.py) against the careful ways: the record-by-record
walk (``SpanBuilder(fast=False)``), the SDK's own protobuf encoder, and the object writers.

On a real reference-guest recording (QEMU, TCG) and on streams written by the test encoder
(a stand-in for the guest stub) that nest deep, overflow ``max_events`` and are cut into
batches at many places, so that spans are carried from batch to batch.
"""

from __future__ import annotations

import io
from pathlib import Path

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from tests.test_trace_decode import BOOT, Encoder
from tests.test_trace_export import recording  # noqa: F401 (a fixture)
from tracers.decode import StreamDecoder
from tracers.export import otlp_proto
from tracers.export.columns import SpanColumns
from tracers.export.jaeger_json import JaegerJsonWriter
from tracers.export.otlp import readable_span
from tracers.export.otlp_json import OtlpJsonWriter
from tracers.export.spans import ExportSpan, SpanBuilder
from tracers.metadata import (
    ARG_UNSIGNED,
    KIND_EVENT,
    KIND_SPAN_BEGIN,
    KIND_SPAN_END,
    Tracepoint,
    Tracepoints,
    load_tracepoints,
)
from tracers.model import TraceModel

RESOURCE = {"service.name": "refguest", "service.instance.id": "t", "n": 3}
U = ARG_UNSIGNED
OUTER_B, OUTER_E, INNER_B, INNER_E, TICK = range(5)
TPS = Tracepoints(
    build_id=bytes(range(20)).hex(), count=5,
    by_id={OUTER_B: Tracepoint(OUTER_B, KIND_SPAN_BEGIN, 1, 0, 10, (U,), "request", "",
                               ("req",), "m.c"),
           OUTER_E: Tracepoint(OUTER_E, KIND_SPAN_END, 1, 0, 20, (U,), "request", "",
                               ("req",), "m.c"),
           INNER_B: Tracepoint(INNER_B, KIND_SPAN_BEGIN, 0, 0, 12, (), "sum", "", (), "m.c"),
           INNER_E: Tracepoint(INNER_E, KIND_SPAN_END, 0, 0, 14, (), "sum", "", (), "m.c"),
           TICK: Tracepoint(TICK, KIND_EVENT, 2, 0, 30, (U, U), "tick", "", ("a", "b"),
                            "t.c")})


def build(batches: list[bytes], tps: Tracepoints, fast: bool, anchor: int | None = None,
          **kw: int) -> tuple[list[ExportSpan], SpanBuilder, list[SpanColumns]]:
    """Spans of a stream fed in these pieces; the columns the fast path made."""
    builder = SpanBuilder(tps, fast=fast, **kw)
    dec = StreamDecoder(tps.count)
    spans: list[ExportSpan] = []
    columns: list[SpanColumns] = []
    for data in [*batches, None]:
        decoded = dec.feed(data) if data is not None else dec.finish()
        anchors = {s.index: anchor for s in decoded.sessions} if anchor else {}
        for part in builder.feed_parts(TraceModel(decoded, tps, anchors)):
            if isinstance(part, SpanColumns):
                columns.append(part)
                spans += part.spans()
            else:
                spans.append(part)
    return sorted(spans + builder.finish(), key=lambda s: s.span_id), builder, columns


def nested_stream() -> bytes:
    """Two threads, requests with nested sums three deep, ticks everywhere (more than
    max_events in some spans), a value past int64, ends that differ from their begins."""
    enc = Encoder().header(header_tsc=BOOT)
    enc.tid = [7, 8]
    for req in range(6):
        for cpu in (0, 1):
            enc.event(OUTER_B, cpu, req)
            enc.event(TICK, cpu, req, (1 << 64) - 1 - req)
            for _ in range(3):
                enc.event(INNER_B, cpu)
                for k in range(req):
                    enc.event(TICK, cpu, k, 0)
            for _ in range(3):
                enc.event(INNER_E, cpu)
            enc.event(OUTER_E, cpu, req + (req % 2))  # every other end differs
            enc.event(TICK, cpu, 99, 99)  # outside any span
    enc.event(OUTER_B, 0, 77)  # never ended
    enc.event(TICK, 0, 1, 2)
    return enc.bytes()


def test_columns_give_the_walks_spans_however_the_stream_is_cut() -> None:
    data = nested_stream()
    walked, walker, _ = build([data], TPS, fast=False, max_events=3)
    whole, builder, columns = build([data], TPS, fast=True, max_events=3)
    assert columns and whole == walked and builder.counts == walker.counts
    assert walker.counts.dropped_events > 0 and walker.counts.unterminated == 1
    for cut in range(80, len(data), 48):
        parts, cut_builder, _ = build([data[:cut], data[cut:]], TPS, fast=True, max_events=3)
        assert parts == walked, cut
        assert cut_builder.counts == walker.counts, cut


def test_columns_of_a_real_recording_are_the_walks_spans(
        recording: tuple[Path, int, int], guest_image: Path) -> None:  # noqa: F811
    """Fed in the same pieces (where a batch ends decides how records of a thread that
    moved between CPUs are merged, for the walk too)."""
    path = recording[0]
    tps = load_tracepoints(guest_image)
    data = path.read_bytes()
    anchor = 1_800_000_000_000_000_000
    for size in (len(data), 1 << 16, 5000):
        pieces = [data[k:k + size] for k in range(0, len(data), size)]
        walked, walker, _ = build(pieces, tps, fast=False, anchor=anchor)
        assert walker.counts.spans > 100  # the guest's requests and checksums
        fast, builder, columns = build(pieces, tps, fast=True, anchor=anchor)
        assert sum(len(c) for c in columns) > walker.counts.spans // 2, size  # the fast path ran
        assert fast == walked, size
        assert builder.counts == walker.counts, size


def test_protobuf_requests_from_columns_decode_as_the_sdks_encoding_of_the_same_spans(
        recording: tuple[Path, int, int], guest_image: Path) -> None:  # noqa: F811
    tps = load_tracepoints(guest_image)
    _, _, columns = build([recording[0].read_bytes()], tps, fast=True, anchor=1)
    _, _, synthetic = build([nested_stream()], TPS, fast=True, max_events=3)
    resource, scope = Resource(RESOURCE), InstrumentationScope("undebug", "1")
    for c in columns + synthetic:
        body = otlp_proto.request(otlp_proto.resource_field(RESOURCE),
                                  otlp_proto.span_messages(c).text(0, len(c)))
        mine = ExportTraceServiceRequest()
        mine.ParseFromString(body)
        sdk = encode_spans([readable_span(s, resource, scope) for s in c.spans()])
        assert mine == sdk
        assert len(mine.resource_spans[0].scope_spans[0].spans) == len(c)


def test_json_from_columns_is_the_object_writers_text(
        recording: tuple[Path, int, int], guest_image: Path) -> None:  # noqa: F811
    tps = load_tracepoints(guest_image)
    _, _, columns = build([recording[0].read_bytes()], tps, fast=True, anchor=1)
    _, _, synthetic = build([nested_stream()], TPS, fast=True, max_events=3)
    for c in columns + synthetic:
        for writer in (OtlpJsonWriter, JaegerJsonWriter):
            made, expected = io.BytesIO(), io.BytesIO()
            a, b = writer(made, RESOURCE), writer(expected, RESOURCE)  # type: ignore[abstract]
            a.write_columns(c)
            b.write(c.spans())
            a.close()
            b.close()
            assert made.getvalue() == expected.getvalue(), writer


def test_json_of_a_stream_cut_into_batches_is_the_object_writers_text() -> None:
    """Spans carried from batch to batch: a Jaeger trace whose spans came in earlier
    batches (held) is written with them when its outermost span ends among columns."""
    data = nested_stream()
    for cut in range(80, len(data), 96):
        builder = SpanBuilder(TPS, max_events=3)
        dec = StreamDecoder(TPS.count)
        parts: list[ExportSpan | SpanColumns] = []
        for piece in (data[:cut], data[cut:], None):
            decoded = dec.feed(piece) if piece is not None else dec.finish()
            parts += builder.feed_parts(TraceModel(decoded, TPS, {}))
        rest = builder.finish()
        assert any(isinstance(p, SpanColumns) for p in parts), cut
        for writer in (OtlpJsonWriter, JaegerJsonWriter):
            made, expected = io.BytesIO(), io.BytesIO()
            a, b = writer(made, RESOURCE), writer(expected, RESOURCE)  # type: ignore[abstract]
            for part in parts:
                if isinstance(part, SpanColumns):
                    a.write_columns(part)
                    b.write(part.spans())
                else:
                    a.write([part])
                    b.write([part])
            a.write(rest)
            b.write(rest)
            a.close()
            b.close()
            assert made.getvalue() == expected.getvalue(), (writer, cut)
            assert made.getvalue().lower().count(b'"traceid"') > 12  # spans, not nothing


def test_json_made_and_written_a_few_spans_at_a_time_is_the_same_text() -> None:
    """The column writers make the text of at most ``text_spans`` spans at once, and Jaeger
    JSON's joins at most ``write_parts`` parts (span texts, commas, a trace's head and
    tail) for a write: cut anywhere, in a trace or between them, the file is the object
    writer's."""
    _, _, columns = build([nested_stream()], TPS, fast=True, max_events=3)
    assert max(len(c) for c in columns) > 7
    for spans, parts in ((1, 1), (2, 3), (3, 2), (7, 1024), (8192, 5)):
        for writer, options in ((OtlpJsonWriter, {}), (JaegerJsonWriter,
                                                       {"write_parts": parts})):
            made, expected = io.BytesIO(), io.BytesIO()
            a = writer(made, RESOURCE, text_spans=spans, **options)  # type: ignore[abstract]
            b = writer(expected, RESOURCE)  # type: ignore[abstract]
            for c in columns:
                a.write_columns(c)
                b.write(c.spans())
            a.close()
            b.close()
            assert made.getvalue() == expected.getvalue(), (writer, spans, parts)
            assert made.getvalue().lower().count(b'"traceid"') > 12  # spans, not nothing


def test_packing_lays_out_each_record_as_its_pieces_end_to_end() -> None:
    """packing.strings against the plain way (each record's bytes joined in Python), with
    few layouts (records grouped by their pieces' lengths) and with too many (the masks);
    and spans_with_events against joining a span's head, events and tail."""
    import numpy as np

    from tracers.export import packing as pk

    rng = np.random.default_rng(7)
    for n, wide in ((500, False), (3000, True)):
        # narrow: a few layouts; wide (1 to 20 digits): more than the layout way takes
        values = (np.uint64(10) ** rng.integers(0, 20, n).astype(np.uint64)
                  + rng.integers(0, 9, n).astype(np.uint64)) if wide \
            else rng.integers(0, 3, n, dtype=np.uint64)
        mask = rng.random(n) < 0.5
        ids = rng.integers(0, 256, (n, 4), dtype=np.uint8)
        words = [b"a", b"bcd", b""]
        index = rng.integers(0, 3, n)
        pieces = [pk.const(b"<", n), pk.decimal(values), pk.present(pk.hexed(ids), mask),
                  pk.table(words, index), pk.choose(mask, pk.decimal(values), pk.const(b"-", n)),
                  pk.const(b">", n)]
        expected = [b"<%d%s%s%s>" % (v, ids[i].tobytes().hex().encode() if mask[i] else b"",
                                     words[index[i]], b"%d" % v if mask[i] else b"-")
                    for i, v in enumerate(values.tolist())]
        assert pk.strings(pieces) == expected, n
        # one shape (two events a span: laid out whole), or all rare (joined from parts)
        spans = 40 if wide else n // 2
        event_span = np.sort(rng.integers(0, spans, n)) if wide else np.arange(n) // 2
        heads = [pk.Group(np.arange(spans), [pk.decimal(np.arange(spans)), pk.const(b":", spans)])]
        events = [pk.Group(np.arange(n), pieces)]
        tails = [pk.Group(np.arange(spans), [pk.const(b";", spans)])]
        laid = pk.spans_with_events(spans, heads, events, event_span, tails)
        assert laid.text(0, spans) == b"".join(
            b"%d:" % s + b"".join(e for e, at in zip(expected, event_span.tolist(), strict=True)
                                  if at == s) + b";" for s in range(spans)), n
    # two shapes of many spans each that a key without the number of events would merge:
    # spans of head group 1 with no event, of head group 0 with one
    heads = [pk.Group(np.arange(0, 128, 2), [pk.const(b"A", 64)]),
             pk.Group(np.arange(1, 128, 2), [pk.const(b"B", 64)])]
    events = [pk.Group(np.arange(64), [pk.decimal(np.arange(64))])]
    laid = pk.spans_with_events(128, heads, events, np.arange(0, 128, 2))
    assert laid.spans.tolist() == [b"A%d" % (s // 2) if s % 2 == 0 else b"B"
                                   for s in range(128)]
