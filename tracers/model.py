"""The event model over decoded records: merged order, time, spans, loss, thread names.

Everything is computed from :class:`~tracers.records.Decoded` columns, vectorised where
the work is per record (time, loss, counts); spans walk only span records. Time: TSC ->
ns since boot from each session's header (``tsc_hz``, ``boot_tsc``) -> wall clock from an
anchor, the host's clock when that session's header arrived (tracers/channel.py records
it) matched with the header's ``header_tsc``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from tracers.format import ID_LOST, ID_SYNC, ID_THREAD_NAME, RESERVED_FIRST, RESERVED_NAMES
from tracers.metadata import KIND_SPAN_BEGIN, KIND_SPAN_END, Tracepoints
from tracers.records import Decoded, Records

__all__ = ["CpuLoss", "CpuRows", "Span", "SpanMatcher", "TraceModel", "UnmatchedEnd", "cpu_loss",
           "tracepoint_name"]


def tracepoint_name(tracepoints: Tracepoints | None, ident: int) -> str:
    """A record id's name: a reserved record's, a tracepoint's, or ``tp#ID``."""
    if ident >= RESERVED_FIRST:
        return RESERVED_NAMES.get(ident, f"reserved#{ident:#06x}")
    tp = tracepoints.get(ident) if tracepoints else None
    return tp.name if tp else f"tp#{ident}"


@dataclass(frozen=True)
class Span:
    """A begin/end pair on one thread; ``end`` is None when the stream has no end for it."""

    name: str
    session: int
    tid: int
    depth: int  # spans open on this thread when it began
    begin: int  # record index
    end: int | None
    begin_tsc: int
    end_tsc: int | None

    @property
    def unterminated(self) -> bool:
        return self.end is None

    def duration_ns(self, hz: int) -> int | None:
        if self.end_tsc is None:
            return None
        return (self.end_tsc - self.begin_tsc) * 1_000_000_000 // hz


@dataclass(frozen=True)
class UnmatchedEnd:
    """A span-end with no open span of its name on its thread."""

    name: str
    session: int
    tid: int
    index: int


@dataclass(frozen=True)
class CpuLoss:
    """Loss on one CPU in one session, counted two ways that must agree.

    ``gaps``: the host's count, the sum of sequence gaps (mod 65536) between consecutive
    records of the CPU. ``lost_records``: the guest's claim, the sum of LOST.N that
    follow a gap. ``agree``: every gap is directly followed by a LOST record whose N is the
    gap mod 65536, and no LOST claims what the sequence does not show. Gaps across a
    damage region are ``damage_gaps``, not loss (unless a LOST explains them);
    ``lost_before_base`` is what a LOST that is the CPU's first record reports.
    """

    session: int
    cpu: int
    records: int
    gaps: int
    lost_records: int
    damage_gaps: int
    lost_before_base: int
    agree: bool
    guest_lost_total: int | None  # w3 of the CPU's last SYNC: all losses since boot


class TraceModel:
    """Decoded records plus what they mean. ``anchors`` maps a session index to the host's
    wall clock (ns since the epoch) when that session's stream header was received."""

    def __init__(self, decoded: Decoded, tracepoints: Tracepoints | None = None,
                 anchors: dict[int, int] | None = None) -> None:
        self.decoded = decoded
        self.records: Records = decoded.records
        self.sessions = decoded.sessions
        self.tracepoints = tracepoints
        self.anchors = anchors or {}

    # ---- order and time ----------------------------------------------------------------

    @cached_property
    def order(self) -> npt.NDArray[np.intp]:
        """Record indices merged across CPUs: by session, then (tsc, cpu, seq)."""
        r = self.records
        if len(r) == 0:
            return np.zeros(0, np.intp)
        # Stable sort on the TSC keeps each CPU's records in seq order (they are in stream
        # order and non-decreasing); only equal TSCs of different CPUs need a second look.
        by_tsc = np.argsort(r.tsc, kind="stable")
        ties = r.tsc[by_tsc][1:] == r.tsc[by_tsc][:-1]
        sessions_sorted = bool(np.all(r.session[1:] >= r.session[:-1]))
        if sessions_sorted and len(self.sessions) <= 1 and not ties.any():
            return by_tsc
        return np.lexsort((np.arange(len(r)), r.cpu, r.tsc, r.session))

    @cached_property
    def ns_since_boot(self) -> npt.NDArray[np.int64]:
        """Nanoseconds since the guest booted (its session's boot_tsc), per record."""
        r = self.records
        out = np.zeros(len(r), np.int64)
        for s in self.sessions:
            mask = r.session == s.index
            hz, boot = s.header.tsc_hz, s.header.boot_tsc
            delta = r.tsc[mask] - np.uint64(boot)  # plausible records have tsc >= boot_tsc
            whole, part = np.divmod(delta, np.uint64(hz))
            if hz < (1 << 33):  # part * 1e9 fits in 64 bits: exact integer arithmetic
                ns = whole * np.uint64(1_000_000_000) + part * np.uint64(1_000_000_000) // np.uint64(hz)
            else:
                ns = (delta.astype(np.float64) * (1e9 / hz)).astype(np.uint64)
            out[mask] = np.minimum(ns, np.uint64((1 << 63) - 1)).astype(np.int64)
        return out

    def wall_clock_ns(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
        """Wall clock (ns since the epoch) per record, and which records have one: those of
        sessions with an anchor and a header_tsc (a header read from memory has none)."""
        r = self.records
        wall = np.zeros(len(r), np.int64)
        known = np.zeros(len(r), np.bool_)
        for s in self.sessions:
            anchor = self.anchors.get(s.index)
            if anchor is None or s.header.header_tsc == 0:
                continue
            mask = r.session == s.index
            delta = r.tsc[mask].astype(np.float64) - float(s.header.header_tsc)
            wall[mask] = anchor + (delta * (1e9 / s.header.tsc_hz)).astype(np.int64)
            known[mask] = True
        return wall, known

    # ---- what happened -----------------------------------------------------------------

    @cached_property
    def is_event(self) -> npt.NDArray[np.bool_]:
        """Tracepoint events (not reserved in-band records)."""
        return self.records.id < RESERVED_FIRST

    @cached_property
    def reserved(self) -> npt.NDArray[np.intp]:
        """Indexes of the reserved (in-band) records: few, so most work starts here."""
        return np.flatnonzero(self.records.id >= RESERVED_FIRST)

    @cached_property
    def thread_names(self) -> dict[int, bytes]:
        """Thread id (low 16 bits, as records carry it) -> its latest name (raw bytes)."""
        r = self.records
        names: dict[int, bytes] = {}
        for i in self.reserved[r.id[self.reserved] == ID_THREAD_NAME].tolist():
            names[int(r.args[i, 0]) & 0xFFFF] = r.strings.get(r.start + i, b"")
        return names

    def tracepoint_name(self, ident: int) -> str:
        return tracepoint_name(self.tracepoints, ident)

    def counts_by_tracepoint(self) -> dict[int, int]:
        ids, counts = np.unique(self.records.id[self.is_event], return_counts=True)
        return dict(zip(ids.tolist(), counts.tolist(), strict=True))

    def counts_by_thread(self) -> dict[int, int]:
        tids, counts = np.unique(self.records.tid[self.is_event], return_counts=True)
        return dict(zip(tids.tolist(), counts.tolist(), strict=True))

    def duration_s(self) -> float:
        """From the first to the last event, summed over sessions."""
        total = 0.0
        ns = self.ns_since_boot
        for s in self.sessions:
            mask = (self.records.session == s.index) & self.is_event
            if mask.any():
                total += float(ns[mask].max() - ns[mask].min()) / 1e9
        return total

    # ---- spans -------------------------------------------------------------------------

    @cached_property
    def _spans(self) -> tuple[list[Span], list[UnmatchedEnd]]:
        matcher = SpanMatcher(self.tracepoints)
        spans, unmatched = matcher.feed(self)
        spans += matcher.unterminated()
        spans.sort(key=lambda s: (s.session, s.begin_tsc, s.begin))
        return spans, unmatched

    @property
    def spans(self) -> list[Span]:
        """Every span, unterminated ones included (``end`` None), by begin time."""
        return self._spans[0]

    @property
    def unmatched_ends(self) -> list[UnmatchedEnd]:
        return self._spans[1]

    # ---- loss --------------------------------------------------------------------------

    def loss(self) -> list[CpuLoss]:
        """Per (session, CPU): host-counted gaps vs in-band LOST totals (FORMAT.md 3.1)."""
        return [cpu_loss(rows) for rows in self.cpu_rows()]

    def cpu_rows(self) -> list[CpuRows]:
        """What loss counting needs of each (session, CPU)'s records, in stream order."""
        r = self.records
        damage_at = np.sort(np.array([d.record_index for d in self.decoded.damage], np.int64))
        out: list[CpuRows] = []
        # a session's records are contiguous in the stream; group each by CPU (u8: a
        # stable radix sort), keeping stream order inside a CPU
        cuts = np.flatnonzero(r.session[1:] != r.session[:-1]) + 1
        ids = r.id
        special = self.reserved[np.isin(ids[self.reserved], (ID_SYNC, ID_LOST))]
        for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(r)], strict=True):
            if a == b:
                continue
            for rows in _by_cpu(r.cpu, a, b):
                mine = special[(special >= a) & (special < b)]
                mine = mine[r.cpu[mine] == r.cpu[rows[0]]]
                marks = np.searchsorted(rows, mine)  # rows are ascending
                at = rows[marks]
                region = np.searchsorted(damage_at, rows + r.start, side="right") \
                    if damage_at.size else None
                out.append(CpuRows(
                    int(r.session[rows[0]]), int(r.cpu[rows[0]]), r.seq[rows].astype(np.int64),
                    region, marks, ids[at], *(_word(r, at, k) for k in (0, 2, 3))))
        return out


def _by_cpu(cpu: npt.NDArray[np.uint8], a: int, b: int) -> list[npt.NDArray[np.intp]]:
    """Row indexes in [a, b) of each CPU, ascending: a pass per CPU for a few CPUs,
    else one stable (radix) sort on the u8."""
    present = np.flatnonzero(np.bincount(cpu[a:b], minlength=256))
    if len(present) <= 4:
        return [np.flatnonzero(cpu[a:b] == c) + a for c in present.tolist()]
    by_cpu = np.argsort(cpu[a:b], kind="stable") + a
    cpus = cpu[by_cpu]
    starts = np.flatnonzero(np.concatenate(([True], cpus[1:] != cpus[:-1])))
    return np.split(by_cpu, starts[1:])


def _word(r: Records, rows: npt.NDArray[np.intp], k: int) -> npt.NDArray[np.uint64]:
    """Payload word ``k`` of ``rows`` (0 where the columns are narrower)."""
    return r.args[:, k][rows] if r.args.shape[1] > k else np.zeros(len(rows), np.uint64)


class SpanMatcher:
    """Pairs span-begin and span-end records batch by batch (spans nest per thread,
    FORMAT.md section 6): what is open carries over to the next batch."""

    def __init__(self, tracepoints: Tracepoints | None) -> None:
        self.tracepoints = tracepoints
        self.kinds = {tp.id: tp.kind for tp in tracepoints.by_id.values()
                      if tp.kind in (KIND_SPAN_BEGIN, KIND_SPAN_END)} if tracepoints else {}
        # (session, tid) -> name -> stack of open spans (begin index, tsc, depth)
        self.open: dict[tuple[int, int], dict[str, list[tuple[int, int, int]]]] = {}
        self.depth: dict[tuple[int, int], int] = {}

    def feed(self, model: TraceModel) -> tuple[list[Span], list[UnmatchedEnd]]:
        """The spans that end in this batch and the ends that match no begin."""
        tps, kinds = self.tracepoints, self.kinds
        if tps is None or not kinds:
            return [], []
        r = model.records
        ordered = model.order
        marks = np.isin(r.id[ordered], np.fromiter(kinds, np.uint16))
        spans: list[Span] = []
        unmatched: list[UnmatchedEnd] = []
        open_, depth = self.open, self.depth
        for i in ordered[marks].tolist():
            ident = int(r.id[i])
            tp = tps.by_id[ident]
            key = (int(r.session[i]), int(r.tid[i]))
            stacks = open_.setdefault(key, {})
            if kinds[ident] == KIND_SPAN_BEGIN:
                stacks.setdefault(tp.name, []).append((r.start + i, int(r.tsc[i]),
                                                       depth.get(key, 0)))
                depth[key] = depth.get(key, 0) + 1
                continue
            stack = stacks.get(tp.name)
            if not stack:
                unmatched.append(UnmatchedEnd(tp.name, key[0], key[1], r.start + i))
                continue
            begin, tsc, d = stack.pop()
            depth[key] = max(depth.get(key, 1) - 1, 0)
            spans.append(Span(tp.name, key[0], key[1], d, begin, r.start + i, tsc,
                              int(r.tsc[i])))
        return spans, unmatched

    def unterminated(self) -> list[Span]:
        """The spans still open."""
        return [Span(name, session, tid, d, begin, None, tsc, None)
                for (session, tid), stacks in self.open.items()
                for name, stack in stacks.items() for begin, tsc, d in stack]


@dataclass(frozen=True)
class CpuRows:
    """One CPU's records in one session, in stream order, as loss counting sees them: the
    seq of each, the damage regions before each (a count; None: no damage), and where the
    SYNC and LOST records are (``marks``, indexes into the rows) with their id and
    payload words 0, 2 and 3."""

    session: int
    cpu: int
    seq: npt.NDArray[np.int64]
    region: npt.NDArray[np.int64] | None
    marks: npt.NDArray[np.intp]
    mid: npt.NDArray[np.uint16]
    w0: npt.NDArray[np.uint64]
    w2: npt.NDArray[np.uint64]
    w3: npt.NDArray[np.uint64]

    def __len__(self) -> int:
        return int(self.seq.shape[0])

    def tail(self, start: int) -> CpuRows:
        """The rows from ``start`` on."""
        keep = self.marks >= start
        return CpuRows(self.session, self.cpu, self.seq[start:],
                       None if self.region is None else self.region[start:],
                       self.marks[keep] - start, self.mid[keep], self.w0[keep],
                       self.w2[keep], self.w3[keep])

    def then(self, more: CpuRows) -> CpuRows:
        """These rows followed by ``more`` (the same CPU, later in the stream)."""
        if self.region is None and more.region is None:
            region = None
        else:
            region = np.concatenate([np.zeros(len(x), np.int64) if x.region is None
                                     else x.region for x in (self, more)])
        return CpuRows(self.session, self.cpu, np.concatenate((self.seq, more.seq)), region,
                       np.concatenate((self.marks, more.marks + len(self))),
                       np.concatenate((self.mid, more.mid)), np.concatenate((self.w0, more.w0)),
                       np.concatenate((self.w2, more.w2)), np.concatenate((self.w3, more.w3)))

    def syncs(self) -> npt.NDArray[np.intp]:
        """Indexes (into the rows) of the SYNC records."""
        found: npt.NDArray[np.intp] = self.marks[self.mid == ID_SYNC]
        return found


def _exact_gaps(rows: CpuRows, gap: npt.NDArray[np.int64], across: npt.NDArray[np.bool_]
                ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Gaps with the multiples of 65536 the 16-bit wire seq cannot show put back.

    Every SYNC carries the CPU's full 64-bit seq (and the stub writes one right after
    each LOST), so between two SYNCs the host knows exactly how many records are
    missing (FORMAT.md 3.2); the difference from the 16-bit gaps belongs to the
    largest gap in between, the drop a LOST reports. Gaps across damage stay as seen.
    Also returns which gaps a pair of SYNCs checked (the rest are only known mod 65536).
    """
    exact = gap.copy()
    checked = np.zeros(len(gap), np.bool_)
    is_sync = rows.mid == ID_SYNC
    syncs = rows.marks[is_sync]
    if syncs.size < 2:
        return exact, checked
    full = rows.w2[is_sync].astype(np.int64)
    # the 16-bit gaps alone already account for most pairs: look only where they do not
    summed = np.concatenate(([0], np.cumsum(gap)))
    missing = (full[1:] - full[:-1]) - (syncs[1:] - syncs[:-1]) \
        - (summed[syncs[1:]] - summed[syncs[:-1]])
    for i in np.flatnonzero(missing != 0).tolist() if not across.any() else \
            range(syncs.size - 1):
        a, b = int(syncs[i]), int(syncs[i + 1])
        if b - a < 1 or across[a:b].any():
            continue
        extra = int(missing[i])
        if extra >= 0 and extra % 65536 == 0:
            exact[a + int(np.argmax(gap[a:b]))] += extra
    ok = (missing >= 0) & (missing % 65536 == 0)
    if across.any():
        crossed = np.concatenate(([0], np.cumsum(across)))
        ok &= crossed[syncs[1:]] == crossed[syncs[:-1]]
    # the gaps between each checked pair of SYNCs are exact
    mark = np.zeros(len(gap) + 1, np.int64)
    good = np.flatnonzero(ok & (syncs[1:] > syncs[:-1]))
    np.add.at(mark, syncs[:-1][good], 1)
    np.add.at(mark, syncs[1:][good], -1)
    checked = np.cumsum(mark)[: len(gap)] > 0
    return exact, checked


def cpu_loss(rows: CpuRows) -> CpuLoss:
    """Loss of one CPU in one session (FORMAT.md 3.1, 3.2)."""
    gap = (rows.seq[1:] - rows.seq[:-1] - 1) % 65536
    # across: a damage region lies between the two records
    across = np.zeros(len(gap), np.bool_) if rows.region is None else \
        rows.region[1:] != rows.region[:-1]
    exact, checked = _exact_gaps(rows, gap, across)
    is_lost = (rows.mid == ID_LOST) & (rows.marks >= 1)
    lost = rows.marks[is_lost] - 1  # gaps whose second record is a LOST
    n_lost = rows.w0[is_lost]
    explained = np.zeros(len(gap), np.bool_)
    explained[lost] = np.where(
        checked[lost], n_lost.astype(np.int64) == exact[lost],  # exact, from SYNCs
        (n_lost % np.uint64(65536)).astype(np.int64) == gap[lost])  # only mod 65536
    gap = exact
    loss_gap = (gap > 0) & (~across | explained)
    damage_gap = (gap > 0) & across & ~explained
    syncs = np.flatnonzero(rows.mid == ID_SYNC)
    first_lost = rows.marks.size > 0 and rows.marks[0] == 0 and rows.mid[0] == ID_LOST
    return CpuLoss(
        session=rows.session, cpu=rows.cpu, records=len(rows),
        gaps=int(gap[loss_gap].sum()), lost_records=int(n_lost.sum()),
        damage_gaps=int(gap[damage_gap].sum()),
        lost_before_base=int(rows.w0[0]) if first_lost else 0,
        agree=bool(np.all(explained[loss_gap]) and np.all(explained[lost])),
        guest_lost_total=int(rows.w3[syncs[-1]]) if syncs.size else None)
