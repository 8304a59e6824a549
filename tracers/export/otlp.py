"""OTLP export with the official libraries: opentelemetry-sdk ``ReadableSpan``\\ s sent by
the ``OTLPSpanExporter`` of opentelemetry-exporter-otlp-proto-http (http/protobuf) or
opentelemetry-exporter-otlp-proto-grpc (grpc).

Recorded spans have past times, so no tracer or span processor is involved: each
:class:`~tracers.export.spans.ExportSpan` becomes a ``ReadableSpan`` with its own start
and end, and ``export()`` is called here a chunk at a time. Spans that come as columns
(the builder's fast path) are encoded here instead (otlp_proto.py: the SDK's encoder was
most of an export's time) and posted by the exporter's own HTTP client, with its retries,
compression and headers; the tests check those requests against the SDK's encoding. (The SDK's
``BatchSpanProcessor`` drops whatever exceeds its 2048-span queue with only a log line;
a recording holds far more.) A chunk that fails is sent again with backoff until the
time budget runs out; the exporter itself also retries what OTLP calls retryable (429,
502-504, connection errors) within each call. Once the budget is spent nothing more is
sent, but every later span is still counted, so the summary says exactly how many were
not delivered. Span ids come from the recording (spans.py), so spans sent twice (a retry
of a request the collector did take) are the same spans, not new ones.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from tracers.export import otlp_proto
from tracers.export.attributes import AttrValue
from tracers.export.columns import SpanColumns
from tracers.export.spans import ExportSpan

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

__all__ = ["PROTOCOLS", "OtlpDelivery", "OtlpWriter", "readable_span", "traces_url"]

PROTOCOLS = ("http/protobuf", "grpc")

LIVE_QUEUE = 16  # --follow: requests waiting to be sent; past it a request is dropped
LIVE_FLUSH_S = 1.0  # --follow: spans wait at most about this long for a full request
DEFAULT_CHUNK = 2048  # spans a request made by the SDK from objects (~0.5 MB)
REQUEST_BYTES = 2 << 20  # a request encoded here from columns: at most about this big
# (a collector takes 4 MiB by default; the HTTP client costs ms a request, so fewer, bigger)
SEND_AHEAD = 2  # requests encoded while one is being sent (not live: none dropped)
PER_REQUEST_S = 10.0  # the SDK's own default per request


def traces_url(url: str) -> str:
    """``url`` with ``/v1/traces`` added when it has no path (the Python exporter posts to
    an endpoint exactly as given; the other SDKs add the path to a base URL)."""
    parts = urllib.parse.urlsplit(url)
    if parts.path in ("", "/"):
        return urllib.parse.urlunsplit(parts._replace(path="/v1/traces"))
    return url


def readable_span(span: ExportSpan, resource: Resource, scope: InstrumentationScope) \
        -> ReadableSpan:
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    trace_id = int.from_bytes(span.trace_id, "big")
    flags = TraceFlags(TraceFlags.SAMPLED)
    context = SpanContext(trace_id, int.from_bytes(span.span_id, "big"), False, flags)
    parent = None if span.parent_id is None else \
        SpanContext(trace_id, int.from_bytes(span.parent_id, "big"), span.remote_parent, flags)
    attributes: dict[str, AttrValue] = dict(span.attributes)
    if span.dropped_events:
        attributes["unikernel.dropped_events"] = span.dropped_events
    return ReadableSpan(
        name=span.name, context=context, parent=parent, resource=resource,
        attributes=attributes,
        events=[Event(e.name, e.attributes, e.time_ns, limit=None) for e in span.events],
        kind=SpanKind.INTERNAL,
        status=Status(StatusCode.ERROR, span.error) if span.error is not None else Status(),
        start_time=span.start_ns, end_time=span.end_ns, instrumentation_scope=scope)


class _Collect(logging.Handler):
    """The exporter's log records (it logs why a request failed): kept for the summary
    instead of printed in the middle of ours."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.retries = 0  # the exporter's own, inside one export() call

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("Transient error"):
            self.retries += 1
        self.messages = [*self.messages[-9:], record.getMessage()]


@dataclass
class OtlpDelivery:
    """What reached the collector: counts of spans, and of export() calls made."""

    endpoint: str
    exported: int = 0
    not_exported: int = 0
    attempts: int = 0  # export() calls
    retries: int = 0  # requests sent again: by this loop, and by the exporter itself
    gave_up: bool = False
    last_error: str | None = None
    errors: list[str] = field(default_factory=list)
    dropped: int = 0  # --follow: spans of requests the full send queue could not take


class OtlpWriter:
    """A span writer (as the file writers) that sends chunks of ``chunk`` spans (from
    columns: of about ``request_bytes``) over OTLP/HTTP with the official
    ``OTLPSpanExporter``, within ``timeout_s`` in all (endpoint None: the
    OTEL_EXPORTER_OTLP_* variables, as the SDK reads them).

    Requests are sent by a thread of their own, so the next one is encoded while one is
    on the wire (the HTTP client waits with the GIL released): live, through a bounded
    queue whose overflow is dropped and counted; from a recording, at most SEND_AHEAD
    ahead, waiting for room, so nothing is dropped."""

    def __init__(self, resource: dict[str, AttrValue], *, endpoint: str | None,
                 headers: dict[str, str], timeout_s: float, protocol: str = "http/protobuf",
                 insecure: bool | None = None, chunk: int = DEFAULT_CHUNK,
                 request_bytes: int = REQUEST_BYTES, live: bool = False,
                 progress: Callable[[OtlpDelivery], None] | None = None) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.resource = Resource(resource)
        self.scope = InstrumentationScope("undebug", "1")
        self.chunk = chunk
        self.request_bytes = request_bytes
        self.deadline = time.monotonic() + timeout_s
        self._log = _Collect()
        logging.getLogger("opentelemetry.exporter").addHandler(self._log)
        logging.getLogger("opentelemetry.exporter").propagate = False
        per_request = max(min(PER_REQUEST_S, timeout_s), 0.1)
        self.exporter: SpanExporter
        if protocol == "grpc":  # a gRPC endpoint has no path: host:port is what counts
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )

            self.exporter = GrpcExporter(endpoint=endpoint or None, insecure=insecure,
                                         headers=headers, timeout=per_request)
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            self.exporter = OTLPSpanExporter(
                endpoint=traces_url(endpoint) if endpoint else None, headers=headers,
                timeout=per_request)
        self.delivery = OtlpDelivery(str(getattr(self.exporter, "_endpoint", endpoint)))
        self.pending: list[ExportSpan] = []
        # columns go out as requests encoded here (otlp_proto.py) through the exporter's
        # own HTTP client (its retries, compression, headers); without one (gRPC, another
        # SDK version), as objects through export()
        self._client = getattr(self.exporter, "_client", None) if protocol != "grpc" else None
        self._resource_field = otlp_proto.resource_field(resource)
        self._encoded: list[bytes] = []
        self._encoded_count = self._encoded_bytes = 0
        # live (--follow): a slow collector never holds up reading the guest's stream;
        # each request has the whole time budget
        self.live = live
        self.timeout_s = timeout_s
        self.progress = progress  # live: told the counts after each request and drop
        self._since: float | None = None  # when the oldest pending span came
        self._queue: queue.Queue[tuple[Callable[[], bool], int] | None] = \
            queue.Queue(LIVE_QUEUE if live else SEND_AHEAD)
        self._sender = threading.Thread(target=self._drain, name="otlp-sender", daemon=True)
        self._sender.start()

    def write(self, spans: list[ExportSpan]) -> None:
        self.pending += spans
        while len(self.pending) >= self.chunk:
            self._send_spans(self.pending[: self.chunk])
            del self.pending[: self.chunk]
        self._flush_if_old()

    def write_columns(self, columns: SpanColumns) -> None:
        if self._client is None:
            self.write(columns.spans())
            return
        self._encode(columns)
        self._flush_if_old()

    def _flush_if_old(self) -> None:
        """Live: what has waited LIVE_FLUSH_S goes out without filling a request."""
        if not self.live:
            return
        if not self.pending and not self._encoded_count:
            self._since = None
        elif self._since is None:
            self._since = time.monotonic()
        elif time.monotonic() - self._since >= LIVE_FLUSH_S:
            self._flush()
            self._since = None

    def _flush(self) -> None:
        if self.pending:
            self._send_spans(self.pending)
            self.pending = []
        if self._encoded_count:
            self._send_encoded()

    def _encode(self, columns: SpanColumns) -> None:
        spans = otlp_proto.span_messages(columns).spans
        ends = np.cumsum(np.fromiter(map(len, spans), np.int64, len(spans)))
        at = 0
        while at < len(spans):
            base = int(ends[at - 1]) if at else 0
            fit = int(np.searchsorted(ends, base + self.request_bytes - self._encoded_bytes,
                                      side="right")) - at
            take = min(fit, len(spans) - at)
            if take <= 0 and self._encoded_count:  # full: out with what it has
                self._send_encoded()
                continue
            take = max(take, 1)  # a span bigger than a request goes alone
            self._encoded += spans[at:at + take].tolist()
            self._encoded_count += take
            self._encoded_bytes += int(ends[at + take - 1]) - base
            at += take
            if self._encoded_bytes >= self.request_bytes or at < len(spans):
                self._send_encoded()

    def _send_encoded(self) -> None:
        body = otlp_proto.request(self._resource_field, b"".join(self._encoded))
        count, self._encoded, self._encoded_count, self._encoded_bytes = \
            self._encoded_count, [], 0, 0
        client = self._client
        self._submit(lambda: bool(client.export(body).success), count)  # type: ignore[union-attr]

    def _send_spans(self, spans: list[ExportSpan]) -> None:
        from opentelemetry.sdk.trace.export import SpanExportResult

        batch = [readable_span(s, self.resource, self.scope) for s in spans]
        self._submit(lambda: self.exporter.export(batch) == SpanExportResult.SUCCESS,
                     len(spans))

    def _submit(self, attempt: Callable[[], bool], count: int) -> None:
        if not self.live:
            self._queue.put((attempt, count))  # waits while SEND_AHEAD are
            return
        try:
            self._queue.put_nowait((attempt, count))
        except queue.Full:
            self.delivery.dropped += count
            if self.progress is not None:
                self.progress(self.delivery)

    def _drain(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.live:  # each request has the whole budget; one given up stops no other
                self.deadline = time.monotonic() + self.timeout_s
                self.delivery.gave_up = False
            try:
                self._send(*item)
            except Exception as exc:  # counted, and the thread goes on: the writer waits on it
                self.delivery.not_exported += item[1]
                self.delivery.last_error = f"{type(exc).__name__}: {exc}"
            if self.progress is not None:
                self.progress(self.delivery)

    def _send(self, attempt: Callable[[], bool], count: int) -> None:
        d = self.delivery
        if d.gave_up:
            d.not_exported += count
            return
        backoff = 0.25
        while True:
            d.attempts += 1
            if attempt():
                d.exported += count
                return
            d.last_error = self._log.messages[-1] if self._log.messages else "export failed"
            if time.monotonic() + backoff >= self.deadline:
                d.gave_up = True
                d.not_exported += count
                return
            time.sleep(backoff)
            backoff = min(backoff * 2, 4.0)
            d.retries += 1

    def close(self) -> None:
        self._flush()
        self._queue.put(None)  # (blocks while the queue is full: the sender drains it)
        self._sender.join()
        if self.live:
            self.delivery.gave_up = self.delivery.not_exported > 0
        self.exporter.shutdown()
        logging.getLogger("opentelemetry.exporter").removeHandler(self._log)
        self.delivery.errors = list(self._log.messages)
        self.delivery.retries += self._log.retries
