"""Where trace bytes come from: a recorded file (read as it grows), a live guest's
recording, or the flight recorder in guest memory (FORMAT.md section 5).

A live guest's supervisor appends the virtio-serial stream to ``trace.utrace`` in the
session directory as it arrives, so following a guest is following that file. The
flight recorder is read through a :class:`~undebug.target.Target` and returned as a
stream (the in-memory header followed by each ring's records) for the same decoder.
"""

from __future__ import annotations

import bisect
import json
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tracers.format import HEADER_SIZE, MAGIC, SLOT, StreamHeader
from tracers.records import Session
from undebug.errors import UsageError

if TYPE_CHECKING:
    from undebug.session.store import SessionDir
    from undebug.target import Target

__all__ = ["FileChannel", "FlightRecording", "RingState", "guest_channel", "read_anchors",
           "read_flight_recorder"]

RING_SIZE = 128
RING_MAGIC = 0x474E5255  # "URNG"
_RING = struct.Struct("<IHBBQQQQQQQQQQQQH")
MAX_RING_BYTES = 1 << 30


class FileChannel:
    """A trace file read from the start, as it grows. ``read()`` returns b"" at the
    current end; ``finished()`` says whether more can come (a live guest's recording
    ends with its guest; a plain file can always grow, so only Ctrl-C ends a follow).

    Bytes read after the channel first caught up with the end arrived while we watched:
    their host receive time is kept, which anchors the wall clock of a stream header
    among them (``received_at``)."""

    def __init__(self, path: Path, session: SessionDir | None = None) -> None:
        self.path = path
        self.session = session
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        self.offset = 0
        self._caught_up = False
        self._chunks: list[tuple[int, int, int]] = []  # (start, end, wall ns) read live

    def read(self, size: int = 1 << 20) -> bytes:
        data = os.read(self._fd, size)
        if not data:
            self._caught_up = True
        elif self._caught_up:
            self._chunks.append((self.offset, self.offset + len(data), time.time_ns()))
        self.offset += len(data)
        return data

    def received_at(self, offset: int) -> int | None:
        """Wall clock (ns) when the byte at ``offset`` arrived, if it arrived live."""
        at = bisect.bisect_right(self._chunks, (offset, 1 << 62, 0)) - 1
        if at >= 0 and self._chunks[at][0] <= offset < self._chunks[at][1]:
            return self._chunks[at][2]
        return None

    def finished(self) -> bool:
        """True once nothing more can be appended (the guest's supervisor is gone)."""
        return self.session is not None and not self.session.is_alive()

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> FileChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def guest_channel(name: str) -> FileChannel:
    """The recording of a live (or ended) guest's trace stream."""
    from undebug.session.store import SessionDir

    session = SessionDir.named(name)
    session.read_record()  # "no guest named ..." when there is none
    path = session.path / "trace.utrace"
    if not path.exists():
        raise UsageError(f"guest {name!r} has no trace stream",
                         hint="it was started without the trace port (--no-trace) or attached; "
                         "try: undebug trace show --flight-recorder " + name)
    return FileChannel(path, session)


# ---- the flight recorder ---------------------------------------------------------------

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


def _symbol(target: Target, name: str) -> int:
    address = target.address_of(name)
    if address is None:
        raise UsageError(f"{target.elf.path} has no symbol {name}: the guest was not built "
                         "with the undebug tracing stub", hint="pass the guest's ELF with --elf")
    return address


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

    header_at = _symbol(target, "undebug_trace_header")
    rings_at = _symbol(target, "undebug_trace_rings")
    _symbol(target, "undebug_trace_ring_data")
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
    chunks = [raw[: header.header_size] if header.header_size == HEADER_SIZE else
              raw + bytes(header.header_size - HEADER_SIZE)]
    count = min(header.ring_count, 256)
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
        if size < SLOT or size & (size - 1) or size > MAX_RING_BYTES:
            warnings.append(f"ring {i}: bad size {size}, skipped")
            continue
        if tail > head or head - tail > size or tail % SLOT or head % SLOT:
            warnings.append(f"ring {i}: inconsistent positions tail={tail} head={head}; "
                            "reading the newest bytes and resynchronising")
            tail = max(head - size, 0) if head >= size else 0
            head = max(head, tail)
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


def read_anchors(path: Path, sessions: list[Session]) -> tuple[dict[int, int], list[str]]:
    """Session index -> host Unix ns its header arrived, from ``PATH.anchors``
    (FORMAT.md section 9). A missing file means no wall clock; bad lines are warnings."""
    anchors: dict[int, int] = {}
    warnings: list[str] = []
    by_offset = {s.offset: s.index for s in sessions}
    try:
        text = path.with_name(path.name + ".anchors").read_text(errors="replace")
    except OSError:
        return anchors, warnings
    for number, line in enumerate(text.splitlines()[:10_000], 1):
        try:
            entry = json.loads(line)
            offset, unix_ns = entry["offset"], entry["received_unix_ns"]
            if not (isinstance(offset, int) and isinstance(unix_ns, int)):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            warnings.append(f"{path}.anchors line {number}: not an anchor; ignored")
            continue
        if offset in by_offset:
            anchors[by_offset[offset]] = unix_ns
    return anchors, warnings
