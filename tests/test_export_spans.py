"""Spans for export (tracers/export/spans.py) on streams written by the test encoder (a
stand-in for the guest stub): parents by nesting, events inside spans, exceptions,
unterminated spans, deterministic ids, and the same result however the stream is cut
into batches. The real guest's recordings are exported in test_trace_export.py."""

from __future__ import annotations

from pathlib import Path

from tests.test_trace_decode import BOOT, HZ, Encoder
from tracers.decode import ID_FAULT, ID_PANIC, StreamDecoder, decode
from tracers.export.select import Selection
from tracers.export.spans import ExportSpan, SpanBuilder
from tracers.export.traceparent import TraceParent, parse_traceparent
from tracers.format import ID_SPAN_CONTEXT
from tracers.metadata import KIND_EVENT, KIND_SPAN_BEGIN, KIND_SPAN_END, Tracepoint, Tracepoints
from tracers.model import TraceModel

OUTER_B, OUTER_E, INNER_B, INNER_E, TICK = range(5)
TPS = Tracepoints(
    build_id=bytes(range(20)).hex(), count=5,
    by_id={OUTER_B: Tracepoint(OUTER_B, KIND_SPAN_BEGIN, 1, 0, 10, (1,), "request", "",
                               ("req",), "m.c"),
           OUTER_E: Tracepoint(OUTER_E, KIND_SPAN_END, 1, 0, 20, (1,), "request", "",
                               ("req",), "m.c"),
           INNER_B: Tracepoint(INNER_B, KIND_SPAN_BEGIN, 0, 0, 12, (), "sum", "", (), "m.c"),
           INNER_E: Tracepoint(INNER_E, KIND_SPAN_END, 0, 0, 14, (), "sum", "", (), "m.c"),
           TICK: Tracepoint(TICK, KIND_EVENT, 2, 0, 30, (1, 2), "tick", "", ("a", "b"), "t.c")})
ANCHOR = 1_800_000_000_000_000_000


def export(data: bytes, *, cut: int | None = None, traceparent: str | None = None,
           select: Selection | None = None, **kw: int) -> tuple[list[ExportSpan],
                                                                 SpanBuilder]:
    """All spans of ``data``, fed whole or in two batches cut at byte ``cut``."""
    builder = SpanBuilder(TPS, traceparent=traceparent, select=select, **kw)
    spans: list[ExportSpan] = []
    if cut is None:
        spans += builder.feed(TraceModel(decode(data, tracepoint_count=5), TPS, {0: ANCHOR}))
    else:
        dec = StreamDecoder(5)
        for part in (data[:cut], data[cut:]):
            spans += builder.feed(TraceModel(dec.feed(part), TPS, {0: ANCHOR}))
        spans += builder.feed(TraceModel(dec.finish(), TPS, {0: ANCHOR}))
    return spans + builder.finish(), builder


def two_requests() -> Encoder:
    enc = Encoder().header(header_tsc=BOOT)
    enc.tid = [7, 8]
    enc.thread_name(0, 7, b"worker-0")
    enc.event(OUTER_B, 0, 41)
    enc.event(TICK, 0, 5, (1 << 64) - 3)   # inside the request: an event of it
    enc.event(INNER_B, 0)
    enc.event(TICK, 0, 6, 1)               # inside sum: sum's event, not the request's
    enc.event(INNER_E, 0)
    enc.event(OUTER_E, 0, 41)
    enc.event(TICK, 1, 9, 9)               # tid 8 has no span open: not exported
    enc.event(OUTER_B, 1, 42)              # never ended
    return enc


def test_nesting_gives_parents_and_each_outermost_span_its_own_trace() -> None:
    spans, builder = export(two_requests().bytes())
    by_name = {s.name: s for s in spans if s.attributes["thread.id"] == 7}
    request, inner = by_name["request"], by_name["sum"]
    assert request.parent_id is None and request.local_root
    assert inner.parent_id == request.span_id and inner.trace_id == request.trace_id
    [other] = [s for s in spans if s.attributes["thread.id"] == 8]
    assert other.trace_id != request.trace_id and other.parent_id is None
    assert builder.counts.traces == 2 and builder.counts.outside_spans == 1
    # the times: TSC 300 ticks apart at 3 GHz = 100 ns, from the anchor at header_tsc
    assert request.start_ns == ANCHOR + (100 + 2 * 300) // 3
    assert inner.start_ns - request.start_ns == 200 and request.end_ns - inner.end_ns == 100
    assert request.attributes["unikernel.args.req"] == 41
    assert request.attributes["thread.name"] == "worker-0"
    assert (request.attributes["code.file.path"], request.attributes["code.line.number"]) \
        == ("m.c", 10)


def test_tracepoints_inside_a_span_are_events_of_the_innermost() -> None:
    spans, builder = export(two_requests().bytes())
    by_name = {s.name: s for s in spans if s.attributes["thread.id"] == 7}
    [ev] = by_name["request"].events
    assert ev.name == "tick" and ev.attributes["a"] == 5 and ev.attributes["b"] == -3
    assert ev.attributes["code.file.path"] == "t.c"
    assert [e.attributes["a"] for e in by_name["sum"].events] == [6]
    assert builder.counts.span_events == 2


def test_a_span_never_ended_is_exported_unterminated_at_the_last_record() -> None:
    spans, builder = export(two_requests().bytes())
    [other] = [s for s in spans if s.attributes["thread.id"] == 8]
    assert other.attributes["unikernel.span.unterminated"] is True
    assert other.error is not None and "unterminated" in other.error
    assert other.end_ns == other.start_ns  # it is the stream's last record
    assert builder.counts.unterminated == 1
    assert all("unikernel.span.unterminated" not in s.attributes for s in spans if s is not other)


def test_ids_are_the_same_on_every_export_and_however_the_stream_is_cut() -> None:
    data = two_requests().bytes()
    whole, _ = export(data)
    ids = sorted((s.trace_id, s.span_id, s.parent_id or b"") for s in whole)
    for cut in range(80, len(data), 16):
        parts, _ = export(data, cut=cut)
        assert sorted((s.trace_id, s.span_id, s.parent_id or b"") for s in parts) == ids, cut
    assert len({s.span_id for s in whole}) == len(whole)
    # another boot (its boot TSC) gives other ids for the same records
    again = Encoder(boot=BOOT + 1).header(header_tsc=BOOT)
    again.tid = [7, 8]
    again.event(OUTER_B, 0, 41)
    again.event(OUTER_E, 0, 41)
    [span], _ = export(again.bytes())
    assert span.span_id not in {s.span_id for s in whole}


def test_faults_and_panics_are_exception_events_with_error_status() -> None:
    enc = Encoder().header(header_tsc=BOOT)
    enc.tid = [7, 8]
    enc.event(OUTER_B, 0, 1)
    enc.record(ID_FAULT, 0, [14, 2, 0x100274, 0])
    msg = b"null pointer dereference (cr2=0x0)"
    enc.record(ID_PANIC, 0, [len(msg), 0], msg)
    enc.record(ID_PANIC, 1, [4, 0], b"boom")  # tid 8: no span open, a span of its own
    spans, builder = export(enc.bytes())
    [request] = [s for s in spans if s.name == "request"]
    assert [e.attributes["exception.type"] for e in request.events] == ["fault", "panic"]
    assert "#PF" in str(request.events[0].attributes["exception.message"])
    assert "rip 0x100274" in str(request.events[0].attributes["exception.message"])
    assert request.events[1].attributes["exception.message"] == msg.decode()
    assert request.error == msg.decode()  # the last word on it
    [alone] = [s for s in spans if s.name == "panic"]
    assert alone.error == "boom" and alone.attributes["thread.id"] == 8 and alone.local_root
    assert builder.counts.exceptions == 3


def test_limits_bound_memory_and_are_counted() -> None:
    enc = Encoder().header(header_tsc=BOOT)
    enc.tid = [7, 8]
    enc.event(OUTER_B, 0, 1)
    for i in range(10):
        enc.event(TICK, 0, i, 0)
    for _ in range(5):  # 1 + 5 begins on one thread, 3 allowed
        enc.event(INNER_B, 0)
    spans, builder = export(enc.bytes(), max_events=4, max_depth=3)
    request = next(s for s in spans if s.name == "request")
    assert len(request.events) == 4 and request.dropped_events == 6
    assert builder.counts.too_deep == 3 and len(spans) == 3
    assert builder.counts.dropped_events == 6


def test_a_new_session_ends_the_spans_of_the_one_before() -> None:
    enc = Encoder().header(header_tsc=BOOT)
    enc.tid = [7, 8]
    enc.event(OUTER_B, 0, 1)
    enc.header(header_tsc=enc.tsc)  # the guest reconnected: spans match within a session
    enc.event(OUTER_E, 0, 1)
    dec = StreamDecoder(5)
    builder = SpanBuilder(TPS)
    model = TraceModel(dec.feed(enc.bytes()), TPS)
    spans = builder.feed(model)
    assert [s.attributes.get("unikernel.span.unterminated") for s in spans] == [True]
    assert builder.counts.unmatched_ends == 1
    assert spans[0].start_ns == (100 + 300) // 3  # no anchor: since boot, from the epoch
    assert builder.counts.unanchored_sessions == [0, 1]


TP_GUEST = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TP_HOST = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_traceparents_are_checked_as_w3c_trace_context_says() -> None:
    ok = parse_traceparent(TP_HOST)
    assert isinstance(ok, TraceParent)
    assert ok.trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert (ok.span_id.hex(), ok.flags) == ("00f067aa0ba902b7", 1)
    later = parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what")
    assert isinstance(later, TraceParent)  # a later version may add fields
    bad = {TP_HOST.upper(): "lowercase hex", "ff" + TP_HOST[2:]: "version ff",
           TP_HOST + "-01": "exactly four fields", "00-" + "0" * 32 + TP_HOST[35:]: "trace id",
           TP_HOST[:36] + "0" * 16 + "-01": "parent id", "": "lowercase hex",
           TP_HOST[:-1]: "lowercase hex", "x" * 600: "longer than"}
    for text, why in bad.items():
        reason = parse_traceparent(text)
        assert isinstance(reason, str) and why in reason, (text, reason)


def requests_with_context(context: bytes | None) -> Encoder:
    enc = Encoder().header(header_tsc=BOOT)
    enc.tid = [7, 8]
    if context is not None:
        enc.record(ID_SPAN_CONTEXT, 0, [0, len(context)], context)
    enc.event(OUTER_B, 0, 1)
    enc.event(INNER_B, 0)
    enc.event(INNER_E, 0)
    enc.event(OUTER_E, 0, 1)
    enc.event(OUTER_B, 1, 2)  # another thread, no context of its own
    enc.event(OUTER_E, 1, 2)
    return enc


def test_a_guest_traceparent_makes_its_span_a_child_in_that_trace() -> None:
    spans, builder = export(requests_with_context(TP_GUEST.encode()).bytes())
    mine = [s for s in spans if s.attributes["thread.id"] == 7]
    outer = next(s for s in mine if s.name == "request")
    inner = next(s for s in mine if s.name == "sum")
    assert outer.trace_id.hex() == TP_GUEST[3:35] and outer.parent_id.hex() == TP_GUEST[36:52]
    assert outer.remote_parent and outer.attributes["unikernel.traceparent.source"] == "guest"
    assert inner.trace_id == outer.trace_id and inner.parent_id == outer.span_id
    [other] = [s for s in spans if s.attributes["thread.id"] == 8]
    assert other.parent_id is None and other.trace_id != outer.trace_id  # only its thread's
    assert (builder.counts.joined, builder.counts.traces) == (1, 1)


def test_the_host_traceparent_parents_every_outermost_span_the_guest_gave_none() -> None:
    spans, builder = export(requests_with_context(TP_GUEST.encode()).bytes(),
                            traceparent=TP_HOST)
    by = {(s.attributes["thread.id"], s.name): s for s in spans}
    assert by[(7, "request")].trace_id.hex() == TP_GUEST[3:35]  # the guest's wins
    host = by[(8, "request")]
    assert host.trace_id.hex() == TP_HOST[3:35] and host.parent_id.hex() == TP_HOST[36:52]
    assert host.attributes["unikernel.traceparent.source"] == "host"
    assert by[(7, "sum")].parent_id == by[(7, "request")].span_id  # children stay children
    assert builder.counts.joined == 2


def test_a_malformed_traceparent_leaves_the_span_without_a_parent_and_says_why() -> None:
    spans, builder = export(requests_with_context(b"00-NOT-A-TRACEPARENT\x1b").bytes(),
                            traceparent="ff" + TP_HOST[2:])
    by = {(s.attributes["thread.id"], s.name): s for s in spans}
    guest, host = by[(7, "request")], by[(8, "request")]
    assert guest.parent_id is None and host.parent_id is None
    assert guest.attributes["unikernel.traceparent"] == "00-NOT-A-TRACEPARENT\x1b"
    assert "lowercase hex" in str(guest.attributes["unikernel.traceparent.error"])
    assert "version ff" in str(host.attributes["unikernel.traceparent.error"])
    assert (builder.counts.bad_traceparents, builder.counts.joined) == (2, 0)


def test_guest_text_in_names_and_arguments_still_makes_valid_json() -> None:
    import io
    import json

    from tracers.export.jaeger_json import JaegerJsonWriter
    from tracers.export.otlp_json import OtlpJsonWriter

    enc = Encoder().header(header_tsc=BOOT)
    enc.tid = [7, 8]
    hostile = b'w"\\\x1b]0;x\x07\xff\xfe'
    enc.thread_name(0, 7, hostile)
    enc.event(OUTER_B, 0, (1 << 64) - 1)  # past int64: a string, not a wrapped int
    msg = b'p"\n\xc3'
    enc.record(ID_PANIC, 0, [len(msg), 0], msg)
    spans, _ = export(enc.bytes())
    otlp, jaeger = io.BytesIO(), io.BytesIO()
    for writer in (OtlpJsonWriter(otlp, {"service.name": 'a"b'}),
                   JaegerJsonWriter(jaeger, {"service.name": 'a"b'})):
        writer.write(spans)
        writer.close()
    [line] = otlp.getvalue().decode().splitlines()
    span = json.loads(line)["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    values = {a["key"]: a["value"] for a in span["attributes"]}
    assert values["thread.name"] == {"stringValue": hostile.decode(errors="replace")}
    assert values["unikernel.args.req"] == {"stringValue": str((1 << 64) - 1)}
    assert span["status"]["message"] == msg.decode(errors="replace")
    doc = json.loads(jaeger.getvalue())
    assert doc["data"][0]["processes"]["p1"]["serviceName"] == 'a"b'


def test_a_selection_keeps_the_nesting_of_what_it_keeps() -> None:
    enc = Encoder().header(header_tsc=BOOT)
    enc.tid = [7, 8]
    enc.event(OUTER_B, 0, 1)   # t = 400 ticks after boot
    enc.event(INNER_B, 0)
    enc.event(TICK, 0, 3, 0)   # an event of sum
    enc.event(INNER_E, 0)
    enc.event(OUTER_E, 0, 1)
    enc.event(OUTER_B, 0, 2)   # a later request: 1900 ticks
    enc.event(OUTER_E, 0, 2)
    # only sum: it has no selected ancestor, so it is the outermost of its trace
    [inner], builder = export(enc.bytes(), select=Selection.of(["s*"], None, None))
    assert inner.name == "sum" and inner.parent_id is None and inner.local_root
    assert builder.counts.left_out == 2
    whole, _ = export(enc.bytes())
    first = next(s for s in whole if s.name == "request")
    assert inner.trace_id == first.trace_id  # still in its request's trace
    # only requests: sum is left out and its event goes to its request
    kept, _ = export(enc.bytes(), select=Selection.of(["request"], None, None))
    assert [s.name for s in kept] == ["request", "request"]
    assert [e.attributes["a"] for e in kept[0].events] == [3]
    # by time since boot: the second request only (begins at 1900 ticks / 3 GHz)
    late, _ = export(enc.bytes(), select=Selection.of(None, 1900 / HZ - 1e-9, None))
    assert [s.attributes["unikernel.args.req"] for s in late] == [2]
    early, _ = export(enc.bytes(), select=Selection.of(None, None, 1000 / HZ))
    assert sorted(s.name for s in early) == ["request", "sum"]


def test_the_resource_names_a_unikernel_os_without_an_os_type_none_of_its_values_fit(
        tmp_path: Path) -> None:
    """os.type's values are a closed list (linux, windows, darwin, the BSDs, ...): the OS
    provider's name goes to unikernel.os.type, a readable one to os.name; an origin
    (a real file) without it gives neither."""
    from tracers.export.resource import resource_attributes
    from tracers.origin import note_os, read_origin, write_origin

    for provider, readable in (("unikraft", "Unikraft"), ("nanos", "Nanos"),
                               ("refguest", "undebug reference guest")):
        attrs = resource_attributes(image="web", instance="i", sessions=[], os_name=provider,
                                    environ={})
        assert attrs["os.name"] == readable and attrs["unikernel.os.type"] == provider
        assert "os.type" not in attrs
    attrs = resource_attributes(image="web", instance="i", sessions=[], environ={})
    assert not {"os.name", "os.type", "unikernel.os.type"} & set(attrs)
    rec = tmp_path / "r.utrace"
    write_origin(rec, elf=None, image=None, session="s")
    assert read_origin(rec).os_name is None  # type: ignore[union-attr]
    assert note_os(rec, "nanos")
    origin = read_origin(rec)
    assert origin is not None and origin.os_name == "nanos" and origin.session == "s"
    assert (tmp_path / "r.utrace.origin").stat().st_mode & 0o777 == 0o600
    assert not note_os(tmp_path / "none.utrace", "nanos")  # no origin to add it to
