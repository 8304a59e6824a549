"""W3C Trace Context ``traceparent`` (https://www.w3.org/TR/trace-context/#traceparent-header):
``VERSION-TRACEID-PARENTID-FLAGS`` in lowercase hex, checked as the recommendation says.

A guest passes one with ``UNDEBUG_SPAN_BEGIN_CTX`` (a SPAN_CONTEXT record), the host with
``run --traceparent``. Either may be wrong: then the span is exported without that parent
and the reason is an attribute (``unikernel.traceparent.error``), never a failure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["TraceParent", "parse_traceparent"]

_FIELDS = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
MAX_LENGTH = 512


@dataclass(frozen=True)
class TraceParent:
    trace_id: bytes  # 16
    span_id: bytes  # 8, the parent's
    flags: int


def parse_traceparent(text: str) -> TraceParent | str:
    """The traceparent, or why it is not one."""
    if len(text) > MAX_LENGTH:
        return f"longer than {MAX_LENGTH} characters"
    match = _FIELDS.match(text)
    if match is None:
        return "not VERSION-TRACEID-PARENTID-FLAGS in lowercase hex (2-32-16-2 digits)"
    version, trace, parent, flags = match.groups()
    rest = text[match.end():]
    if version == "ff":
        return "version ff is invalid"
    if version == "00" and rest:
        return "version 00 has exactly four fields"
    if rest and not rest.startswith("-"):  # a later version may add fields after a dash
        return "not VERSION-TRACEID-PARENTID-FLAGS in lowercase hex (2-32-16-2 digits)"
    if set(trace) == {"0"}:
        return "the trace id is all zeros"
    if set(parent) == {"0"}:
        return "the parent id is all zeros"
    return TraceParent(bytes.fromhex(trace), bytes.fromhex(parent), int(flags, 16))
