"""The tracing pipeline end to end: the reference guest's stub in real QEMU (TCG), the
supervisor recording its virtio-serial stream, the host decoder and model, the CLI.

test_trace_decode.py and test_trace_model.py pin the host side to tracers/FORMAT.md on
streams built in Python; here every byte comes from the guest (guest-stubs/src/trace.c
linked into build/refguest.elf), so these tests check that the two sides agree:

* planted events (thread names, switches, ``handle_request`` spans, heartbeats) arrive in
  order, with the names, arguments, CPUs and thread ids the guest's console reports;
* a QEMU killed with SIGKILL mid-stream leaves a recording that holds everything received,
  damaged at most in its last record, that nobody shrinks or rewrites afterwards;
* under overload the loss the host counts from sequence gaps equals the guest's in-band
  LOST totals, per CPU;
* the flight recorder of a guest that never streamed (``--no-trace``) is read from its
  memory after a crash: FAULT, PANIC, the last events and the crashing thread's open span.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import boot, undebug, wait_for_console
from tracers.decode import (
    ID_FAULT,
    ID_LOST,
    ID_PANIC,
    ID_SYNC,
    ID_THREAD_NAME,
    ID_THREAD_SWITCH,
    Decoded,
    decode_file,
)
from tracers.metadata import (
    KIND_SPAN_BEGIN,
    KIND_SPAN_END,
    Tracepoints,
    for_stream,
    load_tracepoints,
)
from tracers.model import TraceModel

# refguest README, "Planted state": creation order, ids from 1 (-smp 2, threads=4)
PLANTED = {1: b"main", 2: b"idle0", 3: b"idle1", 4: b"sleeper", 5: b"blocked",
           6: b"short-lived", 7: b"evil\x1b]0;owned\x07", 8: b"worker-0", 9: b"worker-1",
           10: b"worker-2", 11: b"worker-3"}
EVIL_ESCAPED = r"evil\x1b]0;owned\x07"


# ---- helpers -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tracepoints(guest_image: Path) -> Tracepoints:
    return load_tracepoints(guest_image)


def load(path: Path, tps: Tracepoints) -> tuple[Decoded, TraceModel]:
    """Decode a recording with the ELF's metadata (build-id checked, as the CLI does)."""
    decoded = decode_file(path, tracepoint_count=tps.count)
    usable, notes = for_stream(tps, decoded.sessions)
    assert usable is not None and notes == [], notes
    return decoded, TraceModel(decoded, usable)


def one_id(tps: Tracepoints, name: str, kind: int | None = None) -> int:
    ids = [i for i in tps.ids_named(name) if kind is None or tps.by_id[i].kind == kind]
    assert len(ids) == 1, (name, ids)
    return ids[0]


def by_cpu(decoded: Decoded) -> dict[int, np.ndarray]:
    """Record indices of each CPU, in stream order."""
    cpu = decoded.records.cpu
    return {int(c): np.flatnonzero(cpu == c) for c in np.unique(cpu)}


def assert_consecutive_seq(decoded: Decoded) -> None:
    """Every CPU's 16-bit sequence numbers go up by exactly 1: nothing lost, nothing
    duplicated, nothing out of order."""
    r = decoded.records
    for c, rows in by_cpu(decoded).items():
        step = (r.seq[rows[1:]].astype(np.int64) - r.seq[rows[:-1]].astype(np.int64)) % 65536
        bad = np.flatnonzero(step != 1)
        assert bad.size == 0, f"cpu {c}: seq steps {step[bad][:5]} at records {rows[bad][:5]}"
        tsc = r.tsc[rows]
        assert np.all(tsc[1:] >= tsc[:-1]), f"cpu {c}: TSC goes backwards"


def ps(name: str) -> dict[str, Any]:
    result = undebug("ps", "--json")
    assert result.code == 0, result.stderr
    for guest in result.json()["guests"]:
        if guest["name"] == name:
            return guest  # type: ignore[no-any-return]
    raise AssertionError(f"no guest {name} in undebug ps: {result.stdout}")


@pytest.fixture
def detached(guest_image: Path) -> Iterator[list[str]]:
    """Names of guests a test starts with ``run -d``; each is ended with ``undebug kill``."""
    names: list[str] = []
    yield names
    for name in names:
        undebug("kill", name)


# ---- 1. planted events ---------------------------------------------------------------------

def test_planted_events_arrive_in_order(guest_image: Path, tracepoints: Tracepoints,
                                        tmp_path: Path) -> None:
    trace = tmp_path / "planted.utrace"
    run = undebug("run", "--ci", "--smp", "2", "--append", "threads=4 run_for=1500",
                  "--trace-file", str(trace), str(guest_image), timeout=60)
    assert run.code == 0 and "undebug: PASS" in run.stdout, run.stdout + run.stderr
    assert os.stat(trace).st_mode & 0o777 == 0o600
    decoded, model = load(trace, tracepoints)
    r = decoded.records
    assert decoded.problem is None and decoded.damage == [] and decoded.truncated is None
    assert decoded.warnings == []
    assert len(decoded.sessions) == 1
    header = decoded.sessions[0].header
    assert header.cpu_count == 2 and header.transport_name == "virtio-serial" and header.streaming
    assert header.build_id == bytes.fromhex(tracepoints.build_id or "")

    # CPUs and sequence numbers: both CPUs stream, each in order, nothing lost
    assert set(np.unique(r.cpu).tolist()) == {0, 1}
    assert_consecutive_seq(decoded)
    for loss in model.loss():
        assert (loss.gaps, loss.lost_records, loss.damage_gaps, loss.agree) == (0, 0, 0, True)
        assert loss.guest_lost_total == 0
    # every CPU's first record is its SYNC (FORMAT.md 3.3; the race it allows is rare)
    for c, rows in by_cpu(decoded).items():
        assert ID_SYNC in r.id[rows[:2]].tolist(), f"cpu {c} does not start with a SYNC"

    # thread names: exactly the planted threads, in creation order, raw bytes in the model
    name_rows = np.flatnonzero(r.id == ID_THREAD_NAME)
    assert [int(r.args[i, 0]) for i in name_rows] == sorted(PLANTED)
    assert model.thread_names == PLANTED
    for line in re.findall(r"refguest: thread id=(\d+) name=(\S+) cpu=", run.stderr):
        if line[1].startswith(("worker-", "sleeper", "idle", "main")):
            assert PLANTED[int(line[0])] == line[1].encode()
    workers = {tid for tid, name in PLANTED.items() if name.startswith(b"worker-")}

    # switches: the header tid is the "from" thread, and the CPU's next record carries "to"
    switches = 0
    for c, rows in by_cpu(decoded).items():
        for a, b in zip(rows[:-1].tolist(), rows[1:].tolist(), strict=True):
            if r.id[a] != ID_THREAD_SWITCH:
                continue
            switches += 1
            frm, to = int(r.args[a, 0]), int(r.args[a, 1])
            assert int(r.tid[a]) == frm and frm in PLANTED and to in PLANTED
            assert int(r.tid[b]) == to, f"cpu {c}: record {b} after a switch to {to}"
    assert switches > 100

    # handle_request: a begin and an end per request, same req_id, same thread (a worker)
    begin_id = one_id(tracepoints, "handle_request", KIND_SPAN_BEGIN)
    end_id = one_id(tracepoints, "handle_request", KIND_SPAN_END)
    assert tracepoints.by_id[begin_id].arg_names == ("req_id",)
    assert model.unmatched_ends == []
    # each request holds one checksum span (main.c), on its thread, one level down
    spans = [s for s in model.spans if s.name == "handle_request"]
    checksums = [s for s in model.spans if s.name == "checksum"]
    assert len(spans) > 100 and len(spans) + len(checksums) == len(model.spans)
    for c in checksums:
        assert c.depth == 1 and c.tid in workers
        request = max((s for s in spans if s.tid == c.tid and s.begin < c.begin),
                      key=lambda s: s.begin)
        assert request.end is None or (c.end is not None and c.end < request.end)
    assert abs(len(checksums) - len(spans)) <= 2  # only those cut short by the shutdown
    last_of_tid: dict[int, int] = {}
    for s in spans:
        last_of_tid[s.tid] = s.begin
    for s in spans:
        assert s.name == "handle_request" and s.tid in workers and s.depth == 0
        assert r.id[s.begin] == begin_id and int(r.tid[s.begin]) == s.tid
        if s.end is None:  # only a request in progress at the shutdown
            assert last_of_tid[s.tid] == s.begin, "an unterminated span is not the last"
            continue
        assert r.id[s.end] == end_id and int(r.tid[s.end]) == s.tid
        assert r.args[s.begin, 0] == r.args[s.end, 0], "begin and end req_id differ"
        assert s.end_tsc is not None and s.end_tsc >= s.begin_tsc
    assert sum(s.unterminated for s in spans) <= 2
    req_ids = [int(r.args[s.begin, 0]) for s in spans]
    assert len(set(req_ids)) == len(req_ids), "a req_id began twice"
    missing = set(range(max(req_ids) + 1)) - set(req_ids)
    assert min(req_ids) == 0 and all(m > max(req_ids) - 4 for m in missing), sorted(missing)[:10]
    assert {s.tid for s in spans} == workers  # every worker served requests

    # heartbeat events: same arguments as the console's heartbeat lines, from main
    hb_id = one_id(tracepoints, "heartbeat")
    assert tracepoints.by_id[hb_id].nargs == 2  # (uptime_ms, requests); names are the C args
    hb_rows = np.flatnonzero(r.id == hb_id)
    console = [(int(a), int(b)) for a, b in
               re.findall(r"refguest: heartbeat uptime_ms=(\d+) requests=(\d+)", run.stderr)]
    assert console and [(int(r.args[i, 0]), int(r.args[i, 1])) for i in hb_rows] == console
    assert all(int(r.tid[i]) == 1 for i in hb_rows)
    ends = np.array(sorted(s.end_tsc for s in spans if s.end_tsc is not None), np.uint64)
    for i in hb_rows:  # requests_handled counts a request just before its span ends
        done_before = int(np.searchsorted(ends, r.tsc[i], side="right"))
        assert done_before >= int(r.args[i, 1]) - 2

    # the CLI prints the hostile name escaped; the model keeps it raw
    shown = undebug("trace", "show", str(trace), "--elf", str(guest_image))
    assert shown.code == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\x07" not in shown.stdout
    assert f"name={EVIL_ESCAPED}" in shown.stdout
    assert re.search(r"cpu\d\s+worker-\d\s+begin handle_request  req_id=0\b", shown.stdout)
    assert "damage" not in shown.stdout


# ---- 2. QEMU killed mid-stream ---------------------------------------------------------------

def test_a_killed_qemu_leaves_every_received_event_on_disk(
        guest_image: Path, tracepoints: Tracepoints, tmp_path: Path,
        detached: list[str]) -> None:
    trace = tmp_path / "killed.utrace"
    name = "tl-killed"
    detached.append(name)
    started = undebug("run", "-d", "--name", name, "--smp", "2", "--append",
                      "threads=2 trace_bench=50000000", "--trace-file", str(trace),
                      str(guest_image))
    assert started.code == 0, started.stderr
    qemu_pid = ps(name)["qemu_pid"]
    deadline = time.monotonic() + 30
    while not trace.exists() or trace.stat().st_size < 4 << 20:  # streaming at full speed
        assert time.monotonic() < deadline, "the trace file did not grow"
        time.sleep(0.005)
    os.kill(qemu_pid, signal.SIGKILL)
    size_at_kill = trace.stat().st_size
    first = decode_file(trace, tracepoint_count=tracepoints.count)
    time.sleep(1.0)
    size_later = trace.stat().st_size
    later, model = load(trace, tracepoints)
    time.sleep(0.3)
    assert trace.stat().st_size == size_later, "the file still grows after QEMU died"

    # what was there at the kill is still there, unchanged (a prefix of the final file)
    assert size_later >= size_at_kill
    assert len(later.records) >= len(first.records) > 100_000
    n = len(first.records)
    for col in ("tsc", "id", "cpu", "seq", "tid"):
        assert np.array_equal(getattr(first.records, col), getattr(later.records, col)[:n])
    # no damage anywhere; at most the last record is cut short
    assert later.problem is None and later.damage == [] and later.warnings == []
    if later.truncated is not None:
        assert later.truncated.offset + later.truncated.size == size_later
        assert later.truncated.size < 16 * 16
    # every event in order: consecutive seqs, and each generator's i = 0, 1, 2, ...
    assert_consecutive_seq(later)
    assert all(x.gaps == 0 and x.lost_records == 0 and x.agree for x in model.loss())
    bench = one_id(tracepoints, "trace_bench")
    r = later.records
    for c, rows in by_cpu(later).items():
        mine = rows[r.id[rows] == bench]
        i = r.args[mine, 0].astype(np.int64)
        assert i.size > 1000 and i[0] == 0 and np.all(np.diff(i) == 1), f"cpu {c}"
        assert len(np.unique(r.tid[mine])) == 1  # one generator thread per CPU

    # the supervisor saw QEMU die, and ending the session leaves the user's file alone
    guest = ps(name)
    assert guest["state"] == "ended", guest
    assert "killed" in json.dumps(guest["outcome"])
    session_copy = Path(os.environ["UNDEBUG_RUNTIME_DIR"]) / name / "trace.utrace"
    if session_copy.exists():
        assert session_copy.read_bytes() == trace.read_bytes()
    assert undebug("kill", name).code == 0
    detached.remove(name)
    assert trace.stat().st_size == size_later
    stats = undebug("trace", "stats", str(trace), "--elf", str(guest_image), "--json")
    assert stats.code == 0, stats.stderr
    assert stats.json()["records"] == len(later.records)


# ---- 3. overload ---------------------------------------------------------------------------

def exact_host_loss(decoded: Decoded, rows: np.ndarray) -> int:
    """Records one CPU lost, counted from the wire alone (FORMAT.md 3.2): the 16-bit seq
    gives each gap modulo 65536 and every SYNC's full 64-bit seq (w2) settles the multiple
    of 65536, so a single drop of more than 65535 records is counted exactly too."""
    r = decoded.records
    seq = r.seq[rows].astype(np.int64)
    step = (seq[1:] - seq[:-1]) % 65536
    step[step == 0] = 65536
    full = np.concatenate(([0], np.cumsum(step)))  # seq relative to the first record
    syncs = np.flatnonzero(r.id[rows] == ID_SYNC)
    if syncs.size == 0:
        return int(full[-1] + 1 - len(rows))
    offset = r.args[rows[syncs], 2].astype(np.int64) - full[syncs]
    fix = np.diff(offset)  # what the low 16 bits could not show, at each SYNC
    assert np.all(fix >= 0) and np.all(fix % 65536 == 0), "a SYNC contradicts the seqs"
    return int(full[-1] + offset[-1] - (full[0] + offset[0]) + 1 - len(rows))


def test_overload_host_counted_loss_equals_the_in_band_lost_totals(
        guest_image: Path, tracepoints: Tracepoints, tmp_path: Path) -> None:
    # Two CPUs flooding outrun the supervisor here: 500k events per CPU lost 300-250,000
    # records in every trial (one CPU flooding 200k did not lose anything, once in two).
    # Workers keep every CPU emitting after the flood, so drops still pending when a
    # generator ends are reported in band too (with threads=0 an idle CPU never emits
    # again and its last drops never reach the wire: see the report on the stub).
    for per_cpu in (500_000, 2_000_000):
        trace = tmp_path / f"flood-{per_cpu}.utrace"
        run = undebug("run", "--ci", "--smp", "2", "--append",
                      f"threads=4 trace_flood={per_cpu} run_for=1000", "--trace-file",
                      str(trace), str(guest_image), timeout=120)
        assert run.code == 0 and "undebug: PASS" in run.stdout, run.stdout + run.stderr
        done = re.search(r"trace_flood done events=(\d+) cycles=\d+ lost=(\d+)", run.stderr)
        assert done, run.stderr[-2000:]
        events, guest_lost = int(done[1]), int(done[2])
        assert events == 2 * per_cpu
        decoded, model = load(trace, tracepoints)
        r = decoded.records
        assert decoded.problem is None and decoded.damage == [] and decoded.truncated is None
        losses = {x.cpu: x for x in model.loss()}
        assert set(losses) == {0, 1}
        host_total = 0
        for c, rows in by_cpu(decoded).items():
            x = losses[c]
            host = exact_host_loss(decoded, rows)
            in_band = int(r.args[rows[r.id[rows] == ID_LOST], 0].sum())
            # the host's count from the sequence == the guest's LOST records == the
            # guest's own running total in its last SYNC
            assert host == in_band == x.lost_records == x.guest_lost_total, (c, host, x)
            assert x.agree and x.damage_gaps == 0 and x.lost_before_base == 0, x
            # TraceModel counts each gap modulo 65536 (what 16 bits show)
            assert (x.gaps - host) % 65536 == 0 and x.gaps <= host, x
            host_total += host
        received = int((r.id == one_id(tracepoints, "trace_flood")).sum())
        assert received + host_total >= events  # every flood event arrived or is counted
        if host_total > 0:
            assert received < events
            # the console's lost= is the total when the last generator ended; drops after
            # it (other records, while the rings drain) only add to the wire's count
            assert host_total >= guest_lost > 0, (host_total, guest_lost)
            return
        trace.unlink()
    pytest.skip("the host kept up with two CPUs flooding 2M events each: no loss to count")


# ---- 4. flight recorder of a crashed guest that never streamed -----------------------------

def test_flight_recorder_of_a_crashed_guest_that_never_streamed(
        guest_image: Path, tracepoints: Tracepoints, detached: list[str]) -> None:
    from tracers.flight import read_flight_recorder
    from undebug.live_target import LiveTarget
    from undebug.session.store import SessionDir

    name = "tl-crashed"
    detached.append(name)
    started = undebug("run", "-d", "--no-trace", "--name", name, "--smp", "2", "--append",
                      "threads=4 crash=null crash_after=200", str(guest_image))
    assert started.code == 0, started.stderr
    deadline = time.monotonic() + 30
    while ps(name)["state"] != "guest-panicked":
        assert time.monotonic() < deadline, ps(name)
        time.sleep(0.1)
    log = wait_for_console(name, "PANIC: null pointer dereference")
    exc = re.search(r"EXCEPTION vector=14 \(#PF\) error=0x2 rip=0x([0-9a-f]+) cr2=0x0 "
                    r"cpu=(\d+) thread=(worker-\d+)", log)
    assert exc, log
    rip, crash_cpu, crash_thread = int(exc[1], 16), int(exc[2]), exc[3].encode()

    # no stream at all: the session has no recording, and the CLI says so
    assert not (Path(os.environ["UNDEBUG_RUNTIME_DIR"]) / name / "trace.utrace").exists()
    no_stream = undebug("trace", "stats", name)
    assert no_stream.code != 0 and "no trace stream" in no_stream.stderr

    # the rings in memory, read directly: still the flight recorder, nothing lost
    with LiveTarget(SessionDir.named(name)) as target:
        recording = read_flight_recorder(target)
    assert recording.warnings == []
    assert not recording.header.streaming and recording.header.transport_name == "memory"
    assert {ring.cpu for ring in recording.rings} == {0, 1}
    assert all(ring.mode == 0 and ring.lost_total == 0 and not ring.busy
               for ring in recording.rings)

    shown = undebug("trace", "show", name, "--flight-recorder", "--json")
    assert shown.code == 0, shown.stderr
    doc = shown.json()
    assert doc["damage"] == [] and doc["truncated"] is None
    events = doc["events"]
    fault = [e for e in events if e["id"] == ID_FAULT]
    panic = [e for e in events if e["id"] == ID_PANIC]
    assert len(fault) == 1 and len(panic) == 1
    f, p = fault[0], panic[0]
    assert f["words"][:4] == [14, 2, rip, 0]
    assert f["cpu"] == crash_cpu and f["thread"] == crash_thread.decode()
    assert p["text"] == "null pointer dereference (cr2=0x0)"
    assert p["cpu"] == crash_cpu and p["tid"] == f["tid"] and p["tsc"] >= f["tsc"]

    # the last events before the crash: on that CPU, switch to the worker, its span begin,
    # then the fault, in consecutive sequence numbers
    on_cpu = [e for e in events if e["cpu"] == crash_cpu]
    at = next(i for i, e in enumerate(on_cpu) if e["id"] == ID_FAULT)
    switch, begin = on_cpu[at - 2], on_cpu[at - 1]
    assert begin["tracepoint"] == "begin handle_request" and begin["tid"] == f["tid"]
    assert switch["id"] == ID_THREAD_SWITCH and switch["words"][1] == f["tid"]
    seqs = [e["seq"] for e in on_cpu[at - 2: at + 2]]
    assert seqs == list(range(seqs[0], seqs[0] + 4)), seqs
    assert sum(e["tracepoint"] == "end handle_request" for e in events) > 50
    named = {e["words"][0]: e["text"] for e in events if e["id"] == ID_THREAD_NAME}
    assert named[f["tid"]] == crash_thread.decode() and named[1] == "main"

    # the crashing thread's request never ended: its span is flagged
    open_spans = [s for s in doc["spans"] if s["unterminated"]]
    assert any(s["tid"] == f["tid"] and s["begin"] == begin["index"] and s["end"] is None
               for s in open_spans), open_spans
    # the other CPU may be stopped inside a request (and its checksum span) too
    assert len(open_spans) <= 3
    text = undebug("trace", "show", name, "--flight-recorder")
    assert text.code == 0, text.stderr
    assert (f"-- span handle_request on {crash_thread.decode()} (session 0) was never ended"
            in text.stdout)


def test_wall_clock_from_the_supervisors_anchor(guest_image: Path) -> None:
    """The supervisor notes when the stream header arrived (FORMAT.md section 9); events
    get wall-clock times from it: after the guest started and not in the future. A guest
    of its own: the shared guest's recording spans the whole suite by now (printing it
    twice took 158 s in a fresh-clone run)."""
    import time as _time

    from undebug.session.store import SessionDir

    name = boot("wallclock", "threads=2", guest_image)
    try:
        started_ns = int(SessionDir.named(name).read_record()["started"] * 1e9)
        deadline = _time.monotonic() + 10  # the stub flushes every 250 ms at rest
        while True:
            result = undebug("trace", "show", name, "--json")
            assert result.code == 0, result.stderr
            events = result.json()["events"]
            if events or _time.monotonic() > deadline:
                break
            _time.sleep(0.2)
        walls = [e["wall_ns"] for e in events]
        assert walls and all(w is not None for w in walls)
        assert started_ns - 1e9 < min(walls) <= max(walls) <= _time.time_ns()
        text = undebug("trace", "show", name, "--wall-clock").stdout
        assert text.splitlines()[1].startswith(_time.strftime("%Y-", _time.gmtime()))
    finally:
        undebug("kill", name)


def test_a_guest_without_any_tracing_says_so(tmp_path: Path) -> None:
    """A real PVH image built here that has no tracing at all (no stub, no Unikraft
    tracepoints): trace show and stats say that, not "empty file"."""
    from tests.test_image import ENTRY, PVH_NOTE, build

    image = build(tmp_path, "untraced", PVH_NOTE + ENTRY, 32)
    assert undebug("run", "-d", "--name", "untraced", str(image)).code == 0
    try:
        for sub in ("show", "stats"):
            result = undebug("trace", sub, "untraced")
            assert result.code == 2
            assert "sends no trace: its ELF has neither the undebug tracing stub nor " \
                   "Unikraft's tracepoints" in result.stderr, result.stderr
    finally:
        undebug("kill", "untraced")


@pytest.mark.parametrize("flush_ms, most_growths", [(1500, 5), (0, None)])
def test_the_stub_batches_its_stream_by_age(guest_image: Path, flush_ms: int,
                                            most_growths: int | None) -> None:
    """trace_flush_ms=1500 (and no size limit to speak of): the recording grows in a few
    steps about 1.5 s apart, each a wake-up of the supervisor; with 0 it grows at nearly
    every look (the stub sends at every 1 ms timer tick)."""
    name = f"batch{flush_ms}"
    assert undebug("run", "-d", "--name", name, "--append",
                   f"threads=8 trace_flush_ms={flush_ms} trace_flush_bytes=1000000",
                   str(guest_image)).code == 0
    try:
        wait_for_console(name, "refguest: ready")
        time.sleep(0.5)
        path = Path(os.environ["UNDEBUG_RUNTIME_DIR"]) / name / "trace.utrace"
        sizes = []
        for _ in range(60):  # 6 s, every 0.1 s
            sizes.append(path.stat().st_size)
            time.sleep(0.1)
        growths = sum(1 for a, b in itertools.pairwise(sizes) if b > a)
        if most_growths is not None:
            assert 2 <= growths <= most_growths, sizes
        else:
            assert growths >= 40, sizes
    finally:
        undebug("kill", name)
