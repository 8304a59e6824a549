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
from typing import Any

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
    def thread_names(self) -> dict[int, bytes]:
        """Thread id (low 16 bits, as records carry it) -> its latest name (raw bytes)."""
        r = self.records
        names: dict[int, bytes] = {}
        for i in np.flatnonzero(r.id == ID_THREAD_NAME).tolist():
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
        width = r.args.shape[1]
        for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(r)], strict=True):
            if a == b:
                continue
            by_cpu = np.argsort(r.cpu[a:b], kind="stable") + a
            cpus = r.cpu[by_cpu]
            starts = np.flatnonzero(np.concatenate(([True], cpus[1:] != cpus[:-1])))
            ends = np.concatenate((starts[1:], [len(by_cpu)]))
            for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
                rows = by_cpu[s:e]

                def word(k: int, rows: npt.NDArray[np.intp] = rows) -> npt.NDArray[np.uint64]:
                    return r.args[rows, k] if width > k else np.zeros(len(rows), np.uint64)

                out.append(CpuRows(
                    int(r.session[rows[0]]), int(r.cpu[rows[0]]), r.seq[rows].astype(np.int64),
                    r.id[rows], word(0), word(2), word(3),
                    np.searchsorted(damage_at, rows + r.start, side="right")))
        return out


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
    """One CPU's records in one session, in stream order, as loss counting sees them:
    seq, id, payload words 0, 2, 3 and the damage regions before each (a count)."""

    session: int
    cpu: int
    seq: npt.NDArray[np.int64]
    id: npt.NDArray[np.uint16]
    w0: npt.NDArray[np.uint64]
    w2: npt.NDArray[np.uint64]
    w3: npt.NDArray[np.uint64]
    region: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.seq.shape[0])

    def __getitem__(self, part: slice) -> CpuRows:
        return CpuRows(self.session, self.cpu, self.seq[part], self.id[part], self.w0[part],
                       self.w2[part], self.w3[part], self.region[part])

    def then(self, more: CpuRows) -> CpuRows:
        """These rows followed by ``more`` (the same CPU, later in the stream)."""
        def cat(name: str) -> Any:
            return np.concatenate((getattr(self, name), getattr(more, name)))

        return CpuRows(self.session, self.cpu, cat("seq"), cat("id"), cat("w0"), cat("w2"),
                       cat("w3"), cat("region"))


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
    syncs = np.flatnonzero(rows.id == ID_SYNC)
    if syncs.size < 2:
        return exact, checked
    full = rows.w2[syncs].astype(np.int64)
    for i in range(syncs.size - 1):
        a, b, full_a, full_b = int(syncs[i]), int(syncs[i + 1]), full[i], full[i + 1]
        if b - a < 1 or across[a:b].any():
            continue
        missing = int(full_b - full_a) - int(b - a) - int(gap[a:b].sum())
        if missing >= 0 and missing % 65536 == 0:
            exact[a + int(np.argmax(gap[a:b]))] += missing
            checked[a:b] = True
    return exact, checked


def cpu_loss(rows: CpuRows) -> CpuLoss:
    """Loss of one CPU in one session (FORMAT.md 3.1, 3.2)."""
    gap = (rows.seq[1:] - rows.seq[:-1] - 1) % 65536
    across = rows.region[1:] != rows.region[:-1]  # a damage region lies between the two
    exact, checked = _exact_gaps(rows, gap, across)
    lost = np.flatnonzero(rows.id[1:] == ID_LOST)  # pairs whose second is a LOST
    n_lost = rows.w0[1:][lost]
    explained = np.zeros(len(gap), np.bool_)
    explained[lost] = np.where(
        checked[lost], n_lost.astype(np.int64) == exact[lost],  # exact, from SYNCs
        (n_lost % np.uint64(65536)).astype(np.int64) == gap[lost])  # only mod 65536
    gap = exact
    loss_gap = (gap > 0) & (~across | explained)
    damage_gap = (gap > 0) & across & ~explained
    syncs = np.flatnonzero(rows.id == ID_SYNC)
    return CpuLoss(
        session=rows.session, cpu=rows.cpu, records=len(rows),
        gaps=int(gap[loss_gap].sum()), lost_records=int(n_lost.sum()),
        damage_gaps=int(gap[damage_gap].sum()),
        lost_before_base=int(rows.w0[0]) if len(rows) and rows.id[0] == ID_LOST else 0,
        agree=bool(np.all(explained[loss_gap]) and np.all(explained[lost])),
        guest_lost_total=int(rows.w3[syncs[-1]]) if syncs.size else None)
