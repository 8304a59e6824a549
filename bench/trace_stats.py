"""trace stats on a 1 GiB recording: events/s end to end and peak memory, vs a raw read.

``undebug trace stats FILE --json`` runs in a fresh process per round (what a user
runs); its wall time, CPU time and peak RSS come from ``os.wait4``. The same run measures,
interleaved, a baseline in a fresh process too: numpy ``fromfile`` of the whole file as
2-argument records plus a ``bincount`` of the ids (no checks, no loss, all in memory:
the ceiling for speed, and what memory looks like when nothing is bounded). The
recording is bench/decode.py's (2-argument events in per-CPU batches of 4096, each with a
SYNC; the raw read takes every 32 bytes as a record, SYNCs included: a ceiling, not a
decoder). Goals (issue 8): >= 20 M events/s with memory bounded, i.e. the same peak RSS for
a 64 MiB and a 1 GiB recording. ``UNDEBUG_BENCH_TRACE_BYTES`` sets the large file's size.
"""

from __future__ import annotations

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

from bench.decode import write_stream

BYTES = int(os.environ.get("UNDEBUG_BENCH_TRACE_BYTES", 1 << 30))
SMALL_BYTES = 64 << 20
ROUNDS = 5
RAW = """
import sys, numpy as np
from tracers.decode import record_dtype
r = np.fromfile(sys.argv[1], dtype=record_dtype(2), offset=80)
print(int((np.bincount(r["id"], minlength=1 << 16)[:0xFF00]).sum()))
"""


def measured(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command`` (in ``env``, default this one); its wall and CPU seconds, peak RSS
    and stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read() if proc.stderr else b""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{command[:4]} failed: {err.decode(errors='replace')[-500:]}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "rss_mib": usage.ru_maxrss / 1024, "stdout": out}


def stats(path: Path) -> dict[str, Any]:
    result = measured([sys.executable, "-m", "undebug.cli", "trace", "stats", str(path),
                       "--json"])
    result["events"] = json.loads(result.pop("stdout"))["events"]
    return result


def raw(path: Path) -> dict[str, Any]:
    result = measured([sys.executable, "-c", RAW, str(path)])
    result["events"] = int(result.pop("stdout"))
    return result


def run() -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ud-bench-stats-"))
    try:
        large, small = tmp / "large.utrace", tmp / "small.utrace"
        events = BYTES // 32
        write_stream(large, events)
        write_stream(small, SMALL_BYTES // 32)
        stats(large)  # warm-up, untimed: the page cache and a first touch of new memory
        samples: dict[str, list[dict[str, Any]]] = {"stats": [], "raw": [], "stats_small": []}
        for _ in range(ROUNDS):
            samples["stats"].append(stats(large))
            samples["raw"].append(raw(large))
            samples["stats_small"].append(stats(small))
        size = large.stat().st_size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert all(s["events"] == events for s in samples["stats"])

    def med(name: str, key: str) -> float:
        return float(statistics.median(s[key] for s in samples[name]))

    rate = events / med("stats", "wall_s")
    rss, rss_small = max(s["rss_mib"] for s in samples["stats"]), \
        max(s["rss_mib"] for s in samples["stats_small"])
    summary: dict[str, Any] = {
        "events": events, "file_bytes": size,
        "stats_median_wall_s": round(med("stats", "wall_s"), 3),
        "stats_median_cpu_s": round(med("stats", "cpu_s"), 3),
        "stats_events_per_s": round(rate),
        "stats_events_per_cpu_s": round(events / med("stats", "cpu_s")),
        "stats_peak_rss_mib": round(rss, 1),
        "stats_peak_rss_mib_64MiB_file": round(rss_small, 1),
        "raw_median_wall_s": round(med("raw", "wall_s"), 3),
        "raw_events_per_s": round(events / med("raw", "wall_s")),
        "raw_peak_rss_mib": round(max(s["rss_mib"] for s in samples["raw"]), 1),
        "stats_over_raw_time": round(med("stats", "wall_s") / med("raw", "wall_s"), 2),
        "goal_20M_per_s_met": rate >= 20e6,
        "goal_bounded_memory_met": rss < rss_small + 32,
    }
    return {"samples": samples, "summary": summary}
