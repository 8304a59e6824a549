"""Decode an undebug trace stream (tracers/FORMAT.md, version 1) into columns.

The stream is untrusted: any bytes decode without an exception or a hang. Two paths share
one state machine (:class:`StreamDecoder`, here): a vectorised fast path
(tracers/fastpath.py: numpy views over the 16-byte slots; uniform runs of records are read
as strided structured arrays, mixed runs are walked over the ``nslots`` bytes only and
gathered) and a careful per-record path, here, which takes over at every record the fast
path will not accept: a repeated stream header, the end of the data, or damage. Damage is
skipped exactly as FORMAT.md section 4 says (byte-by-byte scan for a SYNC pattern, the
stream magic, or a confirmed header) and each region is reported as (offset, bytes
skipped). The layout is in tracers/format.py, the output types in tracers/records.py.

``decode(data)`` decodes a whole buffer; ``StreamDecoder.feed()`` decodes a growing one
(``--follow``): a record cut at the end waits for more bytes, ``finish()`` reports it.
"""

from __future__ import annotations

import mmap
import struct
from pathlib import Path

import numpy as np

from tracers.fastpath import read_fast, record_dtype
from tracers.format import (
    HEADER_SIZE,
    ID_FAULT,
    ID_INVALID,
    ID_LOG_STR,
    ID_LOST,
    ID_PANIC,
    ID_SYNC,
    ID_THREAD_NAME,
    ID_THREAD_SWITCH,
    MAGIC,
    MAGIC_BYTES,
    MAX_ARGS,
    MAX_SLOTS,
    RESERVED_FIRST,
    RESERVED_SLOTS,
    SLOT,
    SLOT_STRUCT,
    STRING_IDS,
    SYNC_PATTERN,
    SYNC_W0,
    SYNC_W1,
    TSC_WINDOW_S,
    Data,
    StreamHeader,
)
from tracers.records import Columns, Damage, Decoded, Records, Session, Truncation

__all__ = ["StreamDecoder", "decode", "decode_file"]
# defined in tracers/format.py and tracers/records.py; imported from here by the tests,
# bench/decode.py and undebug/commands/trace.py since before the split
__all__ += ["ID_FAULT", "ID_LOG_STR", "ID_LOST", "ID_PANIC", "ID_SYNC", "ID_THREAD_NAME",
            "ID_THREAD_SWITCH", "MAGIC", "SYNC_W0", "SYNC_W1", "Decoded", "Records", "Session",
            "StreamHeader", "record_dtype"]


class StreamDecoder:
    """The decoder's state; ``feed`` bytes as they arrive, then ``finish``.

    ``tracepoint_count`` is the number of records in the ELF's metadata section (a
    plausible record's id must be below it); None accepts every non-reserved id.
    ``fast=False`` decodes every record on the careful path (for tests and checking).
    """

    def __init__(self, tracepoint_count: int | None = None, *, fast: bool = True,
                 reuse: bool = False) -> None:
        self.limit = RESERVED_FIRST if tracepoint_count is None else \
            max(0, min(tracepoint_count, RESERVED_FIRST))
        self.fast = fast
        # reuse: each feed's records live in the same arrays, valid until the next feed
        # (a reader that folds each batch and drops it saves allocating them each time)
        self._spare: Columns | None = Columns(0) if reuse else None
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
        self._out = Columns(0)
        self._new_sessions: list[tuple[int, int]] = []
        self._truncated: Truncation | None = None

    # ---- public ------------------------------------------------------------------------

    @property
    def truncated(self) -> Truncation | None:
        """Where the stream ends inside a record, once ``finish`` has said so."""
        return self._truncated

    def feed(self, data: bytes) -> Decoded:
        """Decode what ``data`` completes; a partial record waits for the next feed."""
        buf = self._pending + data if self._pending else data
        return self._run(buf, final=False)

    @property
    def pending(self) -> bytes:
        """The bytes the last ``feed`` left for the next (a record cut at its end)."""
        return self._pending

    def feed_buffer(self, buf: bytearray) -> Decoded:
        """``feed`` for a buffer that already starts with ``pending``: a reader that
        fills one buffer again and again saves copying each window."""
        if buf[: len(self._pending)] != self._pending:
            raise ValueError("the buffer does not start with the pending bytes")
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
        self._out = out = self._columns(n // SLOT + 1)
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
        self._out = Columns(0)
        return Decoded(records, list(self.sessions), self.damage[damage_before:],
                       self.warnings[warnings_before:], self._truncated, self.problem,
                       self._base)

    def _columns(self, capacity: int) -> Columns:
        spare = self._spare
        if spare is None:
            return Columns(capacity)
        if spare.capacity < capacity:
            self._spare = spare = Columns(capacity)
        spare.clear()
        return spare

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
        _, _, cpu, _, seq, _ = SLOT_STRUCT.unpack_from(data, c)
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
        tsc, ident, cpu, k, _, _ = SLOT_STRUCT.unpack_from(data, p)
        if not 1 <= k <= MAX_SLOTS:
            return f"bad nslots {k}", 0
        if cpu >= h.cpu_count:
            return f"cpu {cpu} >= cpu_count {h.cpu_count}", 0
        if ident >= self.limit:
            if ident < RESERVED_FIRST:
                return f"unknown tracepoint id {ident}", 0
            if ident == ID_INVALID:
                return "id 0xffff", 0
            low, high = RESERVED_SLOTS.get(ident, (1, MAX_SLOTS))
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
        tsc, ident, cpu, _, seq, tid = SLOT_STRUCT.unpack_from(data, p)
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
            if ident in STRING_IDS:
                w0, w1 = struct.unpack_from("<QQ", data, p + SLOT)
                length = w0 if ident == ID_PANIC else w1
                room = SLOT * (k - 2)
                out.strings[self._count + i] = bytes(data[p + 2 * SLOT : p + 2 * SLOT
                                                          + min(length, room)])
            elif ident not in RESERVED_SLOTS:
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
        """Accept records from ``p`` on with the fast path (tracers/fastpath.py); return
        where the careful path must look (the end, a header, or a record it refused)."""
        assert self.header is not None
        run = read_fast(data, p, n, self._out, self.header, self.limit, self.last_good)
        self.last_good = run.last_good
        if run.reserved_rows:
            self._reserved(data, run.reserved_offsets, run.reserved_rows)
        return run.end


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
