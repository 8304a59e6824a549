"""OTLP/JSON files: one ``ExportTraceServiceRequest`` per line.

As the OTLP specification writes JSON (opentelemetry-proto's JSON encoding, which differs
from protobuf's canonical JSON): trace and span ids are lowercase hex, not base64; enums
are integers; 64-bit integers (times, int values) are decimal strings. A Collector's
``otlpjsonfile`` receiver and ``otel-cli`` read such files line by line.
"""

from __future__ import annotations

import json
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from tracers.export.attributes import AttributeJson, AttrValue
from tracers.export.columns import SpanColumns
from tracers.export.json_columns import TEXT_SPANS, in_parts, otlp_spans
from tracers.export.spans import ExportSpan

__all__ = ["OtlpJsonWriter", "SpanText", "any_value", "encode_attributes"]

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


class SpanText:
    """Spans as OTLP/JSON text, made with f-strings rather than dicts and ``json.dumps``."""

    def __init__(self) -> None:
        self.attributes = AttributeJson(
            lambda k, v: {"key": k, "value": any_value(v)},
            lambda k: f'{{"key":{json.dumps(k)},"value":{{"intValue":"', '"}}')

    def span(self, span: ExportSpan) -> str:
        attrs = self.attributes.text
        events = ",".join(f'{{"timeUnixNano":"{e.time_ns}","name":{json.dumps(e.name)},'
                          f'"attributes":[{attrs(e.attributes)}]}}' for e in span.events)
        status = f'{{"code":{STATUS_ERROR},"message":{json.dumps(span.error)}}}' \
            if span.error is not None else f'{{"code":{STATUS_UNSET}}}'
        parent = f',"parentSpanId":"{span.parent_id.hex()}"' if span.parent_id else ""
        dropped = f',"droppedEventsCount":{span.dropped_events}' if span.dropped_events else ""
        return (f'{{"traceId":"{span.trace_id.hex()}","spanId":"{span.span_id.hex()}"{parent},'
                f'"name":{json.dumps(span.name)},"kind":{SPAN_KIND_INTERNAL},'
                f'"startTimeUnixNano":"{span.start_ns}","endTimeUnixNano":"{span.end_ns}",'
                f'"attributes":[{attrs(span.attributes)}],"events":[{events}],'
                f'"status":{status}{dropped}}}')


class OtlpJsonWriter:
    """Writes spans as they come, ``per_line`` to a request (a line)."""

    def __init__(self, out: IO[bytes], resource: dict[str, AttrValue], per_line: int = 512,
                 text_spans: int = TEXT_SPANS) -> None:
        self.out = out
        self.per_line = per_line
        self.text_spans = text_spans
        self.lines = 0
        self.text = SpanText()
        self._parts: list[bytes] = []  # the next line's spans' text
        self._count = 0
        # the resource's JSON is the same on every line: made once
        head = json.dumps({"attributes": encode_attributes(resource)})
        self._prefix = (f'{{"resourceSpans":[{{"resource":{head},"scopeSpans":[{{"scope":'
                        f'{json.dumps(SCOPE)},"spans":[').encode()

    def write(self, spans: list[ExportSpan]) -> None:
        for span in spans:
            self._add([b"," + self.text.span(span).encode()])

    def write_columns(self, columns: SpanColumns) -> None:
        for part in in_parts(columns, size=self.text_spans):
            self._add_laid(otlp_spans(part).spans)

    def _add_laid(self, spans: npt.NDArray[np.object_]) -> None:
        """Spans' text, each after a comma, a line at a time."""
        at = 0
        while at < len(spans):
            take = min(self.per_line - self._count, len(spans) - at)
            self._add(spans[at:at + take].tolist())
            at += take

    def _add(self, spans: list[bytes]) -> None:
        """Spans' text, each after a comma."""
        self._parts += spans
        self._count += len(spans)
        if self._count >= self.per_line:
            self._line()

    def _line(self) -> None:
        self._parts[0] = self._parts[0][1:]
        self.out.write(b"".join([self._prefix, *self._parts, b"]}]}]}\n"]))
        self._parts, self._count = [], 0
        self.lines += 1

    def close(self) -> None:
        if self._count:
            self._line()
        self.out.flush()
