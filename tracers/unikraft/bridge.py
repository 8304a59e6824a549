"""Unikraft's own tracepoint samples as undebug's Unikraft library streams them.

guest-stubs/unikraft/uk.c moves every sample of ``uk_trace_buffer`` into the stream as a
``uk_tracepoint`` record: the sample's cookie (the address of its TPde definition in the
debug ELF), Unikraft's time (ns; the library sets the stream's time 0 to Unikraft's clock
0), the payload size and the payload's first 24 bytes, packed as Unikraft writes them.
Here they get their definition's name and arguments back. The words are untrusted: an
unknown cookie leaves the record as it is; a payload longer than 24 bytes keeps the
arguments that fit, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tracers.metadata import ARG_SIGNED, Tracepoint, Tracepoints
from tracers.unikraft.metadata import UkTracepoints, load_unikraft

__all__ = ["BRIDGE_TRACEPOINT", "PAYLOAD_BYTES", "BridgedSample", "bridge_for", "decode_bridged"]

BRIDGE_TRACEPOINT = "uk_tracepoint"
PAYLOAD_BYTES = 24
_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class BridgedSample:
    """One sample: its definition, the argument words that arrived (strings as their
    ordinal in ``text``, NUL-separated, as tracers/unikraft/samples.py has them)."""

    tracepoint: Tracepoint
    words: list[int]
    text: bytes
    ns: int
    size: int

    @property
    def complete(self) -> bool:
        return len(self.words) == self.tracepoint.nargs


def decode_bridged(words: list[int], uk: UkTracepoints) -> BridgedSample | None:
    """The sample a ``uk_tracepoint`` record carries (cookie, ns, size, 3 payload words),
    or None when its cookie names no definition."""
    if len(words) < 6:
        return None
    cookie, ns, size = words[0], words[1], words[2]
    definition = uk.by_cookie.get(cookie)
    if definition is None:
        return None
    payload = b"".join((w & _MASK).to_bytes(8, "little") for w in words[3:6])
    have = min(size, PAYLOAD_BYTES)
    values: list[int] = []
    texts: list[bytes] = []
    at = 0
    kinds = definition.tracepoint.arg_types
    for i, (width, is_string) in enumerate(zip(definition.sizes, definition.strings,
                                               strict=True)):
        if is_string:
            length = payload[at] if at < have else 0
            if at >= have or at + 1 + length > have:
                break
            values.append(len(texts))
            texts.append(payload[at + 1 : at + 1 + length])
            at += 1 + length
            continue
        if not 0 < width <= 8 or at + width > have:
            break
        value = int.from_bytes(payload[at : at + width], "little")
        if i < len(kinds) and kinds[i] == ARG_SIGNED and value >> (8 * width - 1):
            value = (value - (1 << (8 * width))) & _MASK  # sign-extended, as a u64 word
        values.append(value)
        at += width
    return BridgedSample(definition.tracepoint, values, b"\0".join(texts), ns, size)


def bridge_for(tracepoints: Tracepoints | None) -> UkTracepoints | None:
    """Unikraft's definitions from the same debug ELF, when its stub has the bridge's
    tracepoint (else None: nothing to rename)."""
    from undebug.elf import ElfFile
    from undebug.errors import UndebugError

    if tracepoints is None or not tracepoints.source or \
            not tracepoints.ids_named(BRIDGE_TRACEPOINT):
        return None
    try:
        return load_unikraft(ElfFile(Path(tracepoints.source)))
    except UndebugError:
        return None
