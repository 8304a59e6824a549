"""What decoding a trace stream produces: the records as numpy columns, the sessions
(one per stream header), the damage skipped and a truncated tail.

It exists apart from the decoder so that the model, the metadata matcher and the CLI
can use these types without importing the state machine, and so that both decoding paths
(tracers/decode.py and tracers/fastpath.py) fill the same :class:`Columns`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from tracers.chunks import Dropped
from tracers.format import MAX_ARGS, StreamHeader

__all__ = ["Columns", "Damage", "Decoded", "Records", "Session", "StreamSummary", "Truncation"]


@dataclass(frozen=True)
class Session:
    """One stream header and the records after it, up to the next header."""

    index: int
    header: StreamHeader
    offset: int  # byte offset of the header in the stream
    first_record: int  # index of its first record


@dataclass(frozen=True)
class Damage:
    """Bytes the decoder could not read as records and skipped."""

    offset: int
    skipped: int
    record_index: int  # index of the first record decoded after it
    reason: str


@dataclass(frozen=True)
class Truncation:
    """The stream ends inside a record or header: those bytes were never completed."""

    offset: int
    size: int


_U64 = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class Records:
    """Decoded records as columns, in stream order. ``args`` is (n, A) with A <= 6 payload
    words per record (0 where a record has fewer); ``strings`` holds the string payload of
    THREAD_NAME, PANIC and LOG_STR records, by record index."""

    tsc: _U64
    id: npt.NDArray[np.uint16]
    cpu: npt.NDArray[np.uint8]
    nslots: npt.NDArray[np.uint8]
    seq: npt.NDArray[np.uint16]
    tid: npt.NDArray[np.uint16]
    session: npt.NDArray[np.uint32]
    args: _U64
    strings: dict[int, bytes] = field(default_factory=dict)
    start: int = 0  # index of the first record in the whole stream

    def __len__(self) -> int:
        return int(self.tsc.shape[0])

    @classmethod
    def empty(cls) -> Records:
        return Columns(0).finish(0, [], 0)

    @classmethod
    def concat(cls, parts: list[Records]) -> Records:
        """Consecutive pieces (from ``StreamDecoder.feed``) as one."""
        parts = [p for p in parts if len(p)] or parts[:1]
        if not parts:
            return cls.empty()
        width = max(p.args.shape[1] for p in parts)
        args = np.zeros((sum(len(p) for p in parts), width), np.uint64)
        at = 0
        for p in parts:
            args[at : at + len(p), : p.args.shape[1]] = p.args
            at += len(p)
        strings: dict[int, bytes] = {}
        for p in parts:
            strings.update(p.strings)
        def cat(name: str) -> Any:
            return np.concatenate([getattr(p, name) for p in parts])

        return cls(cat("tsc"), cat("id"), cat("cpu"), cat("nslots"), cat("seq"), cat("tid"),
                   cat("session"), args, strings, parts[0].start)


@dataclass
class Decoded:
    """What one decode (or one ``feed``) produced."""

    records: Records
    sessions: list[Session]  # every session started so far
    damage: list[Damage]
    warnings: list[str]
    truncated: Truncation | None = None
    problem: str | None = None  # set when the data is not an undebug trace at all
    size: int = 0  # bytes decoded (or skipped) so far

    @property
    def damaged_bytes(self) -> int:
        return sum(d.skipped for d in self.damage)


@dataclass
class StreamSummary:
    """What a whole stream (decoded batch by batch) had beyond its records: sessions,
    damage, a cut-short end, and what its recording dropped to rotation."""

    sessions: list[Session]
    damage: list[Damage]
    truncated: Truncation | None
    dropped: Dropped | None = None

    @property
    def damaged_bytes(self) -> int:
        return sum(d.skipped for d in self.damage)

    def dropped_json(self) -> dict[str, Any] | None:
        return None if self.dropped is None else asdict(self.dropped)


class Columns:
    """The decoder's output arrays while it fills them, allocated for the most records the
    data can hold; ``finish`` makes them :class:`Records`. ``np.zeros`` is calloc: pages
    of argument columns no record uses are never touched."""

    def __init__(self, capacity: int) -> None:
        self.tsc = np.empty(capacity, np.uint64)
        self.id = np.empty(capacity, np.uint16)
        self.cpu = np.empty(capacity, np.uint8)
        self.nslots = np.empty(capacity, np.uint8)
        self.seq = np.empty(capacity, np.uint16)
        self.tid = np.empty(capacity, np.uint16)
        self.args = np.zeros((MAX_ARGS, capacity), np.uint64)
        self.n = 0
        self.width = 0  # payload words used by the widest record
        self.strings: dict[int, bytes] = {}

    @property
    def capacity(self) -> int:
        return int(self.tsc.shape[0])

    def clear(self) -> None:
        """Empty again for reuse: argument words a record does not fill must read 0."""
        self.args[: self.width, : self.n] = 0
        self.n = 0
        self.width = 0
        self.strings = {}

    def finish(self, start: int, session_starts: list[tuple[int, int]], last_session: int) \
            -> Records:
        n = self.n
        session = np.empty(n, np.uint32)
        session[:] = max(last_session, 0)
        for index, first in session_starts:  # (session, its first record here), in order
            session[max(first - start, 0):] = index
        return Records(self.tsc[:n], self.id[:n], self.cpu[:n], self.nslots[:n],
                       self.seq[:n], self.tid[:n], session, self.args[: self.width, :n].T,
                       self.strings, start)
