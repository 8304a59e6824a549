"""OTLP/JSON files: one ``ExportTraceServiceRequest`` per line.

As the OTLP specification writes JSON (opentelemetry-proto's JSON encoding, which differs
from protobuf's canonical JSON): trace and span ids are lowercase hex, not base64; enums
are integers; 64-bit integers (times, int values) are decimal strings. A Collector's
``otlpjsonfile`` receiver and ``otel-cli`` read such files line by line.
"""

from __future__ import annotations

import json
from typing import IO, Any

from tracers.export.attributes import AttrValue
from tracers.export.spans import ExportSpan

__all__ = ["OtlpJsonWriter", "any_value", "encode_attributes", "encode_span"]

SPAN_KIND_INTERNAL = 1
STATUS_UNSET, STATUS_ERROR = 0, 2
SCOPE = {"name": "undebug", "version": "1"}


def any_value(value: AttrValue) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": value}


def encode_attributes(attrs: dict[str, AttrValue]) -> list[dict[str, Any]]:
    return [{"key": k, "value": any_value(v)} for k, v in attrs.items()]


def encode_span(span: ExportSpan) -> dict[str, Any]:
    out: dict[str, Any] = {
        "traceId": span.trace_id.hex(), "spanId": span.span_id.hex(),
        "name": span.name, "kind": SPAN_KIND_INTERNAL,
        "startTimeUnixNano": str(span.start_ns), "endTimeUnixNano": str(span.end_ns),
        "attributes": encode_attributes(span.attributes),
        "events": [{"timeUnixNano": str(e.time_ns), "name": e.name,
                    "attributes": encode_attributes(e.attributes)} for e in span.events],
        "status": {"code": STATUS_ERROR, "message": span.error} if span.error is not None
        else {"code": STATUS_UNSET},
    }
    if span.parent_id is not None:
        out["parentSpanId"] = span.parent_id.hex()
    if span.dropped_events:
        out["droppedEventsCount"] = span.dropped_events
    return out


class OtlpJsonWriter:
    """Writes spans as they come, ``per_line`` to a request (a line)."""

    def __init__(self, out: IO[str], resource: dict[str, AttrValue], per_line: int = 512) -> None:
        self.out = out
        self.per_line = per_line
        self.pending: list[ExportSpan] = []
        self.lines = 0
        # the resource's JSON is the same on every line: made once
        head = json.dumps({"attributes": encode_attributes(resource)})
        self._prefix = f'{{"resourceSpans":[{{"resource":{head},"scopeSpans":[{{"scope":' \
            f'{json.dumps(SCOPE)},"spans":['

    def write(self, spans: list[ExportSpan]) -> None:
        self.pending += spans
        while len(self.pending) >= self.per_line:
            self._line(self.pending[: self.per_line])
            del self.pending[: self.per_line]

    def _line(self, spans: list[ExportSpan]) -> None:
        body = ",".join(json.dumps(encode_span(s), separators=(",", ":")) for s in spans)
        self.out.write(self._prefix + body + "]}]}]}\n")
        self.lines += 1

    def close(self) -> None:
        if self.pending:
            self._line(self.pending)
            self.pending = []
        self.out.flush()
