"""Unikraft's trace samples (the bytes of ``uk_trace_buffer`` up to its write pointer)
decoded into undebug's event model (:class:`~tracers.records.Decoded`).

A sample is ``struct uk_tracepoint_header {u32 magic 'TRhd', u32 size, __nsec time,
void *cookie}`` and then ``size`` bytes of arguments, packed with no alignment (trace.h,
``__uk_trace_save_arg``: an integer is its ``sizeof`` low bytes, a string a u8 length and
that many bytes). Samples follow each other with no gap, so they form a chain: sample k+1
starts where sample k ends. Decoding is vectorised: every 'TRhd' at any byte offset is a
candidate (four shifted u32 views), the chain ``position + header + size == next
candidate`` is checked for all at once, and only where it breaks does a step go sample
by sample: it skips a false candidate (the magic inside an argument) or reports the bytes
up to the next good header as damage. Each tracepoint's arguments are then gathered for
all its samples at once; only samples with a string argument are read one by one.

Samples carry no CPU or thread: the model's cpu and tid are 0. Time is ns since boot
(the session header says 1 GHz). The buffer is untrusted: nothing is read past it and
every loop ends after at most one step per candidate.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from tracers.format import RESERVED_FIRST, StreamHeader
from tracers.metadata import ARG_SIGNED
from tracers.records import Damage, Decoded, Records, Session, Truncation
from tracers.unikraft.metadata import HeaderLayout, UkTracepoint, UkTracepoints

__all__ = ["SAMPLE_MAGIC", "decode_samples", "session_header"]

SAMPLE_MAGIC = 0x64685254  # UK_TP_HEADER_MAGIC, "TRhd"
_I64 = npt.NDArray[np.int64]
_U64 = npt.NDArray[np.uint64]


def session_header(cpu_count: int = 1) -> StreamHeader:
    """The model's session for a buffer: times are ns (1 GHz) since boot; no build-id."""
    return StreamHeader(1, 80, 0, 1_000_000_000, 0, cpu_count, 0, 16, 0, b"", 0)


class _Bytes:
    """The buffer with 16 zero bytes after it, read as little-endian words at any offset
    (four u32 views, one per offset mod 4; a byte gather where alignments mix)."""

    def __init__(self, data: bytes) -> None:
        self.n = len(data)
        size = (self.n + 16 + 3) // 4 * 4 + 4
        self.raw = np.zeros(size, np.uint8)
        self.raw[: self.n] = np.frombuffer(data, np.uint8)
        self.views = [self.raw[s : s + (size - 4)].view("<u4") for s in range(4)]

    def _gather(self, at: _I64, width: int) -> npt.NDArray[np.uint8]:
        """``width`` bytes at each of ``at``, one row each (for offsets of mixed
        alignment: one gather instead of a pass per alignment)."""
        rows: npt.NDArray[np.uint8] = self.raw[at[:, None] + np.arange(width)]
        return rows

    def u32(self, at: _I64) -> npt.NDArray[np.uint32]:
        if at.size == 0:
            return np.zeros(0, np.uint32)
        shift = at & 3
        first = int(shift[0])
        if not (shift != first).any():  # all alike: a direct index into one view
            found: npt.NDArray[np.uint32] = self.views[first][at >> 2]
            return found
        return self._gather(at, 4).view("<u4").reshape(-1)

    def word(self, at: _I64, width: int) -> _U64:
        """Unsigned values of ``width`` (1, 2, 4 or 8) bytes at ``at``."""
        if width == 8 and at.size and (at & 3 != (at[0] & 3)).any():
            return self._gather(at, 8).view("<u8").reshape(-1).astype(np.uint64)
        low = self.u32(at).astype(np.uint64)
        if width == 8:
            return low | (self.u32(at + 4).astype(np.uint64) << np.uint64(32))
        return low & np.uint64((1 << (8 * width)) - 1) if width < 4 else low

    def candidates(self, header: HeaderLayout, aligned_only: bool = False) -> _I64:
        """Offsets of every 'TRhd' whose whole header lies inside the data, ascending
        (only those at 4-byte aligned offsets with ``aligned_only``)."""
        last = self.n - header.size  # the last offset a header can start at
        if last < 0:
            return np.zeros(0, np.int64)
        found = []
        for s in range(1 if aligned_only else 4):
            view = self.views[s][: (last - s) // 4 + 1] if last >= s else self.views[s][:0]
            found.append(np.flatnonzero(view == SAMPLE_MAGIC).astype(np.int64) * 4 + s)
        # the magic need not be at offset 0 of the header (the DWARF says where it is)
        out = (found[0] if aligned_only else np.sort(np.concatenate(found))) - header.magic
        return out[out >= 0]


def _chain(data: _Bytes, cand: _I64, ends: _I64, exact_end: bool) \
        -> tuple[_I64, list[Damage], Truncation | None]:
    """The samples the chain reaches from offset 0 (their offsets), the damage between,
    and a cut-short tail. One step per break, never more than one per candidate."""
    n, m = data.n, cand.size
    good = np.zeros(m, np.bool_)
    if m:
        good[:-1] = ends[:-1] == cand[1:]
        good[-1] = ends[-1] == n
    bad = np.flatnonzero(~good)
    runs: list[_I64] = []
    damage: list[Damage] = []
    truncated = None
    p = 0
    while p < n:
        i = int(np.searchsorted(cand, p))
        if i == m:  # no sample header from p on
            tail = data.raw[p:n]
            if exact_end or tail.any():
                truncated = Truncation(p, n - p)
            break
        if int(cand[i]) != p:
            damage.append(Damage(p, int(cand[i]) - p, 0, "no sample header ('TRhd') here"))
            p = int(cand[i])
            continue
        k = int(np.searchsorted(bad, i))
        j = int(bad[k]) if k < bad.size else m - 1  # the run's last sample
        if int(ends[j]) <= n:
            runs.append(cand[i : j + 1])
            p = int(ends[j])
            continue
        runs.append(cand[i:j])  # sample j claims more bytes than there are
        later = i + 1 + int(np.searchsorted(cand[i + 1 :], int(cand[j]), side="right"))
        if later < m:
            damage.append(Damage(int(cand[j]), int(cand[later] - cand[j]), 0,
                                 f"a sample header claims {int(ends[j] - cand[j])} bytes, "
                                 f"past the end of the data"))
            p = int(cand[later])
            continue
        truncated = Truncation(int(cand[j]), n - int(cand[j]))
        break
    chained = np.concatenate(runs) if runs else np.zeros(0, np.int64)
    return chained, damage, truncated


def _strings(data: bytes, at: int, end: int, uk: UkTracepoint) \
        -> tuple[list[int], list[bytes]] | None:
    """One sample's arguments when some are strings; None if they do not fill it exactly."""
    words: list[int] = []
    texts: list[bytes] = []
    for width, is_string in zip(uk.sizes, uk.strings, strict=True):
        if is_string:
            length = data[at] if at < end else 0
            if at + 1 + length > end:
                return None
            words.append(len(texts))
            texts.append(data[at + 1 : at + 1 + length])
            at += 1 + length
        else:
            if at + width > end:
                return None
            words.append(int.from_bytes(data[at : at + width], "little"))
            at += width
    return (words, texts) if at == end else None


def _signed(values: _U64, width: int) -> _U64:
    """Two's complement of ``width`` bytes, sign-extended to 64 bits."""
    if width == 8:
        return values
    sign = np.int64(1 << (8 * width - 1))
    extended: _U64 = ((values.astype(np.int64) ^ sign) - sign).view(np.uint64)
    return extended


def _complete(cand: _I64, ends: _I64, n: int) -> bool:
    """True when the candidates are exactly one unbroken chain from 0 to ``n``."""
    return bool(cand.size and cand[0] == 0 and ends[-1] == n and
                (ends[:-1] == cand[1:]).all())


class _Columns:
    """The model's columns for the chained samples while the arguments are filled in,
    argument-major (one 1-D assignment per argument)."""

    def __init__(self, n: int, width: int) -> None:
        self.ids = np.full(n, -1, np.int64)
        self.keep = np.ones(n, np.bool_)
        self.slots = np.ones(n, np.uint8)  # the model's record size: 1 + its words / 2
        self.args = np.zeros((width, n), np.uint64)
        self.strings: dict[int, bytes] = {}


def _fill(cols: _Columns, rows: npt.NDArray[np.intp], uk_tp: UkTracepoint, data: bytes,
          buf: _Bytes, pos: _I64, size: _I64, header: HeaderLayout,
          damage: list[Damage]) -> None:
    """The arguments of one tracepoint's samples (``rows``); misfits are damage."""
    tp = uk_tp.tracepoint
    cols.ids[rows] = tp.id
    cols.slots[rows] = 1 + (tp.nargs + 1) // 2
    fixed = uk_tp.fixed_size
    if fixed is None:  # a string argument: sample by sample
        for r in rows.tolist():
            at = int(pos[r]) + header.size
            got = _strings(data, at, at + int(size[r]), uk_tp)
            if got is None:
                cols.keep[r] = False
                damage.append(Damage(int(pos[r]), header.size + int(size[r]), 0,
                                     f"a sample of {tp.name} whose {int(size[r])} bytes "
                                     "are not its arguments"))
                continue
            cols.args[: tp.nargs, r] = got[0]
            cols.strings[r] = b"\0".join(got[1])
        return
    fits = size[rows] == fixed
    if not fits.all():
        for r in rows[~fits].tolist():
            cols.keep[r] = False
            damage.append(Damage(int(pos[r]), header.size + int(size[r]), 0,
                                 f"a sample of {tp.name} with {int(size[r])} argument bytes "
                                 f"(its tracepoint has {fixed})"))
        rows = rows[fits]
    where = pos[rows] + header.size
    for k, w in enumerate(uk_tp.sizes):
        values = buf.word(where, w)
        cols.args[k][rows] = _signed(values, w) if tp.arg_types[k] == ARG_SIGNED else values
        where = where + w


def decode_samples(data: bytes, uk: UkTracepoints, *, exact_end: bool = True,
                   cpu_count: int = 1) -> Decoded:
    """Every sample in ``data`` (a buffer's used bytes). ``exact_end``: ``data`` ends where
    the guest's write pointer was, so bytes after the last sample are a sample being
    written (a truncation); otherwise zeros there are just unused space."""
    h = uk.header
    buf = _Bytes(data)
    cand = buf.candidates(h, aligned_only=True)  # most buffers: all samples 4-aligned
    ends = cand + h.size + buf.u32(cand + h.length).astype(np.int64)
    if not _complete(cand, ends, buf.n):
        cand = buf.candidates(h)
        ends = cand + h.size + buf.u32(cand + h.length).astype(np.int64)
    pos, damage, truncated = _chain(buf, cand, ends, exact_end)
    size = buf.u32(pos + h.length).astype(np.int64)
    tsc = buf.word(pos + h.time, 8)
    cookie = buf.word(pos + h.cookie, h.cookie_size)
    warnings: list[str] = []

    defs = sorted(uk.by_cookie.values(), key=lambda u: u.cookie)
    cols = _Columns(pos.size, max((u.tracepoint.nargs for u in defs), default=0))
    known = np.array([u.cookie for u in defs], np.uint64)
    which = np.minimum(np.searchsorted(known, cookie), max(len(defs) - 1, 0))
    found = known[which] == cookie if defs else np.zeros(pos.size, np.bool_)
    present = np.flatnonzero(np.bincount(which[found], minlength=len(defs)))
    for d in present.tolist():
        rows = np.flatnonzero(found & (which == d)) if present.size > 1 else \
            np.flatnonzero(found)
        _fill(cols, rows, defs[d], data, buf, pos, size, h, damage)
    count = uk.tracepoints.count
    unknown = np.flatnonzero(~found)
    if unknown.size:
        codes, rank = np.unique(cookie[unknown], return_inverse=True)
        cols.ids[unknown] = np.minimum(count + rank, RESERVED_FIRST - 1)
        warnings.append(f"{unknown.size} sample(s) name {codes.size} cookie(s) that no "
                        f"record in .uk_tracepoints_list has (e.g. {int(codes[0]):#x}): "
                        "shown by id; is the ELF the image's own?")

    keep = cols.keep
    sel: npt.NDArray[np.intp] | slice = slice(None) if keep.all() else np.flatnonzero(keep)
    n = int(keep.sum())
    renumber = np.cumsum(keep) - 1  # old row -> new row
    records = Records(
        tsc[sel], cols.ids[sel].astype(np.uint16), np.zeros(n, np.uint8), cols.slots[sel],
        (np.arange(n) & 0xFFFF).astype(np.uint16), np.zeros(n, np.uint16),
        np.zeros(n, np.uint32), cols.args[:, sel].T,
        {int(renumber[r]): text for r, text in cols.strings.items() if keep[r]})
    kept = pos[sel]
    damage = [Damage(d.offset, d.skipped, int(np.searchsorted(kept, d.offset)), d.reason)
              for d in sorted(damage, key=lambda d: d.offset)]
    session = Session(0, session_header(cpu_count), 0, 0)
    return Decoded(records, [session], damage, warnings, truncated, None, len(data))
