"""Where each record of a batch belongs, found with numpy: the span a span-begin's parent
is, the span a span-end closes, the span a tracepoint is an event of.

It is the span builder's fast path (tracers/export/spans.py walks records one at a time,
which costs microseconds a record; this costs a few numpy passes a batch). It answers only
for batches that nest cleanly, where both ways must agree: every end closes the innermost
open span of its thread and has its name, and no begin goes past the depth limit. For any
other batch it answers None and the builder walks it record by record, so the careful
rules (an end closing a span further out, counted limits) stay in one place.

The idea: per thread, the depth before each record is a running sum (+1 a begin, -1 an
end). A begin at depth L opens the span of level L; an end or event at depth L belongs to
level L - 1; and the span of a level at a record is the latest begin of that level before
it on its thread, or, with none in the batch, the one at that level of the spans the
thread had open when the batch began ("carried").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["BEGIN", "END", "EVENT", "NONE", "OTHER", "Nesting", "nest"]

EVENT, BEGIN, END, OTHER = 0, 1, 2, 3  # a record's kind here; OTHER: only the walk takes it
NONE = -(1 << 30)  # a reference to no span: an outermost begin's parent, an event outside

_I64 = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Nesting:
    """Positions index the batch's rows. A span reference is the index of a begin in
    ``begins`` (>= 0), ``-1 - L`` for the thread's carried span of level L, or NONE.
    ``still_open``: per thread id, the references of the spans open after the batch,
    outermost first."""

    begins: _I64
    begin_level: _I64  # the depth a begin opens at (0: outermost)
    begin_parent: _I64
    ends: _I64
    end_span: _I64
    events: _I64
    event_span: _I64
    still_open: dict[int, list[int]]


def nest(tids: npt.NDArray[np.integer], kinds: npt.NDArray[np.integer],
         names: npt.NDArray[np.integer], carried: dict[int, list[int]],
         max_depth: int) -> Nesting | None:
    """``tids``, ``kinds``, ``names`` (a span-begin's or -end's name as a number) per row;
    ``carried``: per thread id, the names of its open spans, outermost first."""
    m = len(tids)
    if (kinds == OTHER).any():
        return None
    uniq, group = np.unique(tids, return_inverse=True)
    group = group.astype(np.int64)
    depth0 = np.array([len(carried.get(int(t), ())) for t in uniq.tolist()], np.int64)
    delta = (kinds == BEGIN).astype(np.int64) - (kinds == END)
    by_group = np.argsort(group, kind="stable")
    gs, ds = group[by_group], delta[by_group]
    before = np.cumsum(ds) - ds  # running depth, not yet per thread
    first = np.searchsorted(gs, np.arange(len(uniq)))
    depth = np.empty(m, np.int64)
    depth[by_group] = depth0[gs] + before - before[first][gs]
    is_begin, is_end = kinds == BEGIN, kinds == END
    if (depth[is_end] < 1).any() or (depth[is_begin] >= max_depth).any():
        return None
    level = np.where(is_begin, depth, depth - 1)
    levels = max_depth + 1
    begins = np.flatnonzero(is_begin)
    bkey = (group[begins] * levels + level[begins]) * (m + 1) + begins
    border = np.argsort(bkey, kind="stable")
    bsorted = bkey[border]

    def span_at(g: _I64, lv: _I64, at: _I64) -> _I64:
        """The span of level ``lv`` at position ``at`` on thread (group) ``g``."""
        cell = g * levels + lv
        if not len(bsorted):  # no begin in the batch: only spans carried in
            return np.where(lv < 0, NONE, -1 - lv)
        j = np.searchsorted(bsorted, cell * (m + 1) + at) - 1
        found = (j >= 0) & (bsorted[np.maximum(j, 0)] // (m + 1) == cell)
        ref = np.where(found, border[np.maximum(j, 0)], -1 - lv)
        return np.where(lv < 0, NONE, ref)

    begin_parent = span_at(group[begins], level[begins] - 1, begins)
    ends = np.flatnonzero(is_end)
    end_span = span_at(group[ends], level[ends], ends)
    events = np.flatnonzero(kinds == EVENT)
    event_span = span_at(group[events], level[events], events)
    # an end must have the name of the span it closes
    own = end_span >= 0
    if (names[begins[end_span[own]]] != names[ends[own]]).any():
        return None
    uniq_list = uniq.tolist()
    for e, ref in zip(ends[~own].tolist(), end_span[~own].tolist(), strict=True):
        if carried[int(tids[e])][-1 - ref] != int(names[e]):
            return None
    last = depth0 + np.bincount(group, delta, minlength=len(uniq)).astype(np.int64)
    still_open: dict[int, list[int]] = {}
    for g, tid in enumerate(uniq_list):
        lv = np.arange(int(last[g]), dtype=np.int64)
        still_open[int(tid)] = span_at(np.full(len(lv), g, np.int64), lv,
                                       np.full(len(lv), m, np.int64)).tolist()
    return Nesting(begins, level[begins], begin_parent, ends, end_span, events, event_span, still_open)
