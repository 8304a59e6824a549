"""Cost at rest: the supervisors of 1, 4 and 8 reference guests side by side, tracing on
at the guests' default rate against the same guests with ``--no-trace``, in the same run.

An SRE keeps undebug attached to dozens of guests per host; what each supervisor costs
while its guest just runs is the question. Per window of ``WINDOW_S`` seconds: the
supervisors' CPU seconds (``/proc/PID/stat``) per guest-minute, CPU microseconds per trace
event (events counted in the recordings), and RSS per supervisor. Also the latency of
``trace show --follow`` (bounded without the guest's clock, see :func:`follow_latency`)
and the supervisor's CPU per event at the lossless maximum rate (``trace_bench``, from
bench/trace_e2e.py), so batching is seen not to cost throughput.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.trace_e2e import _cpu_s
from bench.trace_e2e import undebug_run as lossless_run

ROOT = Path(__file__).resolve().parents[1]
GUEST = ROOT / "build" / "refguest.elf"
SIZES = (1, 4, 8)
WINDOW_S = 30.0
APPEND = "threads=16"  # the guest: ~2,800 events/s with tracing on
LOW_RATE = "threads=6"  # ~1,000 events/s: the low end of the per-event goal
FOLLOW_S = 10.0
HIGH_RATE_EVENTS = 1_500_000  # 48 MB: one recording chunk (64 MB at the default 256M cap)
GOALS = {"core_percent_per_guest": 0.5, "us_per_event": 2.0, "rss_mb": 30.0}


def _ud(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "undebug.cli", *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _rss_mb(pid: int) -> float | None:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except OSError:
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def _events(env: dict[str, str], name: str) -> int:
    stats = _ud(env, "trace", "stats", name, "--json")
    return int(json.loads(stats.stdout)["events"]) if stats.returncode == 0 else 0


def _wait_ready(console: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (console.exists() and b"refguest: ready" in console.read_bytes()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no ready line in {console}")
        time.sleep(0.1)


def window(env: dict[str, str], rundir: Path, guests: int, traced: bool,
           append: str = APPEND) -> dict[str, Any]:
    """``guests`` guests for WINDOW_S seconds: their supervisors' CPU, events and RSS."""
    names = [f"rest{i}" for i in range(guests)]
    try:
        for name in names:
            started = _ud(env, "run", "-d", "--name", name, "--append", append,
                          *([] if traced else ["--no-trace"]), str(GUEST))
            if started.returncode != 0:
                raise RuntimeError(f"undebug run failed: {started.stderr}")
        for name in names:
            _wait_ready(rundir / name / "console.log")
        time.sleep(2.0)  # past boot: the rate at rest
        pids = {g["name"]: g["supervisor_pid"]
                for g in json.loads(_ud(env, "ps", "--json").stdout)["guests"]}
        events0 = {n: _events(env, n) for n in names} if traced else {}
        cpu0 = {n: _cpu_s(pids[n]) or 0.0 for n in names}
        time.sleep(WINDOW_S)
        cpu1 = {n: _cpu_s(pids[n]) or 0.0 for n in names}
        events1 = {n: _events(env, n) for n in names} if traced else {}
        rss = [_rss_mb(pids[n]) for n in names]
    finally:
        for name in names:
            _ud(env, "kill", name)
    cpu = [cpu1[n] - cpu0[n] for n in names]
    events = [events1[n] - events0[n] for n in names] if traced else [0] * guests
    row: dict[str, Any] = {
        "guests": guests, "traced": traced, "append": append, "window_s": WINDOW_S,
        "cpu_s_per_guest_minute": round(statistics.mean(cpu) * 60 / WINDOW_S, 4),
        "core_percent_per_guest": round(statistics.mean(cpu) / WINDOW_S * 100, 3),
        "supervisors_cpu_s": [round(c, 3) for c in cpu],
        "rss_mb_max": max(r for r in rss if r is not None),
        "events_per_s_per_guest": round(statistics.mean(events) / WINDOW_S),
    }
    if traced and sum(events):
        row["us_per_event"] = round(sum(cpu) / sum(events) * 1e6, 2)
    return row


def follow_latency(env: dict[str, str], rundir: Path) -> dict[str, Any]:
    """How long an event can take from the guest to ``trace show --follow``'s output,
    measured without the guest's clock (a TCG guest's PIT-calibrated TSC can be off by
    far more than the latency): the interval between the batches that reach the
    recording (an event waits in the guest at most that long) plus the delay from a
    batch reaching the recording to --follow's first line after it."""
    import threading

    _ud(env, "run", "-d", "--name", "follow", "--append", APPEND, str(GUEST))
    arrivals: list[float] = []
    lines: list[float] = []
    try:
        _wait_ready(rundir / "follow" / "console.log")
        recording = rundir / "follow" / "trace.utrace"
        proc = subprocess.Popen([sys.executable, "-m", "undebug.cli", "trace", "show", "follow",
                                 "--follow"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, bufsize=0)
        assert proc.stdout is not None
        stop = time.monotonic() + FOLLOW_S

        def watch() -> None:
            size = recording.stat().st_size
            while time.monotonic() < stop:
                now = recording.stat().st_size
                if now != size:
                    size = now
                    arrivals.append(time.monotonic())
                time.sleep(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            while time.monotonic() < stop:
                if proc.stdout.read(65536):
                    lines.append(time.monotonic())
        finally:
            watcher.join()
            proc.kill()
            proc.wait()
    finally:
        _ud(env, "kill", "follow")
    arrivals = [t for t in arrivals if t > arrivals[0] + 2.0] if arrivals else []  # caught up
    bounds = []
    for before, at in itertools.pairwise(arrivals):
        printed = next((t for t in lines if t >= at), None)
        if printed is not None:
            bounds.append((at - before) + (printed - at))
    bounds.sort()
    return {"batches": len(arrivals),
            "batch_interval_median_ms": round(statistics.median(
                b - a for a, b in itertools.pairwise(arrivals)) * 1e3, 1)
            if len(arrivals) > 1 else None,
            "bound_median_ms": round(statistics.median(bounds) * 1e3, 1) if bounds else None,
            "bound_p95_ms": round(bounds[int(len(bounds) * 0.95)] * 1e3, 1) if bounds else None,
            "bound_max_ms": round(bounds[-1] * 1e3, 1) if bounds else None,
            "goal_ms": 100}


def run() -> dict[str, Any]:
    if not GUEST.exists():
        subprocess.run(["make", "-s", "guest"], cwd=ROOT, check=True)
    tmp = Path(tempfile.mkdtemp(prefix="ud-rest-"))
    env = {**os.environ, "UNDEBUG_RUNTIME_DIR": str(tmp / "run")}
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    try:
        for guests in SIZES:
            for traced in (True, False):
                rows.append(window(env, tmp / "run", guests, traced))
                print(f"  {rows[-1]}", flush=True)
        rows.append(window(env, tmp / "run", 1, True, LOW_RATE))
        print(f"  {rows[-1]}", flush=True)
        latency = follow_latency(env, tmp / "run")
        print(f"  follow latency: {latency}", flush=True)
        high = lossless_run(tmp, 1, "bench", HIGH_RATE_EVENTS, trace_file=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    events = high["events_guest"]
    rate = high.get("file_tsc_events_s")
    high_row = {"events": events, "supervisor_cpu_s": high["reader_cpu_s"],
                "events_per_s_M": round(rate / 1e6, 2) if rate else None,
                "lossless": high["host_gaps"] == 0 and high["in_band_lost"] == 0,
                "us_per_event": round(high["reader_cpu_s"] / events * 1e6, 3)
                if high["reader_cpu_s"] else None}
    traced_rows = [r for r in rows if r["traced"]]
    summary: dict[str, Any] = {
        "rows": rows, "follow_latency": latency, "max_rate": high_row, "goals": GOALS,
        "goal_met": {
            "core_percent_per_guest": all(r["core_percent_per_guest"] <= 0.5
                                          for r in traced_rows),
            "us_per_event_default_rate": all(r.get("us_per_event", 99) <= 2.0
                                             for r in traced_rows),
            "us_per_event_max_rate": (high_row["us_per_event"] or 99) <= 2.0,
            "rss_mb": all(r["rss_mb_max"] <= 30 for r in rows),
            "follow_latency_p95": (latency["bound_p95_ms"] or 1e9) < 100,
        },
        "load_avg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    return {"summary": summary}
