"""The supervisor's wire protocol: one JSON object per line over a unix socket.

Requests ``{"id": N, "op": "...", "args": {...}}`` get exactly one response
``{"id": N, "ok": true, "result": {...}}`` or ``{"id": N, "ok": false, "error":
{"code": "...", "message": "..."}}``. After ``subscribe``, the server also sends
``{"event": {...}}`` lines. docs/protocol.md is the reference.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_LINE", "PROTOCOL_VERSION", "ErrorCode", "ProtocolError", "decode", "encode"]

PROTOCOL_VERSION = 1
MAX_LINE = 64 << 20  # a memory read of 16 MiB is ~22 MiB of base64 JSON


class ErrorCode:
    """The ``error.code`` values a response can carry."""

    BAD_REQUEST = "bad-request"  # malformed JSON, unknown op, bad arguments
    GUEST_ENDED = "guest-ended"  # QEMU has exited; nothing to read or run
    GUEST_CRASHED = "guest-crashed"  # the guest panicked or reset: it cannot be resumed
    STUB = "stub"  # the gdbstub refused (e.g. unmapped memory) or went away
    UNSUPPORTED = "unsupported"  # not possible for this session (e.g. no QMP on attach)
    INTERNAL = "internal"


class ProtocolError(Exception):
    """A line that is not a protocol message."""


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a message must be a JSON object")
    return message
