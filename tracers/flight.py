"""The flight recorder in guest memory (FORMAT.md section 5), read as a stream.

It exists apart from the file channel (tracers/channel.py) because its input is guest
memory, which the guest (or a wild pointer in it) controls: every ring descriptor is
checked against the ``undebug_trace_rings`` and ``undebug_trace_ring_data`` symbols (a
ring must lie inside the storage, rings must not overlap, counts must fit the array),
so at most the storage's size is ever read. A bad ring is reported and skipped.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tracers.format import HEADER_SIZE, MAGIC, SLOT, StreamHeader
from undebug.errors import UsageError

if TYPE_CHECKING:
    from undebug.elf import Symbol
    from undebug.target import Target

__all__ = ["HEADER_SYMBOL", "FlightRecording", "RingState", "read_flight_recorder"]

HEADER_SYMBOL = "undebug_trace_header"  # the stub's in-memory stream header

RING_SIZE = 128
RING_MAGIC = 0x474E5255  # "URNG"
_RING = struct.Struct("<IHBBQQQQQQQQQQQQH")


@dataclass(frozen=True)
class RingState:
    """One ring header as read (FORMAT.md section 5) and what was copied out of it."""

    index: int
    cpu: int
    mode: int  # 0 flight recorder, 1 streaming
    busy: bool
    size: int
    head: int
    tail: int
    seq: int
    lost_total: int
    overwritten: int
    written: int
    copied: int  # bytes of records taken from [tail, head)


@dataclass
class FlightRecording:
    """The in-memory header followed by every ring's records: a stream for ``decode``."""

    data: bytes
    header: StreamHeader
    rings: list[RingState]
    warnings: list[str] = field(default_factory=list)


def _symbol(target: Target, name: str) -> Symbol:
    symbol = target.elf.symbol(name)
    if symbol is None:
        raise UsageError(f"{target.elf.path} has no symbol {name}: the guest was not built "
                         "with the undebug tracing stub", hint="pass the guest's ELF with --elf")
    if symbol.size <= 0:
        raise UsageError(f"the symbol {name} in {target.elf.path} has no size: the rings "
                         "cannot be checked against it")
    return symbol


def _ring_bytes(target: Target, data: int, size: int, start: int, end: int) -> bytes:
    """Bytes at positions [start, end) of a ring (they may wrap around its end)."""
    at, length = start % size, end - start
    first = min(length, size - at)
    out = target.read(data + at, first)
    if first < length:
        out += target.read(data, length - first)
    return out


def read_flight_recorder(target: Target) -> FlightRecording:
    """Copy [tail, head) of every ring in use. For a running guest, head and tail are read
    again afterwards and what was overwritten meanwhile is dropped."""
    from undebug.target import ReadError

    header_at = _symbol(target, HEADER_SYMBOL).address + target.load_offset
    rings_sym = _symbol(target, "undebug_trace_rings")
    storage = _symbol(target, "undebug_trace_ring_data")
    rings_at = rings_sym.address + target.load_offset
    low = storage.address + target.load_offset
    high = low + storage.size
    try:
        raw = target.read(header_at, HEADER_SIZE)
    except ReadError as exc:
        raise UsageError(f"cannot read the trace header: {exc.message}") from None
    if int.from_bytes(raw[:8], "little") != MAGIC:
        raise UsageError("the guest's tracing stub is not initialised (no UDBTRACE magic at "
                         "undebug_trace_header)", hint="let the guest run past its trace init")
    header = StreamHeader.parse(raw)
    if isinstance(header, str):
        raise UsageError(f"the trace header in guest memory is invalid: {header}")
    warnings: list[str] = []
    rings: list[RingState] = []
    taken: list[tuple[int, int]] = []  # storage ranges of the rings accepted so far
    chunks = [raw[: header.header_size] if header.header_size == HEADER_SIZE else
              raw + bytes(header.header_size - HEADER_SIZE)]
    count = min(header.ring_count, rings_sym.size // RING_SIZE)
    if header.ring_count > count:
        warnings.append(f"the trace header claims {header.ring_count} rings; "
                        f"undebug_trace_rings holds {count}: reading {count}")
    for i in range(count):
        try:
            fields = _RING.unpack_from(target.read(rings_at + i * RING_SIZE, RING_SIZE))
        except ReadError as exc:
            warnings.append(f"ring {i}: unreadable header ({exc.message})")
            continue
        (magic, cpu, mode, busy, data, size, head, tail, _ctail, _spos, seq, lost_total,
         overwritten, _pending, _first, written, _tid) = fields
        if magic != RING_MAGIC:
            continue
        if size < SLOT or size & (size - 1):
            warnings.append(f"ring {i}: bad size {size}, skipped")
            continue
        if not low <= data <= high - size:
            warnings.append(f"ring {i}: its storage {data:#x}+{size:#x} is outside "
                            f"undebug_trace_ring_data ({low:#x}+{storage.size:#x}), skipped")
            continue
        if any(data < end and start < data + size for start, end in taken):
            warnings.append(f"ring {i}: its storage {data:#x}+{size:#x} overlaps another "
                            "ring's, skipped")
            continue
        taken.append((data, data + size))
        if tail > head or head - tail > size or tail % SLOT or head % SLOT:
            warnings.append(f"ring {i}: inconsistent positions tail={tail} head={head}; "
                            "reading the newest bytes and resynchronising")
            head -= head % SLOT
            tail = head - size if head >= size else 0
        try:
            copy = _ring_bytes(target, data, size, tail, head)
            again = _RING.unpack_from(target.read(rings_at + i * RING_SIZE, RING_SIZE))
        except ReadError as exc:
            warnings.append(f"ring {i}: unreadable data ({exc.message})")
            continue
        new_tail = again[7]
        if new_tail > tail:  # the guest ran and overwrote the oldest records meanwhile
            lost = min(new_tail - tail, len(copy))
            warnings.append(f"ring {i}: {lost} bytes were overwritten while being read")
            copy = copy[lost:]
        chunks.append(copy)
        rings.append(RingState(i, cpu, mode, bool(busy), size, head, tail, seq, lost_total,
                               overwritten, written, len(copy)))
    return FlightRecording(b"".join(chunks), header, rings, warnings)
