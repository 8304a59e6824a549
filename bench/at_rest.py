"""Cost at rest: the supervisors of 1, 4 and 8 reference guests side by side, tracing on
at the guests' default rate against the same guests with ``--no-trace``, in the same run.

An SRE keeps undebug attached to dozens of guests per host; what each supervisor costs
while its guest just runs is the question. Per window of ``WINDOW_S`` seconds: the
supervisors' CPU seconds (``/proc/PID/stat``) per guest-minute, CPU microseconds per trace
event (tracepoint events, counted by decoding the recordings), wake-ups, and RSS per
supervisor; at rest (nobody follows: the stub batches 250 ms) and while a real
``trace show --follow`` holds the live lease (20 ms, undebug/session/live_trace.py); a
quiet guest and a paused one show what the supervisor costs with (almost) nothing to
record. Also the latency of ``trace show --follow`` (bounded without the guest's clock,
see :func:`follow_latency`) and the supervisor's CPU per event at the lossless maximum
rate (``trace_bench``, from bench/trace_e2e.py), so batching is seen not to cost
throughput.
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
APPEND = "threads=16"  # the guest: the default rate (events/s: see the rows)
RATES = ("threads=3", "threads=8")  # ~1,000 and ~2,800 events/s (measured: the rows)
QUIET = "threads=0"  # a heartbeat a second: next to nothing to record
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


def _wakeups(pid: int) -> int:
    """Voluntary context switches of all the process's threads: its wake-ups."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def _bytes(rundir: Path, name: str) -> int:
    """Bytes the guest's recording holds so far (every chunk of it): a stat, at once."""
    from tracers.chunks import chunk_paths

    return sum(p.stat().st_size for _, p in chunk_paths(rundir / name / "trace.utrace"))


def _events_per_byte(rundir: Path, name: str) -> float:
    """Tracepoint events (``trace stats``' events: records below the reserved ids, not
    thread switches, names or SYNCs) per byte of the whole recording, decoded in this
    process after the window (what has arrived by then). A window's events are its bytes
    times this: one decode per guest instead of two ``trace stats`` runs."""
    import numpy as np

    from tracers.chunks import chunk_paths
    from tracers.decode import StreamDecoder
    from tracers.format import RESERVED_FIRST

    decoder, events, size = StreamDecoder(None), 0, 0
    for _, path in chunk_paths(rundir / name / "trace.utrace"):
        data = path.read_bytes()
        size += len(data)
        events += int(np.count_nonzero(decoder.feed(data).records.id < RESERVED_FIRST))
    events += int(np.count_nonzero(decoder.finish().records.id < RESERVED_FIRST))
    return events / size if size else 0.0


def _flush_modes(env: dict[str, str]) -> dict[str, str | None]:
    """Each guest's flush mode as ``ps --json`` reports it (live while a lease is held)."""
    return {g["name"]: ((g.get("trace") or {}).get("flush") or {}).get("mode")
            for g in json.loads(_ud(env, "ps", "--json").stdout)["guests"]}


def _wait_ready(console: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (console.exists() and b"refguest: ready" in console.read_bytes()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"no ready line in {console}")
        time.sleep(0.1)


def window(env: dict[str, str], rundir: Path, guests: int, traced: bool,
           append: str = APPEND, *, followed: bool = False,
           paused: bool = False) -> dict[str, Any]:
    """``guests`` guests for WINDOW_S seconds: their supervisors' CPU, events and RSS;
    ``followed``: each with a real ``trace show --follow`` running (holding the lease);
    ``paused``: each paused first (an idle session: no guest activity at all)."""
    names = [f"rest{i}" for i in range(guests)]
    followers: list[subprocess.Popen[bytes]] = []
    modes: dict[str, str | None] = {}
    try:
        for name in names:
            started = _ud(env, "run", "-d", "--name", name, "--append", append,
                          *([] if traced else ["--no-trace"]), str(GUEST))
            if started.returncode != 0:
                raise RuntimeError(f"undebug run failed: {started.stderr}")
        for name in names:
            _wait_ready(rundir / name / "console.log")
        for name in names:
            if followed:
                followers.append(subprocess.Popen(
                    [sys.executable, "-m", "undebug.cli", "trace", "show", name, "--follow"],
                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            if paused:
                _ud(env, "stop", name)
        time.sleep(2.0)  # past boot: the rate at rest
        modes = _flush_modes(env)
        pids = {g["name"]: g["supervisor_pid"]
                for g in json.loads(_ud(env, "ps", "--json").stdout)["guests"]}
        bytes0 = {n: _bytes(rundir, n) for n in names} if traced else {}
        cpu0 = {n: _cpu_s(pids[n]) or 0.0 for n in names}
        woken0 = {n: _wakeups(pids[n]) for n in names}
        time.sleep(WINDOW_S)
        cpu1 = {n: _cpu_s(pids[n]) or 0.0 for n in names}
        woken1 = {n: _wakeups(pids[n]) for n in names}
        bytes1 = {n: _bytes(rundir, n) for n in names} if traced else {}
        rss = [_rss_mb(pids[n]) for n in names]
        per_byte = {n: _events_per_byte(rundir, n) for n in names} if traced else {}
    finally:
        for proc in followers:
            proc.kill()
            proc.wait()
        for name in names:
            _ud(env, "kill", name)
    cpu = [cpu1[n] - cpu0[n] for n in names]
    events = [(bytes1[n] - bytes0[n]) * per_byte[n] for n in names] if traced else [0] * guests
    woken = sum(woken1[n] - woken0[n] for n in names)
    row: dict[str, Any] = {
        "guests": guests, "traced": traced, "append": append, "window_s": WINDOW_S,
        "followed": followed, "paused": paused,
        "flush_modes": sorted({str(modes.get(n)) for n in names}),
        "cpu_s_per_guest_minute": round(statistics.mean(cpu) * 60 / WINDOW_S, 4),
        "core_percent_per_guest": round(statistics.mean(cpu) / WINDOW_S * 100, 3),
        "supervisors_cpu_s": [round(c, 3) for c in cpu],
        "rss_mb_max": max(r for r in rss if r is not None),
        "events_per_s_per_guest": round(statistics.mean(events) / WINDOW_S),
        "wakeups_per_s_per_guest": round(woken / guests / WINDOW_S, 1),
    }
    if woken:
        row["us_per_wakeup"] = round(sum(cpu) / woken * 1e6, 1)
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
    mode = None
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
        time.sleep(1.0)
        mode = _flush_modes(env).get("follow")  # the follower's lease: live
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
    return {"flush_mode": mode, "batches": len(arrivals),
            "batch_interval_median_ms": round(statistics.median(
                b - a for a, b in itertools.pairwise(arrivals)) * 1e3, 1)
            if len(arrivals) > 1 else None,
            "bound_median_ms": round(statistics.median(bounds) * 1e3, 1) if bounds else None,
            "bound_p95_ms": round(bounds[int(len(bounds) * 0.95)] * 1e3, 1) if bounds else None,
            "bound_max_ms": round(bounds[-1] * 1e3, 1) if bounds else None,
            "goal_ms": 100}


FLOOR_C = r"""
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/epoll.h>
#include <stdlib.h>
#include <sys/socket.h>
int main(int argc, char **argv) {  /* argv[1]: the socket's fd; argv[2]: the output's */
    static char buf[1 << 20];
    int ep = epoll_create1(0), sock = atoi(argv[1]), out = atoi(argv[2]), n = 0;
    struct epoll_event ev = {.events = EPOLLIN};
    struct timespec a, b;
    epoll_ctl(ep, EPOLL_CTL_ADD, sock, &ev);
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &a);
    for (;;) {
        struct epoll_event e;
        epoll_wait(ep, &e, 1, -1);
        ssize_t r = recv(sock, buf, sizeof buf, 0);
        if (r <= 0) break;
        if (write(out, buf, r) != r) return 1;
        n++;
    }
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &b);
    printf("%.3f %d\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / 1e3, n);
    return 0;
}
"""
FLOOR_PY = """
import os, socket, sys, time
sock, out = socket.socket(fileno=int(sys.argv[1])), int(sys.argv[2])
buf = bytearray(1 << 20); view = memoryview(buf); n = 0
start = time.process_time_ns()
while (got := sock.recv_into(view)):
    os.write(out, bytes(view[:got])); n += 1
print((time.process_time_ns() - start) / 1e3, n)
"""
FLOOR_BATCHES = 200


def wakeup_floor(tmp: Path) -> dict[str, Any]:
    """What one wake-up costs on this machine, whoever is woken: a bare C reader
    (epoll_wait, recv, write) and a bare Python one (recv_into, write), each fed a 4.4 KB
    batch every 50 ms by another process, as a guest's batches feed a supervisor. The
    supervisor's cost per wake-up compares against these, measured in the same run."""
    import socket

    binary = tmp / "floor"
    subprocess.run(["gcc", "-O2", "-x", "c", "-", "-o", str(binary)], input=FLOOR_C,
                   text=True, check=True)
    out: dict[str, Any] = {"batches": FLOOR_BATCHES, "interval_ms": 50, "batch_bytes": 4400}
    for kind, argv in (("c", [str(binary)]), ("python", [sys.executable, "-c", FLOOR_PY])):
        feed, read = socket.socketpair()
        sink = os.open(tmp / f"floor-{kind}.out", os.O_WRONLY | os.O_CREAT, 0o600)
        fds = (read.fileno(), sink)
        proc = subprocess.Popen([*argv, *map(str, fds)], stdout=subprocess.PIPE, text=True,
                                pass_fds=fds)
        os.close(sink)
        read.close()
        for _ in range(FLOOR_BATCHES):
            time.sleep(0.05)
            feed.sendall(b"x" * 4400)
        feed.close()
        cpu_us, woken = proc.communicate(timeout=60)[0].split()
        out[f"{kind}_us_per_wakeup"] = round(float(cpu_us) / max(int(woken), 1), 1)
    return out


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
        for append in RATES:
            rows.append(window(env, tmp / "run", 1, True, append))
            print(f"  {rows[-1]}", flush=True)
        for append in (*RATES, APPEND):
            rows.append(window(env, tmp / "run", 1, True, append, followed=True))
            print(f"  {rows[-1]}", flush=True)
        rows.append(window(env, tmp / "run", 1, True, QUIET))
        print(f"  {rows[-1]}", flush=True)
        rows.append(window(env, tmp / "run", 1, True, APPEND, paused=True))
        print(f"  {rows[-1]}", flush=True)
        latency = follow_latency(env, tmp / "run")
        print(f"  follow latency: {latency}", flush=True)
        high = lossless_run(tmp, 1, "bench", HIGH_RATE_EVENTS, trace_file=False)
        floor = wakeup_floor(tmp)
        print(f"  wake-up floor: {floor}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    events = high["events_guest"]
    rate = high.get("file_tsc_events_s")
    high_row = {"events": events, "supervisor_cpu_s": high["reader_cpu_s"],
                "events_per_s_M": round(rate / 1e6, 2) if rate else None,
                "lossless": high["host_gaps"] == 0 and high["in_band_lost"] == 0,
                "us_per_event": round(high["reader_cpu_s"] / events * 1e6, 3)
                if high["reader_cpu_s"] else None}
    at_rest = [r for r in rows if r["traced"] and not r["followed"] and not r["paused"]
               and r["append"] != QUIET]
    summary: dict[str, Any] = {
        "rows": rows, "follow_latency": latency, "max_rate": high_row, "goals": GOALS,
        "wakeup_floor": floor,
        "goal_met": {
            "core_percent_per_guest": all(r["core_percent_per_guest"] <= 0.5
                                          for r in at_rest),
            "us_per_event_at_rest": all(r.get("us_per_event", 99) <= 2.0 for r in at_rest),
            "us_per_event_max_rate": (high_row["us_per_event"] or 99) <= 2.0,
            "rss_mb": all(r["rss_mb_max"] <= 30 for r in rows),
            "follow_latency_p95": (latency["bound_p95_ms"] or 1e9) < 100,
        },
        "load_avg_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }
    return {"summary": summary}
