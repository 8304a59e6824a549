"""Many records encoded at once: byte strings assembled with numpy, one field at a time
for every record, instead of one record at a time in Python.

The span exporters' column paths (OTLP protobuf, OTLP/JSON, Jaeger JSON) describe a record
as a row of :class:`Piece`\\ s — a constant, a fixed-width field, a decimal number, a
varint, an entry of a small table — and :func:`strings` lays each record's pieces end to
end. A piece is a byte matrix, one row a record, whose row i holds its bytes in its first
(or last) ``length[i]`` columns: records whose pieces have the same lengths are laid out
as one concatenation of column blocks, with no per-byte index arrays. Messages nest
without being assembled twice (a protobuf length prefix is the varint of :func:`size`);
records are made a group at a time (:class:`Group`), and :func:`spans_with_events` lays
out a span's head, its events and its tail as one string.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["Group", "Laid", "Piece", "choose", "const", "decimal", "event_rank", "fixed",
           "hexed", "lay", "present", "size", "spans_with_events", "strings", "table", "varint"]

_U8 = npt.NDArray[np.uint8]
_I64 = npt.NDArray[np.int64]
_DIGITS4 = np.frombuffer(b"".join(b"%04d" % k for k in range(10_000)), np.uint32)
_10K = np.uint64(10_000)
_CHUNK = 1 << 18  # bytes laid out at a time
_POW10 = np.array([10 ** k for k in range(20)], np.uint64)


@dataclass(frozen=True)
class Piece:
    """Per record i, the first ``length[i]`` bytes of row i of ``mat``, or with ``right``
    its last ones. ``same``: every record's length is the same (a constant, an id)."""

    mat: _U8
    length: _I64
    right: bool = False
    same: bool = False

    def __len__(self) -> int:
        return len(self.length)

    def mask(self) -> npt.NDArray[np.bool_]:
        column = np.arange(self.mat.shape[1])
        inside: npt.NDArray[np.bool_] = column >= self.mat.shape[1] - self.length[:, None] \
            if self.right else column < self.length[:, None]
        return inside

    def take(self, rows: npt.NDArray[np.integer]) -> Piece:
        """These records' pieces."""
        mat = np.broadcast_to(self.mat[0], (len(rows), self.mat.shape[1])) \
            if self.mat.strides[0] == 0 and len(self.mat) else self.mat[rows]
        return Piece(mat, self.length[rows], self.right, self.same)

    def columns(self, size: int) -> _U8:
        """Every row's bytes when each has ``size`` of them."""
        return self.mat[:, self.mat.shape[1] - size:] if self.right else self.mat[:, :size]


@dataclass(frozen=True)
class Group:
    """Records of one kind made together: ``rows`` (their numbers), and their pieces."""

    rows: npt.NDArray[np.integer]
    pieces: list[Piece]


@dataclass(frozen=True)
class Laid:
    """Spans laid out as byte strings, one a span (an array of objects: taken in any
    order at once), ready for ``b"".join``."""

    spans: npt.NDArray[np.object_]

    def __len__(self) -> int:
        return len(self.spans)

    def text(self, first: int, last: int) -> bytes:
        return b"".join(self.spans[first:last].tolist())


def strings(pieces: list[Piece]) -> list[bytes]:
    """Each record's pieces end to end, one byte string a record.

    Records are taken a layout at a time (the same length of every piece: most records
    of a group share a few): then each piece is a block of columns and a record a row of
    their concatenation, with no mask. Too many layouts (a few records each): the masks."""
    n = len(pieces[0])
    if not n:
        return []
    key = np.zeros(n, np.int64)
    for p in pieces:
        if p.same:
            continue
        low = int(p.length.min())
        span = int(p.length.max()) - low + 1
        if span == 1:
            continue
        if (int(key.max()) + 1) * span >= 1 << 62:  # renumbered densely before it overflows
            key = np.unique(key, return_inverse=True)[1].astype(np.int64).reshape(n)
        key = key * span + (p.length - low)
    layouts, which = np.unique(key, return_inverse=True)
    if len(layouts) > max(16, n // 64):
        data = lay(pieces).tobytes()
        ends = np.cumsum(size(pieces)).tolist()
        return [data[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    if len(layouts) == 1:
        return _rows(pieces, None, n)
    by_layout = np.argsort(which.reshape(n), kind="stable")
    cuts = np.searchsorted(which.reshape(n)[by_layout], np.arange(1, len(layouts)))
    out = np.empty(n, object)
    for rows in np.split(by_layout, cuts):
        out[rows] = _rows(pieces, rows, len(rows))
    made: list[bytes] = out.tolist()
    return made


def _rows(pieces: list[Piece], rows: _I64 | None, n: int) -> list[bytes]:
    """The records ``rows`` (None: all), whose pieces have one length each: a template
    row of the constant pieces, copied to every record, then the other pieces (a copy a
    piece costs per record: constants are most pieces)."""
    first = 0 if rows is None else int(rows[0])
    widths = [int(p.length[first]) for p in pieces]
    template = np.empty(sum(widths), np.uint8)
    blocks = []
    at = 0
    for p, width in zip(pieces, widths, strict=True):
        if width:
            block = p.columns(width)
            if p.mat.strides[0] == 0:  # a constant: the same row for all
                template[at:at + width] = block[0]
            else:
                blocks.append((at, block if rows is None else block[rows]))
        at += width
    if not at:
        return [b""] * n
    step = max(1, _CHUNK // at)  # records a pass: a matrix the cache holds
    made: list[bytes] = []
    mat = np.empty((min(n, step), at), np.uint8)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        part = mat[:hi - lo]
        part[:] = template
        for start, block in blocks:
            part[:, start:start + block.shape[1]] = block[lo:hi]
        made += part.view(np.dtype((np.void, at))).ravel().tolist()  # type: ignore[arg-type]
    return made


SHAPED = 32  # spans of a shape laid out whole when there are at least this many of it


def spans_with_events(n: int, heads: list[Group], events: list[Group],
                      event_span: npt.NDArray[np.integer], tails: list[Group] | None = None) \
        -> Laid:
    """Per span its head, its events (sorted by span), then its tail (``tails``: the same
    groups of spans as ``heads``), one byte string a span.

    Spans of one shape (head group, and the group of each of their events in order) are
    laid out whole, as records of all those pieces: a few shapes hold most spans. The
    spans of rare shapes are joined from their parts."""
    count = np.bincount(event_span, minlength=n).astype(np.int64)
    first = np.cumsum(count) - count
    head_of, head_at = _membership(heads, n)
    event_of, event_at = _membership(events, len(event_span))
    key = head_of.copy()  # then a digit an event place: its group + 1, or 0 (none)
    for j in range(int(count.max()) if n else 0):
        more = np.flatnonzero(count > j)
        if int(key.max()) >= 1 << 40:  # renumbered densely before it overflows
            key = np.unique(key, return_inverse=True)[1].astype(np.int64).reshape(n)
        key *= len(events) + 1
        key[more] += event_of[first[more] + j] + 1
    which = np.unique(key, return_inverse=True)[1]
    which = which.reshape(n)
    sizes = np.bincount(which)
    out = np.empty(n, object)
    by_shape = np.argsort(which, kind="stable")
    for rows in np.split(by_shape, np.cumsum(sizes)[:-1]):
        if len(rows) < SHAPED:
            continue
        g = int(head_of[rows[0]])
        pieces = _take(heads[g], head_at[rows])
        for j in range(int(count[rows[0]])):
            ev = first[rows] + j
            pieces += _take(events[int(event_of[ev[0]])], event_at[ev])
        if tails is not None:
            pieces += _take(tails[g], head_at[rows])
        out[rows] = strings(pieces)
    rare = np.flatnonzero(sizes[which] < SHAPED)
    if len(rare):
        in_rare = np.isin(event_span, rare)
        ev_rows = np.flatnonzero(in_rare)
        parts = np.empty(len(event_span), object)
        parts[ev_rows] = _made(events, event_of[ev_rows], event_at[ev_rows])
        head = _made(heads, head_of[rare], head_at[rare])
        tail = _made(tails, head_of[rare], head_at[rare]) if tails is not None \
            else [b""] * len(rare)
        ev_list = parts.tolist()
        out[rare] = [b"".join([h, *ev_list[f:f + k], t]) for h, f, k, t in zip(
            head, first[rare].tolist(), count[rare].tolist(), tail, strict=True)]
    return Laid(out)


def _take(group: Group, at: _I64) -> list[Piece]:
    """The pieces of the group's records at places ``at`` (ascending: all of them are
    the group as it is)."""
    if len(at) == len(group.rows):
        return list(group.pieces)
    return [p.take(at) for p in group.pieces]


def _membership(groups: list[Group], n: int) -> tuple[_I64, _I64]:
    """Each record's group and its place in the group's rows."""
    of, at = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for g, group in enumerate(groups):
        of[group.rows] = g
        at[group.rows] = np.arange(len(group.rows))
    return of, at


def _made(groups: list[Group], of: _I64, at: _I64) -> list[bytes]:
    """The records at places ``at`` of groups ``of``, each a byte string."""
    out = np.empty(len(of), object)
    for g in np.unique(of).tolist():
        mine = np.flatnonzero(of == g)
        out[mine] = strings([p.take(at[mine]) for p in groups[g].pieces])
    made: list[bytes] = out.tolist()
    return made


def event_rank(event_span: npt.NDArray[np.integer], n: int) -> _I64:
    """Each event's place among its span's events (events sorted by span)."""
    count = np.bincount(event_span, minlength=n)
    rank: _I64 = np.arange(len(event_span)) - (np.cumsum(count) - count)[event_span]
    return rank


def size(pieces: list[Piece]) -> _I64:
    """Each record's length, its pieces end to end."""
    total = np.zeros(len(pieces[0]), np.int64)
    for p in pieces:
        total += p.length
    return total


def present(p: Piece, mask: npt.NDArray[np.bool_]) -> Piece:
    """``p`` where mask is set, nothing elsewhere."""
    if mask.all():
        return p
    return Piece(p.mat, np.where(mask, p.length, 0), p.right)


def const(data: bytes, n: int) -> Piece:
    row = np.frombuffer(data, np.uint8)
    return Piece(np.broadcast_to(row, (n, len(row))), np.full(n, len(row), np.int64),
                 same=True)


def fixed(matrix: _U8) -> Piece:
    """Row i of an (n, W) byte matrix."""
    return Piece(matrix, np.full(len(matrix), matrix.shape[1], np.int64), same=True)


def table(entries: list[bytes], index: npt.NDArray[np.integer]) -> Piece:
    """``entries[index[i]]`` for record i."""
    width = max((len(e) for e in entries), default=0)
    rows = np.zeros((len(entries), width), np.uint8)
    for k, e in enumerate(entries):
        rows[k, :len(e)] = np.frombuffer(e, np.uint8)
    lengths = np.array([len(e) for e in entries], np.int64)
    return Piece(rows[index], lengths[index])


def hexed(matrix: _U8) -> Piece:
    """Lowercase hex of each row of an (n, W) byte matrix."""
    text = np.ascontiguousarray(matrix).tobytes().hex().encode()
    return fixed(np.frombuffer(text, np.uint8).reshape(len(matrix), 2 * matrix.shape[1]))


def decimal(values: npt.NDArray[np.integer]) -> Piece:
    """Each unsigned value's decimal digits (right-aligned: made four at a time, from the
    lowest)."""
    v = values.astype(np.uint64)
    count = np.maximum(np.searchsorted(_POW10, v, side="right"), 1).astype(np.int64)
    width = int(count.max()) if len(v) else 1
    quads = (width + 3) // 4
    mat = np.empty((len(v), 4 * quads), np.uint8)
    words = mat.view(np.uint32)  # a word a quad: one gather of four digits
    for q in range(quads - 1, 0, -1):
        rest = v // _10K
        words[:, q] = _DIGITS4[(v - rest * _10K).astype(np.intp)]
        v = rest
    words[:, 0] = _DIGITS4[v.astype(np.intp)]
    return Piece(mat[:, 4 * quads - width:], count, right=True)


def varint(values: npt.NDArray[np.integer]) -> Piece:
    """Protobuf base-128 varints (an int64 as its two's complement: 10 bytes if < 0)."""
    v = values.astype(np.uint64)
    count = np.ones(len(v), np.int64)
    for k in range(1, 10):
        count += v >= np.uint64(1 << (7 * k))
    width = int(count.max()) if len(v) else 1
    shifts = np.arange(width, dtype=np.uint64) * np.uint64(7)
    groups = ((v[:, None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    groups |= (np.arange(width) < count[:, None] - 1).astype(np.uint8) << 7
    return Piece(groups, count)


def _left(p: Piece, width: int) -> _U8:
    """p's bytes at the start of rows ``width`` wide."""
    if not p.right and p.mat.shape[1] == width:
        return p.mat
    out = np.zeros((len(p), width), np.uint8)
    out[np.arange(width) < p.length[:, None]] = p.mat[p.mask()]
    return out


def choose(mask: npt.NDArray[np.bool_], yes: Piece, no: Piece) -> Piece:
    """``yes`` where mask is set, else ``no``."""
    if not mask.any():
        return no
    if mask.all():
        return yes
    width = max(yes.mat.shape[1], no.mat.shape[1])
    return Piece(np.where(mask[:, None], _left(yes, width), _left(no, width)),
                 np.where(mask, yes.length, no.length))


def lay(pieces: list[Piece]) -> _U8:
    """The records' bytes end to end, each record's pieces in order."""
    mats = [p.mat for p in pieces if p.mat.shape[1]]
    if not mats:
        return np.zeros(0, np.uint8)
    masks = [p.mask() for p in pieces if p.mat.shape[1]]
    return np.concatenate(mats, axis=1)[np.concatenate(masks, axis=1)]
