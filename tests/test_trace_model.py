"""The event model (tracers/model.py): merged order, time, spans, loss accounting, thread
names, on streams written by the test encoder (a stand-in for the guest stub)."""

from __future__ import annotations

import numpy as np

from tests.test_trace_decode import BOOT, HZ, Encoder
from tracers.decode import ID_LOST, decode
from tracers.metadata import KIND_EVENT, KIND_SPAN_BEGIN, KIND_SPAN_END, Tracepoint, Tracepoints
from tracers.model import TraceModel

BEGIN, END, TICK = 0, 1, 2
TRACEPOINTS = Tracepoints(
    build_id=bytes(range(20)).hex(), count=3,
    by_id={BEGIN: Tracepoint(BEGIN, KIND_SPAN_BEGIN, 1, 0, 10, (1,), "handle", "", ("req",), "m.c"),
           END: Tracepoint(END, KIND_SPAN_END, 1, 0, 20, (1,), "handle", "", ("req",), "m.c"),
           TICK: Tracepoint(TICK, KIND_EVENT, 2, 0, 30, (1, 2), "tick", "", ("a", "b"), "m.c")})


def model_of(enc: Encoder, **kw: object) -> TraceModel:
    return TraceModel(decode(enc.bytes(), tracepoint_count=3), TRACEPOINTS, **kw)  # type: ignore[arg-type]


def test_order_merges_cpus_by_tsc() -> None:
    enc = Encoder().header()
    enc.record(TICK, 1, [1, 0], tsc=BOOT + 3000)  # CPU 1's batch arrives first
    enc.record(TICK, 1, [2, 0], tsc=BOOT + 5000)
    enc.record(TICK, 0, [3, 0], tsc=BOOT + 4000)
    enc.record(TICK, 0, [4, 0], tsc=BOOT + 5000)  # same TSC as CPU 1's: CPU 0 first
    m = model_of(enc)
    assert m.records.args[m.order, 0].tolist() == [1, 3, 4, 2]


def test_time_since_boot_and_wall_clock() -> None:
    enc = Encoder().header(header_tsc=BOOT + 3 * HZ)
    enc.record(TICK, 0, [1, 1], tsc=BOOT + 3 * HZ + HZ // 2)
    enc.record(TICK, 0, [1, 1], tsc=BOOT + 10 * HZ + 1)
    m = model_of(enc, anchors={0: 1_700_000_000_000_000_000})
    assert m.ns_since_boot.tolist() == [3_500_000_000, 10_000_000_000]  # 1 tick = 1/3 ns
    wall, known = m.wall_clock_ns()
    assert known.all()
    assert wall.tolist() == [1_700_000_000_500_000_000, 1_700_000_007_000_000_000]
    _, known = model_of(enc).wall_clock_ns()
    assert not known.any()  # no anchor: no wall clock rather than a wrong one


def test_spans_nest_per_thread_lifo_and_keep_the_unterminated() -> None:
    enc = Encoder().header()
    enc.tid = [7, 8]
    enc.event(BEGIN, 0, 1)          # outer on tid 7
    enc.event(BEGIN, 0, 2)          # inner on tid 7
    enc.event(BEGIN, 1, 3)          # tid 8, never ended
    enc.event(END, 0, 2)            # closes the inner one
    enc.tid[1] = 7                  # tid 7 migrated to CPU 1
    enc.event(END, 1, 1)            # closes the outer one, on another CPU
    enc.event(END, 1, 9)            # no span open on tid 7 any more
    m = model_of(enc)
    spans = m.spans
    done = [(s.tid, s.depth, s.begin, s.end) for s in spans if not s.unterminated]
    assert sorted(done) == [(7, 0, 0, 4), (7, 1, 1, 3)]
    [open_span] = [s for s in spans if s.unterminated]
    assert (open_span.tid, open_span.begin, open_span.end) == (8, 2, None)
    [orphan] = m.unmatched_ends
    assert (orphan.tid, orphan.index, orphan.name) == (7, 5, "handle")
    assert spans[0].duration_ns(HZ) == (4 * 300) // 3


def test_spans_need_names_so_none_without_metadata() -> None:
    enc = Encoder().header()
    enc.event(BEGIN, 0, 1)
    enc.event(END, 0, 1)
    assert TraceModel(decode(enc.bytes())).spans == []


def test_loss_from_gaps_equals_the_lost_records() -> None:
    enc = Encoder(cpus=3).header()
    for i in range(100):
        enc.event(TICK, i % 2, i, i)
        if i % 17 == 0:
            enc.drop(i % 2, 1 + i % 5)
    enc.event(TICK, 2, 1, 1)
    loss = {x.cpu: x for x in model_of(enc).loss()}
    assert all(x.agree for x in loss.values())
    assert loss[0].gaps == loss[0].lost_records == enc.lost_total[0] > 0
    assert loss[1].gaps == loss[1].lost_records == enc.lost_total[1] > 0
    assert loss[2].gaps == 0 and loss[2].records == 1


def test_sequence_wraps_at_65536_without_loss() -> None:
    enc = Encoder(cpus=1).header()
    enc.seq[0] = 65_530
    for i in range(20):
        enc.event(TICK, 0, i, i)
    enc.drop(0, 3)  # across the wrap: seq 65550 & 0xffff
    enc.event(TICK, 0, 0, 0)
    [cpu0] = model_of(enc).loss()
    assert cpu0.gaps == cpu0.lost_records == 3 and cpu0.agree


def test_a_drop_of_more_than_65535_is_counted_exactly_from_the_syncs() -> None:
    enc = Encoder(cpus=1).header()
    enc.sync(0)
    enc.event(TICK, 0, 1, 1)
    enc.drop(0, 70_000)
    enc.sync(0)  # the stub writes a SYNC right after every LOST (FORMAT.md 3.2)
    [cpu0] = model_of(enc).loss()
    assert cpu0.lost_records == 70_000 and cpu0.gaps == 70_000 and cpu0.agree


def test_without_syncs_a_big_drop_agrees_only_modulo_the_wire() -> None:
    enc = Encoder(cpus=1).header()
    enc.event(TICK, 0, 1, 1)
    enc.drop(0, 70_000)
    [cpu0] = model_of(enc).loss()
    assert cpu0.lost_records == 70_000 and cpu0.gaps == 70_000 % 65_536 and cpu0.agree


def test_a_lost_record_that_overstates_by_65536_disagrees_with_the_syncs() -> None:
    enc = Encoder(cpus=1).header()
    enc.sync(0)
    enc.event(TICK, 0, 1, 1)
    first = enc.seq[0]
    enc.seq[0] += 10  # 10 records really dropped ...
    enc.record(ID_LOST, 0, [10 + 65_536, first])  # ... but the guest claims 65546
    enc.sync(0)
    [cpu0] = model_of(enc).loss()
    assert cpu0.gaps == 10 and cpu0.lost_records == 65_546 and not cpu0.agree


def test_a_gap_without_a_lost_record_disagrees() -> None:
    enc = Encoder(cpus=1).header()
    enc.event(TICK, 0, 1, 1)
    enc.seq[0] += 5  # the guest dropped records and never said so
    enc.event(TICK, 0, 2, 2)
    [cpu0] = model_of(enc).loss()
    assert cpu0.gaps == 5 and cpu0.lost_records == 0 and not cpu0.agree


def test_a_gap_across_damage_is_damage_not_loss() -> None:
    enc = Encoder(cpus=1).header()
    for i in range(10):
        enc.event(TICK, 0, i, i)
    spoiled = len(enc.out)
    for i in range(3):
        enc.event(TICK, 0, i, i)
    enc.sync(0)
    enc.event(TICK, 0, 99, 99)
    data = bytearray(enc.bytes())
    data[spoiled : spoiled + 40] = b"\xff" * 40
    decoded = decode(bytes(data), tracepoint_count=3)
    assert len(decoded.damage) == 1
    [cpu0] = TraceModel(decoded, TRACEPOINTS).loss()
    assert cpu0.gaps == 0 and cpu0.damage_gaps == 2 and cpu0.agree


def test_sessions_restart_sequence_tracking() -> None:
    enc = Encoder(cpus=1).header()
    enc.event(TICK, 0, 1, 1)
    enc.header()
    enc.seq[0] = 500  # records sent before the reconnect are not loss in the new session
    enc.event(TICK, 0, 2, 2)
    enc.drop(0, 4)
    loss = model_of(enc).loss()
    assert [(x.session, x.gaps, x.lost_records, x.agree) for x in loss] == \
        [(0, 0, 0, True), (1, 4, 4, True)]


def test_a_lost_record_first_in_a_session_is_counted_apart() -> None:
    enc = Encoder(cpus=1).header()
    enc.seq[0] = 10
    enc.record(ID_LOST, 0, [6, 4])  # reports drops before the host's first record
    enc.event(TICK, 0, 1, 1)
    [cpu0] = model_of(enc).loss()
    assert cpu0.lost_before_base == 6 and cpu0.gaps == 0 and cpu0.agree


def test_thread_names_and_counts() -> None:
    enc = Encoder().header()
    enc.thread_name(0, 7, b"net\x1b[2J")
    enc.thread_name(0, 7, b"net-rx")  # renamed: the latest wins
    enc.tid = [7, 9]
    for i in range(5):
        enc.event(TICK, i % 2, i, i)
    m = model_of(enc)
    assert m.thread_names == {7: b"net-rx"}
    assert m.counts_by_thread() == {7: 3, 9: 2}
    assert m.counts_by_tracepoint() == {TICK: 5}
    assert m.tracepoint_name(TICK) == "tick" and m.tracepoint_name(3) == "tp#3"
    assert int(np.count_nonzero(m.is_event)) == 5
