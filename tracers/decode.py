"""Decode an undebug trace stream (tracers/FORMAT.md, version 1) into columns.

The stream is untrusted: any bytes decode without an exception or a hang. Two paths share
one state machine (:class:`StreamDecoder`): a vectorised fast path (numpy views over the
16-byte slots; uniform runs of records are read as strided structured arrays, mixed runs
are walked over the ``nslots`` bytes only and gathered) and a careful per-record path,
which takes over at every record the fast path will not accept: a repeated stream
header, the end of the data, or damage. Damage is skipped exactly as FORMAT.md section 4
says (byte-by-byte scan for a SYNC pattern, the stream magic, or a confirmed header) and
each region is reported as (offset, bytes skipped).

``decode(data)`` decodes a whole buffer; ``StreamDecoder.feed()`` decodes a growing one
(``--follow``): a record cut at the end waits for more bytes, ``finish()`` reports it.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["ID_FAULT", "ID_LOG_STR", "ID_LOST", "ID_PANIC", "ID_SYNC", "ID_THREAD_NAME",
           "ID_THREAD_SWITCH", "MAGIC", "RESERVED_NAMES", "SLOT_DTYPE", "SYNC_W0", "SYNC_W1",
           "Damage", "Decoded", "Records", "Session", "StreamDecoder", "StreamHeader",
           "Truncation", "decode", "decode_file", "record_dtype"]

MAGIC = 0x4543415254424455  # "UDBTRACE"
MAGIC_BYTES = b"UDBTRACE"
VERSION = 1
HEADER_SIZE = 80
SLOT = 16
MAX_SLOTS = 16
MAX_ARGS = 6
SYNC_W0 = 0x434E595347424455  # "UDBGSYNC"
SYNC_W1 = SYNC_W0 ^ 0xFFFF_FFFF_FFFF_FFFF
SYNC_PATTERN = struct.pack("<QQ", SYNC_W0, SYNC_W1)
TSC_WINDOW_S = 600  # a record may be at most 10 minutes newer than the newest good one
U64_MAX = (1 << 64) - 1

ID_SYNC, ID_LOST, ID_THREAD_NAME, ID_THREAD_SWITCH = 0xFF00, 0xFF01, 0xFF02, 0xFF03
ID_FAULT, ID_PANIC, ID_LOG_STR = 0xFF04, 0xFF05, 0xFF06
RESERVED_FIRST, ID_INVALID = 0xFF00, 0xFFFF
RESERVED_NAMES = {ID_SYNC: "sync", ID_LOST: "lost", ID_THREAD_NAME: "thread_name",
                  ID_THREAD_SWITCH: "thread_switch", ID_FAULT: "fault", ID_PANIC: "panic",
                  ID_LOG_STR: "log_str"}
# nslots allowed per known reserved id (FORMAT.md section 3)
_RESERVED_SLOTS = {ID_SYNC: (3, 3), ID_LOST: (2, 2), ID_THREAD_NAME: (2, 4),
                   ID_THREAD_SWITCH: (2, 2), ID_FAULT: (3, 3), ID_PANIC: (2, 9),
                   ID_LOG_STR: (2, 9)}
_STRING_IDS = (ID_THREAD_NAME, ID_PANIC, ID_LOG_STR)

SLOT_DTYPE = np.dtype([("tsc", "<u8"), ("id", "<u2"), ("cpu", "u1"), ("nslots", "u1"),
                       ("seq", "<u2"), ("tid", "<u2")])
_HEADER = struct.Struct("<QHHIQQHBBHH32sQ")
_SLOT = struct.Struct("<QHBBHH")
_TRANSPORTS = {0: "memory", 1: "virtio-serial", 2: "uart", 3: "debugcon"}


def record_dtype(k: int) -> np.dtype[Any]:
    """A record of ``k`` slots as one structured item: header fields plus payload words."""
    names = ["tsc", "id", "cpu", "nslots", "seq", "tid"]
    formats: list[Any] = ["<u8", "<u2", "u1", "u1", "<u2", "<u2"]
    offsets = [0, 8, 10, 11, 12, 14]
    if k > 1:
        names.append("w")
        formats.append(("<u8", (2 * (k - 1),)))
        offsets.append(16)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": SLOT * k})


_RECORD_DTYPES = [SLOT_DTYPE] + [record_dtype(k) for k in range(1, MAX_SLOTS + 1)]


@dataclass(frozen=True)
class StreamHeader:
    """The 80-byte stream header (FORMAT.md section 1)."""

    version: int
    header_size: int
    flags: int
    tsc_hz: int
    boot_tsc: int
    cpu_count: int
    transport: int
    max_slots: int
    ring_count: int
    build_id: bytes
    header_tsc: int

    @property
    def streaming(self) -> bool:
        return bool(self.flags & 1)

    @property
    def transport_name(self) -> str:
        return _TRANSPORTS.get(self.transport, f"transport {self.transport}")

    @classmethod
    def parse(cls, data: bytes) -> StreamHeader | str:
        """The header in ``data`` (at least 80 bytes), or why it is not a valid one."""
        (magic, version, size, flags, hz, boot, cpus, id_len, transport, max_slots, rings,
         build_id, header_tsc) = _HEADER.unpack_from(data)
        if magic != MAGIC:
            return "no UDBTRACE magic"
        if version != VERSION:
            return f"trace format version {version} (this undebug reads version {VERSION})"
        if size < HEADER_SIZE or size % SLOT or size > 4096:
            return f"bad header_size {size}"
        if not 1 <= cpus <= 256:
            return f"bad cpu_count {cpus}"
        if id_len > 32:
            return f"bad build_id_len {id_len}"
        if hz == 0:
            return "tsc_hz is 0"
        if not 1 <= max_slots <= MAX_SLOTS:
            return f"bad max_slots {max_slots}"
        return cls(version, size, flags, hz, boot, cpus, transport, max_slots, rings,
                   bytes(build_id[:id_len]), header_tsc)


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
        return _Columns(0).finish(0, [], 0)

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


class _Columns:
    """Output arrays, allocated for the most records the data can hold. ``np.zeros`` is
    calloc: pages of argument columns no record uses are never touched."""

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


Data = bytes | mmap.mmap


class StreamDecoder:
    """The decoder's state; ``feed`` bytes as they arrive, then ``finish``.

    ``tracepoint_count`` is the number of records in the ELF's metadata section (a
    plausible record's id must be below it); None accepts every non-reserved id.
    ``fast=False`` decodes every record on the careful path (for tests and checking).
    """

    def __init__(self, tracepoint_count: int | None = None, *, fast: bool = True) -> None:
        self.limit = RESERVED_FIRST if tracepoint_count is None else \
            max(0, min(tracepoint_count, RESERVED_FIRST))
        self.fast = fast
        self.sessions: list[Session] = []
        self.damage: list[Damage] = []
        self.warnings: list[str] = []
        self.problem: str | None = None
        self.header: StreamHeader | None = None
        self.last_good: int | None = None  # newest TSC of an accepted record, this session
        self._seq: dict[int, int] = {}  # cpu -> last seq, folded from the output up to _folded
        self._folded = 0
        self._pending = b""
        self._base = 0  # stream offset of _pending[0]
        self._count = 0  # records emitted before the current feed
        self._damage_at: int | None = None  # open damage region (stream offset) and reason
        self._damage_reason = ""
        self._scan_from = 0
        self._unknown: dict[int, int] = {}
        self._out = _Columns(0)
        self._new_sessions: list[tuple[int, int]] = []
        self._truncated: Truncation | None = None

    # ---- public ------------------------------------------------------------------------

    def feed(self, data: bytes) -> Decoded:
        """Decode what ``data`` completes; a partial record waits for the next feed."""
        buf = self._pending + data if self._pending else data
        return self._run(buf, final=False)

    def finish(self) -> Decoded:
        """The end of the stream: a record cut short and open damage are reported."""
        return self._run(self._pending, final=True)

    def decode(self, data: Data) -> Decoded:
        """A whole stream at once (``data`` may be an mmap: nothing is copied)."""
        return self._run(data, final=True)

    # ---- the state machine -------------------------------------------------------------

    def _run(self, data: Data, *, final: bool) -> Decoded:
        n = len(data)
        self._out = out = _Columns(n // SLOT + 1)
        self._folded = 0
        self._new_sessions = []
        warnings_before = len(self.warnings)
        damage_before = len(self.damage)
        base = self._base
        session_at_start = len(self.sessions) - 1
        p = 0
        resumed = False
        while True:
            if self._damage_at is not None:
                found, p = self._scan(data, self._scan_from - base, final)
                if found is None:
                    if not final:
                        break
                    self._close_damage(base + n)
                    p = n
                    break
                self._close_damage(base + found)
                p = found
                resumed = True  # the record found is taken as the scan judged it
            if p >= n:
                break
            if data[p : p + 8] == MAGIC_BYTES or (self.header is None and n - p < 8
                                                 and MAGIC_BYTES.startswith(data[p:n])):
                status, size, why = self._try_header(data, p, final)
                if status == "ok":
                    p += size
                    continue
                if status == "wait":
                    break
                if status == "short":
                    self._truncated = Truncation(base + p, n - p)
                    p = n
                    break
                self._open_damage(p, why)
                continue
            if self.header is None:
                self._open_damage(p, "no stream header")
                if base + p == 0:
                    self.problem = "no stream header at offset 0: not an undebug trace"
                continue
            if self.fast and not resumed:
                p = self._fast(data, p, n)
                if p >= n:
                    break
                if data[p : p + 8] == MAGIC_BYTES:
                    continue
            status, k = self._check(data, p, n, sync_resync=resumed)
            resumed = False
            if status == "ok":
                self._append(data, p, k)
                p += SLOT * k
            elif status == "short":
                if not final:
                    break
                self._truncated = Truncation(base + p, n - p)
                p = n
                break
            else:
                self._open_damage(p, status)
        consumed = p if self._damage_at is None else min(p, self._scan_from - base)
        if final:
            consumed = n
        if final and self.problem is None and not self.sessions:
            self.problem = ("empty file: no stream header yet" if n == 0 and base == 0 else
                            "the stream header is cut short (truncated file)" if self._truncated
                            else "no stream header found: not an undebug trace")
        if not final:
            self._last_seq(-1)  # fold this feed's sequence numbers before the columns go
        unknown = [f"skipped {c} record(s) with unknown reserved id {i:#06x}"
                   for i, c in sorted(self._unknown.items())] if final else []
        self.warnings += unknown
        records = out.finish(self._count, self._new_sessions, session_at_start)
        self._count += out.n
        tail = data[consumed:n] if not final else b""
        self._pending = bytes(tail)
        self._base = base + consumed
        self._out = _Columns(0)
        return Decoded(records, list(self.sessions), self.damage[damage_before:],
                       self.warnings[warnings_before:], self._truncated, self.problem,
                       self._base)

    def _try_header(self, data: Data, p: int, final: bool) -> tuple[str, int, str]:
        n = len(data)
        if n - p < HEADER_SIZE:
            return ("short" if final else "wait"), 0, ""
        header = StreamHeader.parse(bytes(data[p : p + HEADER_SIZE]))
        if isinstance(header, str):
            if self.header is None and not self.sessions and self._base + p == 0:
                self.problem = f"invalid stream header at offset 0: {header}"
            return "bad", 0, f"invalid stream header: {header}"
        if n - p < header.header_size:
            return ("short" if final else "wait"), 0, ""
        self.header = header
        self.sessions.append(Session(len(self.sessions), header, self._base + p,
                                     self._count + self._out.n))
        self._new_sessions.append((len(self.sessions) - 1, self._count + self._out.n))
        self.last_good = header.header_tsc or None
        self._seq = {}
        self._folded = self._out.n
        return "ok", header.header_size, ""

    # ---- damage ------------------------------------------------------------------------

    def _open_damage(self, p: int, reason: str) -> None:
        self._damage_at = self._base + p
        self._damage_reason = reason
        self._scan_from = self._base + p + 1

    def _close_damage(self, end: int) -> None:
        assert self._damage_at is not None
        self.damage.append(Damage(self._damage_at, end - self._damage_at,
                                  self._count + self._out.n, self._damage_reason))
        self._damage_at = None

    def _scan(self, data: Data, lo: int, final: bool) -> tuple[int | None, int]:
        """Look for a place to resume at or after ``lo``: (position, p) or (None, p) when
        there is none yet (``_scan_from`` remembers where to go on)."""
        n = len(data)
        lo = start = max(lo, 0)
        while lo <= n - 8:
            hi = min(n, lo + (1 << 16))
            candidates = self._candidates(data, lo, hi)
            for c in candidates:
                verdict = self._resume_here(data, c, final)
                if verdict == "yes":
                    return c, c
                if verdict == "wait":
                    self._scan_from = self._base + c
                    return None, c
            lo = hi
        # offsets near the end were not fully examined (a SYNC needs 32 bytes to be seen)
        self._scan_from = self._base + (n if final else max(start, n - 2 * SLOT + 1))
        return None, n

    def _candidates(self, data: Data, lo: int, hi: int) -> list[int]:
        """Offsets in [lo, hi) that may start a stream header, a SYNC or a header slot."""
        n = len(data)
        found: set[int] = set()
        at = data.find(MAGIC_BYTES, lo, hi + 7)
        while at != -1 and at < hi:
            found.add(at)
            at = data.find(MAGIC_BYTES, at + 1, hi + 7)
        at = data.find(SYNC_PATTERN, lo + SLOT, hi + SLOT + 15)
        while at != -1 and at - SLOT < hi:
            found.add(at - SLOT)
            at = data.find(SYNC_PATTERN, at + 1, hi + SLOT + 15)
        h = self.header
        count = min(hi, n - SLOT + 1) - lo
        if h is not None and count > 0:
            u8 = np.frombuffer(data, np.uint8, count=count + SLOT - 1, offset=lo)
            ns = u8[11 : 11 + count]
            ok = (ns >= 1) & (ns <= MAX_SLOTS) & (u8[10 : 10 + count] < h.cpu_count)
            ident = u8[8 : 8 + count].astype(np.uint16) | (u8[9 : 9 + count].astype(np.uint16) << 8)
            ok &= (ident < self.limit) | ((ident >= RESERVED_FIRST) & (ident != ID_INVALID))
            ok &= np.arange(lo, lo + count) + SLOT * ns.astype(np.int64) <= n
            tsc = np.ndarray((count,), "<u8", buffer=data, offset=lo, strides=(1,))
            ok &= tsc >= h.boot_tsc
            found.update((np.flatnonzero(ok) + lo).tolist())
        return sorted(found)

    def _resume_here(self, data: Data, c: int, final: bool) -> str:
        """'yes' to resume at ``c``, 'no', or 'wait' for more data to decide."""
        n = len(data)
        if data[c : c + 8] == MAGIC_BYTES:
            if n - c < HEADER_SIZE:
                return "no" if final else "wait"
            header = StreamHeader.parse(bytes(data[c : c + HEADER_SIZE]))
            if isinstance(header, str):
                return "no"
            return "yes" if n - c >= header.header_size or final else "wait"
        if self.header is None:
            return "no"
        status, k = self._check(data, c, n, sync_resync=True)
        if status == "ok" and data[c + SLOT : c + 2 * SLOT] == SYNC_PATTERN \
                and data[c + 8 : c + 10] == b"\x00\xff":
            return "yes"  # (a): a SYNC, certain whatever its TSC
        status, k = self._check(data, c, n)
        if status == "short":
            return "no" if final else "wait"
        if status != "ok":
            return "no"
        _, _, cpu, _, seq, _ = _SLOT.unpack_from(data, c)
        last = self._last_seq(cpu)
        if last is not None and seq == (last + 1) & 0xFFFF:
            return "yes"
        nxt = c + SLOT * k
        if n - nxt >= 8 and data[nxt : nxt + 8] == MAGIC_BYTES:
            return "yes"
        status, _ = self._check(data, nxt, n)
        if status == "ok":
            return "yes"
        return "wait" if (status == "short" or n - nxt < SLOT) and not final else "no"

    # ---- the careful path --------------------------------------------------------------

    def _check(self, data: Data, p: int, n: int, *, sync_resync: bool = False) -> tuple[str, int]:
        """Whether the slot at ``p`` is a plausible record header (FORMAT.md section 4):
        ('ok', nslots), ('short', nslots) when it does not fit yet, or (reason, 0)."""
        h = self.header
        if h is None or n - p < SLOT:
            return "short", 0
        tsc, ident, cpu, k, _, _ = _SLOT.unpack_from(data, p)
        if not 1 <= k <= MAX_SLOTS:
            return f"bad nslots {k}", 0
        if cpu >= h.cpu_count:
            return f"cpu {cpu} >= cpu_count {h.cpu_count}", 0
        if ident >= self.limit:
            if ident < RESERVED_FIRST:
                return f"unknown tracepoint id {ident}", 0
            if ident == ID_INVALID:
                return "id 0xffff", 0
            low, high = _RESERVED_SLOTS.get(ident, (1, MAX_SLOTS))
            if not low <= k <= high:
                return f"bad nslots {k} for reserved id {ident:#06x}", 0
        if tsc == MAGIC:
            return "stream magic", 0
        if tsc < h.boot_tsc:
            return "tsc before boot", 0
        if not (sync_resync and ident == ID_SYNC) and self.last_good is not None and \
                tsc > self.last_good + TSC_WINDOW_S * h.tsc_hz:
            return "tsc more than 10 minutes ahead", 0
        if n - p < SLOT * k:
            return "short", k
        if ident == ID_SYNC and data[p + SLOT : p + 2 * SLOT] != SYNC_PATTERN:
            return "bad SYNC pattern", 0
        return "ok", k

    def _append(self, data: Data, p: int, k: int) -> None:
        out = self._out
        i = out.n
        tsc, ident, cpu, _, seq, tid = _SLOT.unpack_from(data, p)
        out.tsc[i], out.id[i], out.cpu[i], out.nslots[i] = tsc, ident, cpu, k
        out.seq[i], out.tid[i] = seq, tid
        words = min(MAX_ARGS, 2 * (k - 1))
        for a, value in enumerate(struct.unpack_from(f"<{words}Q", data, p + SLOT)):
            out.args[a, i] = value
        out.width = max(out.width, words)
        out.n = i + 1
        self.last_good = tsc if self.last_good is None else max(self.last_good, tsc)
        if ident >= RESERVED_FIRST:
            self._reserved(data, [p], [i])

    def _reserved(self, data: Data, offsets: list[int], rows: list[int]) -> None:
        out = self._out
        for p, i in zip(offsets, rows, strict=True):
            ident, k = int(out.id[i]), int(out.nslots[i])
            if ident in _STRING_IDS:
                w0, w1 = struct.unpack_from("<QQ", data, p + SLOT)
                length = w0 if ident == ID_PANIC else w1
                room = SLOT * (k - 2)
                out.strings[self._count + i] = bytes(data[p + 2 * SLOT : p + 2 * SLOT
                                                          + min(length, room)])
            elif ident not in _RESERVED_SLOTS:
                self._unknown[ident] = self._unknown.get(ident, 0) + 1

    def _last_seq(self, cpu: int) -> int | None:
        out = self._out
        if self._folded < out.n:
            cpus = out.cpu[self._folded : out.n][::-1]
            seqs = out.seq[self._folded : out.n][::-1]
            values, first = np.unique(cpus, return_index=True)
            for c, at in zip(values.tolist(), first.tolist(), strict=True):
                self._seq[c] = int(seqs[at])
            self._folded = out.n
        return self._seq.get(cpu)

    # ---- the fast path -----------------------------------------------------------------

    def _fast(self, data: Data, p: int, n: int) -> int:
        """Accept records from ``p`` on, vectorised, as far as they are plausible; return
        where the careful path must look (the end, a header, or a record it refused).

        Records are copied into the columns run by run (a run of equal ``nslots`` as one
        strided view; a mixed stretch walked over its ``nslots`` bytes and gathered), and
        checked window by window; a refused record truncates the window there."""
        total = (n - p) // SLOT
        if total == 0:
            return p
        slots = np.ndarray((total,), SLOT_DTYPE, buffer=data, offset=p)
        ns = slots["nslots"]
        out = self._out
        i = 0
        probe_len = 1024
        budget = 1 << 12  # rows per checked window: grows while the data is clean
        while i < total:
            first_row = out.n
            pieces: list[_Piece] = []
            while i < total and out.n - first_row < budget:
                k = int(ns[i])
                if not 1 <= k <= MAX_SLOTS or total - i < k:
                    break
                m = min(probe_len, (total - i) // k)
                probe = ns[i : i + min(m, 8) * k : k] != k  # a short look first: cheap
                if not probe.any():
                    probe = ns[i : i + m * k : k] != k
                j = int(np.argmax(probe)) if probe.any() else m
                if j >= 8:
                    self._copy_uniform(data, p + SLOT * i, k, j)
                    pieces.append((out.n - j - first_row, p + SLOT * i, SLOT * k, None))
                    i += j * k
                    probe_len = min(max(probe_len * 4 if j == m else 2 * j, 1024), 1 << 22)
                    continue
                heads, q = _walk(ns[i : min(total, i + 256)].tobytes())
                if not heads:
                    break
                at = np.asarray(heads, np.int64) + i
                if len(heads) <= 8:  # a record or two between runs: numpy costs more
                    for h in heads:
                        self._copy_one(data, p + SLOT * (i + h))
                else:
                    self._copy_gathered(slots, at, data, p)
                pieces.append((out.n - len(heads) - first_row, p, SLOT, at))
                i += q
            rows = out.n - first_row
            if rows == 0:
                break
            taken = self._validate(first_row, rows, data, _offsets(pieces))
            if taken < rows:
                at_row = first_row + taken
                for a in range(MAX_ARGS):  # rows past the refusal are reused later
                    out.args[a, at_row : out.n] = 0
                out.n = at_row
                if taken:
                    widest = int(out.nslots[first_row:at_row].max())
                    out.width = max(out.width, min(MAX_ARGS, 2 * (widest - 1)))
                return int(_offsets(pieces)(np.array([taken], np.intp))[0])
            if rows:
                widest = int(out.nslots[first_row : out.n].max())
                out.width = max(out.width, min(MAX_ARGS, 2 * (widest - 1)))
            budget = min(budget * 4, 1 << 22)
        return p + SLOT * i

    def _copy_uniform(self, data: Data, at: int, k: int, m: int) -> None:
        """Copy ``m`` records of ``k`` slots at byte ``at`` into the columns (unchecked)."""
        out = self._out
        o = out.n
        view = np.ndarray((m,), _RECORD_DTYPES[k], buffer=data, offset=at)
        for name in ("tsc", "id", "cpu", "nslots", "seq", "tid"):
            getattr(out, name)[o : o + m] = view[name]
        for a in range(min(MAX_ARGS, 2 * (k - 1))):
            out.args[a, o : o + m] = view["w"][:, a]
        out.n = o + m

    def _copy_one(self, data: Data, at: int) -> None:
        out = self._out
        o = out.n
        tsc, ident, cpu, k, seq, tid = _SLOT.unpack_from(data, at)
        out.tsc[o], out.id[o], out.cpu[o], out.nslots[o], out.seq[o], out.tid[o] = \
            tsc, ident, cpu, k, seq, tid
        for a, value in enumerate(struct.unpack_from(f"<{min(MAX_ARGS, 2 * (k - 1))}Q", data,
                                                     at + SLOT)):
            out.args[a, o] = value
        out.n = o + 1

    def _copy_gathered(self, slots: npt.NDArray[Any], at: npt.NDArray[np.int64], data: Data,
                       p: int) -> None:
        """Copy the records whose header slots are ``at`` (indices into ``slots``)."""
        out = self._out
        o, m = out.n, at.shape[0]
        heads = slots[at]
        for name in ("tsc", "id", "cpu", "nslots", "seq", "tid"):
            getattr(out, name)[o : o + m] = heads[name]
        ns = heads["nslots"].astype(np.int64)
        words = np.frombuffer(data, "<u8", count=2 * slots.shape[0], offset=p)
        for a in range(int(min(MAX_ARGS, 2 * (int(ns.max()) - 1)))):
            has = ns > 1 + a // 2
            out.args[a, o : o + m] = np.where(has, words[np.where(has, 2 * (at + 1) + a, 0)], 0)
        out.n = o + m

    def _validate(self, o: int, m: int, data: Data,
                  offsets: Callable[[npt.NDArray[np.intp]], npt.NDArray[np.int64]]) -> int:
        """How many of the rows [o, o+m) are plausible before the first that is not."""
        h = self.header
        assert h is not None
        out = self._out
        tsc, ident = out.tsc[o : o + m], out.id[o : o + m]
        bad = (out.cpu[o : o + m] >= h.cpu_count) | (tsc < h.boot_tsc) | (tsc == MAGIC)
        window = min(TSC_WINDOW_S * h.tsc_hz, U64_MAX)
        if self.last_good is not None and int(tsc[0]) > self.last_good + window:
            bad[0] = True
        if m > 1:
            # A record too far ahead of the newest before it is also too far ahead of the
            # one right before it: find those cheaply (a wrapped sum only adds suspects),
            # then judge the suspects exactly against the running maximum.
            suspects = np.flatnonzero(tsc[1:] > tsc[:-1] + np.uint64(window)) + 1
            if suspects.size:
                newest = np.maximum.accumulate(tsc)
                floor = np.uint64(0 if self.last_good is None else self.last_good)
                before = np.maximum(newest[suspects - 1], floor)
                limit = np.minimum(before, np.uint64(U64_MAX - window)) + np.uint64(window)
                bad[suspects] |= tsc[suspects] > limit
        special = np.flatnonzero(ident >= self.limit)
        if special.size:
            sid = ident[special]
            ns = out.nslots[o : o + m][special]
            low = np.full(special.size, 1, np.uint8)
            high = np.full(special.size, MAX_SLOTS, np.uint8)
            for rid, (lo_, hi_) in _RESERVED_SLOTS.items():
                low[sid == rid], high[sid == rid] = lo_, hi_
            wrong = (sid < RESERVED_FIRST) | (sid == ID_INVALID) | (ns < low) | (ns > high)
            sync = sid == ID_SYNC
            wrong |= sync & ((out.args[0, o + special] != SYNC_W0) |
                             (out.args[1, o + special] != SYNC_W1))
            bad[special[wrong]] = True
        taken = int(np.argmax(bad)) if bad.any() else m
        if taken:
            newest_taken = int(tsc[:taken].max())
            self.last_good = newest_taken if self.last_good is None else \
                max(self.last_good, newest_taken)
            keep = special[special < taken]
            if keep.size:
                self._reserved(data, offsets(keep).tolist(), (keep + o).tolist())
        return taken


_Piece = tuple[int, int, int, "npt.NDArray[np.int64] | None"]


def _offsets(pieces: list[_Piece]) -> Callable[[npt.NDArray[np.intp]], npt.NDArray[np.int64]]:
    """Row (in a checked window) -> byte offset of its record, from the pieces copied:
    (first row, base offset, stride, header slots or None for a uniform run)."""
    starts = np.array([piece[0] for piece in pieces], np.int64)

    def where(rows: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
        which = np.searchsorted(starts, rows, side="right") - 1
        out = np.empty(rows.shape[0], np.int64)
        for w in np.unique(which).tolist():
            first, base, stride, heads = pieces[w]
            sel = which == w
            r = rows[sel] - first
            out[sel] = base + stride * (heads[r] if heads is not None else r)
        return out

    return where


def _walk(nslots: bytes) -> tuple[list[int], int]:
    """Follow record lengths from slot 0 until a bad one, the window's end, or 2 records
    of one size in a row (the uniform path is faster there)."""
    heads: list[int] = []
    q, end, prev, run = 0, len(nslots), 0, 0
    while q < end:
        k = nslots[q]
        if k == 0 or k > MAX_SLOTS or q + k > end:
            break
        heads.append(q)
        q += k
        if k == prev:
            run += 1
            if run >= 2:
                break
        else:
            prev, run = k, 1
    return heads, q


def decode(data: Data, *, tracepoint_count: int | None = None, fast: bool = True) -> Decoded:
    """Decode a whole stream; never raises on bad input (see ``Decoded.problem``)."""
    return StreamDecoder(tracepoint_count, fast=fast).decode(data)


def decode_file(path: Path | str, *, tracepoint_count: int | None = None,
                fast: bool = True) -> Decoded:
    """Decode a recorded file through an mmap (raises OSError if it cannot be read)."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            return decode(b"", tracepoint_count=tracepoint_count, fast=fast)
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            return decode(mapped, tracepoint_count=tracepoint_count, fast=fast)
