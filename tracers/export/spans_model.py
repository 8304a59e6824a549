"""The spans every exporter takes, and the builder's counts: apart from the builder
(tracers/export/spans.py) so that its column path (columns.py) can make them too."""

from __future__ import annotations

from dataclasses import dataclass, field

from tracers.export.attributes import AttrValue

__all__ = ["ExportCounts", "ExportSpan", "SpanEvent"]


@dataclass(frozen=True)
class SpanEvent:
    """A tracepoint, log or exception inside a span."""

    name: str
    time_ns: int  # Unix ns
    attributes: dict[str, AttrValue]


@dataclass
class ExportSpan:
    """One span as every exporter sees it. ``error`` set: status ERROR with that
    description (else UNSET). ``local_root``: no parent in the recording (the trace's
    outermost span here; ``parent_id`` may still name a span elsewhere)."""

    trace_id: bytes  # 16
    span_id: bytes  # 8
    parent_id: bytes | None
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, AttrValue]
    events: list[SpanEvent] = field(default_factory=list)
    error: str | None = None
    dropped_events: int = 0
    local_root: bool = True
    remote_parent: bool = False  # parent_id is a traceparent's (another program's span)


@dataclass
class ExportCounts:
    """What the builder saw, for the summary: every number a user may ask 'where did my
    event go?' about."""

    spans: int = 0
    unterminated: int = 0
    span_events: int = 0  # tracepoints and logs exported inside spans
    dropped_events: int = 0  # beyond max_events of a span
    exceptions: int = 0  # faults and panics
    outside_spans: int = 0  # tracepoints on a thread with no open span: not exported
    unknown_ids: int = 0  # events whose id the ELF does not describe (exported by id)
    unmatched_ends: int = 0  # span-ends with no open span of their name
    too_deep: int = 0  # span-begins past max_depth on their thread: not exported
    left_out: int = 0  # spans --filter/--since/--until did not select
    traces: int = 0  # started here (outermost spans that joined no traceparent)
    joined: int = 0  # outermost spans made children of a traceparent (guest's or host's)
    bad_traceparents: int = 0  # malformed: those spans were exported without a parent
    unanchored_sessions: list[int] = field(default_factory=list)
