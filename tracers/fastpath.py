"""The decoder's vectorised fast path: accept runs of plausible records with numpy.

It exists apart from the state machine (tracers/decode.py) because it is the one place
tuned for speed (``python -m bench decode``); the rules it applies are the careful
path's (FORMAT.md section 4), only checked on whole windows of records at once. It stops
at the first record it will not accept, a stream header, or the end of the data, and the
careful path takes over there.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from tracers.format import (
    ID_INVALID,
    ID_SYNC,
    MAGIC,
    MAX_ARGS,
    MAX_SLOTS,
    RESERVED_FIRST,
    RESERVED_SLOTS,
    SLOT,
    SLOT_STRUCT,
    SYNC_W0,
    SYNC_W1,
    TSC_WINDOW_S,
    U64_MAX,
    Data,
    StreamHeader,
)
from tracers.records import Columns

__all__ = ["RECORD_DTYPES", "SLOT_DTYPE", "FastResult", "read_fast", "record_dtype"]

SLOT_DTYPE = np.dtype([("tsc", "<u8"), ("id", "<u2"), ("cpu", "u1"), ("nslots", "u1"),
                       ("seq", "<u2"), ("tid", "<u2")])

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


# by nslots: RECORD_DTYPES[k] is a record of k slots (index 0 is the bare header slot)
RECORD_DTYPES = [SLOT_DTYPE] + [record_dtype(k) for k in range(1, MAX_SLOTS + 1)]




@dataclass(frozen=True)
class FastResult:
    """How far the fast path got, and what the decoder must take over from it."""

    end: int  # byte offset where the careful path must look (the end, a header, a refusal)
    last_good: int | None  # newest TSC of an accepted record (the decoder's, updated)
    reserved_offsets: list[int]  # byte offsets of the reserved records accepted ...
    reserved_rows: list[int]  # ... and their rows in the columns, for their payloads


def read_fast(data: Data, p: int, n: int, out: Columns, header: StreamHeader, limit: int,
              last_good: int | None) -> FastResult:
    """Append to ``out`` the plausible records of ``data[p:n]`` from ``p`` on, vectorised.

    ``header`` is the current session's, ``limit`` the first tracepoint id that is not
    plausible, ``last_good`` the newest TSC accepted so far in this session (or None)."""
    reader = _FastReader(out, header, limit, last_good)
    end = reader.run(data, p, n)
    return FastResult(end, reader.last_good, reader.reserved_offsets, reader.reserved_rows)


class _FastReader:
    """One run of the fast path over the decoder's columns."""

    def __init__(self, out: Columns, header: StreamHeader, limit: int,
                 last_good: int | None) -> None:
        self._out = out
        self.header = header
        self.limit = limit
        self.last_good = last_good
        self.reserved_offsets: list[int] = []
        self.reserved_rows: list[int] = []

    def run(self, data: Data, p: int, n: int) -> int:
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
        view = np.ndarray((m,), RECORD_DTYPES[k], buffer=data, offset=at)
        for name in ("tsc", "id", "cpu", "nslots", "seq", "tid"):
            getattr(out, name)[o : o + m] = view[name]
        for a in range(min(MAX_ARGS, 2 * (k - 1))):
            out.args[a, o : o + m] = view["w"][:, a]
        out.n = o + m

    def _copy_one(self, data: Data, at: int) -> None:
        out = self._out
        o = out.n
        tsc, ident, cpu, k, seq, tid = SLOT_STRUCT.unpack_from(data, at)
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
            for rid, (lo_, hi_) in RESERVED_SLOTS.items():
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
                self.reserved_offsets += offsets(keep).tolist()
                self.reserved_rows += (keep + o).tolist()
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
