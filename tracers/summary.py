"""``trace stats`` over a stream of any size: counts folded batch by batch.

It exists so that stats take memory bounded by one decoded batch, not by the recording
(a recording may be gigabytes): each batch's :class:`~tracers.model.TraceModel` is
folded into counters (events per tracepoint and thread, duration, spans, loss per CPU)
and dropped. Loss per CPU needs the records since the CPU's last SYNC to check the next
gap exactly (FORMAT.md 3.2), so those few rows carry over to the next batch.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt

from tracers.format import RESERVED_FIRST
from tracers.metadata import Tracepoints
from tracers.model import CpuLoss, CpuRows, SpanMatcher, TraceModel, cpu_loss
from tracers.records import Session

__all__ = ["LossCounter", "StatsAccumulator"]

CARRY = 1 << 16  # rows of a CPU carried to the next batch at most (SYNCs come every 4096)


class LossCounter:
    """Loss per (session, CPU) over consecutive batches.

    A batch's rows of a CPU are counted together with the rows carried from the batch
    before (from that CPU's last SYNC on), minus what those carried rows alone count:
    the sum over batches is the count over the whole stream, with each gap checked
    against the SYNCs around it."""

    def __init__(self) -> None:
        self.totals: dict[tuple[int, int], CpuLoss] = {}
        self._carry: dict[tuple[int, int], CpuRows] = {}

    def add(self, model: TraceModel) -> None:
        for rows in model.cpu_rows():
            key = (rows.session, rows.cpu)
            prev = self._carry.get(key)
            combined = prev.then(rows) if prev is not None else rows
            whole = cpu_loss(combined)
            total = self.totals.get(key)
            if prev is None or total is None:
                self.totals[key] = whole
            else:
                part = cpu_loss(prev)
                self.totals[key] = replace(
                    total, records=total.records + whole.records - part.records,
                    gaps=total.gaps + whole.gaps - part.gaps,
                    lost_records=total.lost_records + whole.lost_records - part.lost_records,
                    damage_gaps=total.damage_gaps + whole.damage_gaps - part.damage_gaps,
                    agree=total.agree and whole.agree,
                    guest_lost_total=whole.guest_lost_total if whole.guest_lost_total
                    is not None else total.guest_lost_total)
            syncs = combined.syncs()
            at = max(int(syncs[-1]) if syncs.size else 0, len(combined) - CARRY)
            self._carry[key] = combined.tail(at)
        newest = max((s for s, _ in self._carry), default=0)
        for key in [k for k in self._carry if k[0] < newest]:  # that session has ended
            del self._carry[key]

    def result(self) -> list[CpuLoss]:
        return [self.totals[k] for k in sorted(self.totals)]


class StatsAccumulator:
    """What ``trace stats`` reports, folded from batches (:meth:`add`)."""

    def __init__(self, tracepoints: Tracepoints | None) -> None:
        self.tracepoints = tracepoints
        self.by_id = np.zeros(1 << 16, np.int64)
        self.by_tid = np.zeros(1 << 16, np.int64)
        self.names: dict[int, bytes] = {}
        self.records = 0
        self.tsc_range: dict[int, tuple[int, int]] = {}  # session -> first, last event TSC
        self.spans = SpanMatcher(tracepoints)
        self.span_count = 0
        self.unmatched_ends = 0
        self.loss = LossCounter()

    def add(self, model: TraceModel) -> None:
        r = model.records
        self.records += len(r)
        if not len(r):
            return
        # counted over all records, then the few reserved ones taken out: no gathers
        reserved = model.reserved
        self.by_id += np.bincount(r.id, minlength=1 << 16)
        self.by_id[RESERVED_FIRST:] = 0
        self.by_tid += np.bincount(r.tid, minlength=1 << 16)
        self.by_tid -= np.bincount(r.tid[reserved], minlength=1 << 16)
        self.names.update(model.thread_names)
        one = r.session[0] == r.session[-1] and len(model.sessions) <= r.session[0] + 1
        for s in [int(r.session[0])] if one else np.unique(r.session).tolist():
            lo_hi = _event_tsc_range(model, None if one else r.session == s)
            if lo_hi is not None:
                old = self.tsc_range.get(s, lo_hi)
                self.tsc_range[s] = (min(old[0], lo_hi[0]), max(old[1], lo_hi[1]))
        closed, unmatched = self.spans.feed(model)
        self.span_count += len(closed)
        self.unmatched_ends += len(unmatched)
        self.loss.add(model)

    @property
    def events(self) -> int:
        return int(self.by_id.sum())

    def duration_s(self, sessions: list[Session]) -> float:
        """From the first to the last event, summed over sessions."""
        by_index = {s.index: s.header for s in sessions}
        total = 0.0
        for s, (lo, hi) in self.tsc_range.items():
            if s in by_index:
                h = by_index[s]
                total += (_ns(hi - h.boot_tsc, h.tsc_hz) - _ns(lo - h.boot_tsc, h.tsc_hz)) / 1e9
        return total

    def counts_by_tracepoint(self) -> dict[int, int]:
        ids = np.flatnonzero(self.by_id)
        return dict(zip(ids.tolist(), self.by_id[ids].tolist(), strict=True))

    def counts_by_thread(self) -> dict[int, int]:
        tids = np.flatnonzero(self.by_tid)
        return dict(zip(tids.tolist(), self.by_tid[tids].tolist(), strict=True))

    def unterminated_spans(self) -> int:
        return len(self.spans.unterminated())


def _ns(ticks: int, hz: int) -> int:
    """TSC ticks to ns as TraceModel.ns_since_boot rounds them."""
    return ticks // hz * 1_000_000_000 + ticks % hz * 1_000_000_000 // hz


def _event_tsc_range(model: TraceModel, mask: npt.NDArray[np.bool_] | None
                     ) -> tuple[int, int] | None:
    """The first and last TSC of the events (of one session, ``mask``): min and max over
    all records are the events' unless a reserved record holds one of them."""
    r, events = model.records, model.is_event
    if mask is None and len(r):
        lo, hi = int(r.tsc.argmin()), int(r.tsc.argmax())
        if events[lo] and events[hi]:
            return int(r.tsc[lo]), int(r.tsc[hi])
    tsc = r.tsc[events if mask is None else events & mask]
    return (int(tsc.min()), int(tsc.max())) if tsc.size else None
