"""All-thread backtraces on a real Unikraft image (>= 100 threads): undebug vs gdb scripting.

The image is built outside the repository (never committed): its path comes from
UNDEBUG_UNIKRAFT_BENCH_IMAGE, ``IMAGE.dbg`` beside it has the symbols; without the
variable the row is skipped (the result says so and why). The result records the image
measured (path and sha256 of it and of its .dbg). undebug side, on a guest started by
``undebug run -d --memory 512 --smp 1 IMAGE``: ``undebug bt NAME --all --json`` end to
end as a subprocess, in this environment and a clean one (bench/threads.py's
``clean_env``), and, for where the time goes, bench/threads.py's in-process phases.
Baseline: ``bench/gdb/unikraft_bt.py`` (walk ``uk_sched_head->thread_list``, load each
switched-out thread's registers from the frame ``ukarch_ctx_switch`` left at its
``ctx.sp``, ``bt``, restore; the running thread on the vCPU) under ``gdb -batch`` against
an identical second QEMU started here (the supervisor holds the first guest's only
gdbstub). Both guests are paused while either side is measured; rounds interleaved,
medians. Goal (issue 9): >= 10x the gdb script end to end, same run, >= 100 threads.

Both sides must list the same threads and, for the threads that were not running (two
guests, two moments), the same function-name chains; checked for all threads and for the
app's threads alone (all but Unikraft's own ``idle`` and ``init``). gdb prints the zero
return address that ends a thread's stack as a last frame ``0x0 in ?? ()``; undebug ends
the chain there, so a trailing ``??`` is dropped from gdb's chains before comparing.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.threads import (
    IN_PROCESS,
    Clock,
    PlainGuest,
    UndebugGuest,
    clean_env,
    compare,
    gdb_round,
    median,
    teardown,
    undebug,
)

VARIABLE = "UNDEBUG_UNIKRAFT_BENCH_IMAGE"
GDB_SCRIPT = Path(__file__).resolve().parent / "gdb" / "unikraft_bt.py"
ROUNDS = 9
MEMORY_MB = 512  # a 64 KiB stack (and its aux stack) per thread: 1,000 threads fit
MIN_THREADS = 100
GOAL_SPEEDUP = 10
# Unikraft prints no line once an app's threads have started: from the console's first
# line (its banner) on, give the app this long (many: 128 workers start within ~0.2 s).
READY, SETTLE_S = b"\n", 3.0
UNIKRAFT_THREADS = ("idle", "init")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli_side(out: bytes) -> dict[str, Any]:
    """``undebug bt --all --json`` in the shape :func:`bench.threads.compare` takes."""
    traces = json.loads(out)["backtraces"]
    return {"count": len(traces),
            "names": {t["thread"]["id"]: t["thread"]["name"] for t in traces},
            "states": {t["thread"]["id"]: t["thread"]["state"] for t in traces},
            "chains": {t["thread"]["id"]: [f.get("function") for f in t["frames"]]
                       for t in traces if t["thread"]["state"] != "exited"}}


def trim(gdb_side: dict[str, Any]) -> dict[str, Any]:
    """gdb's chains without the trailing ``??`` frame of the zero return address."""
    threads = []
    for t in gdb_side["threads"]:
        functions = list(t["functions"])
        while functions[-1:] == ["??"]:
            functions.pop()
        threads.append({**t, "functions": functions})
    return {**gdb_side, "threads": threads}


def app_threads(ud: dict[str, Any], gdb_side: dict[str, Any]) \
        -> tuple[dict[str, Any], dict[str, Any]]:
    """Both sides restricted to the app's threads (by name, each side its own)."""
    ids = {i for i, name in ud["names"].items() if name not in UNIKRAFT_THREADS}
    mine = {"count": len(ids), **{k: {i: v for i, v in ud[k].items() if i in ids}
                                  for k in ("states", "chains")}}
    theirs = [t for t in gdb_side["threads"] if t["name"] not in UNIKRAFT_THREADS]
    return mine, {**gdb_side, "threads": theirs}


def skipped(reason: str) -> dict[str, Any]:
    return {"samples": {}, "summary": {"skipped": True, "reason": reason}}


def run() -> dict[str, Any]:
    value = os.environ.get(VARIABLE)
    if not value:
        return skipped(f"{VARIABLE} is not set (a Unikraft image with >= {MIN_THREADS} "
                       "threads, built outside the repository, IMAGE.dbg beside it)")
    image = Path(value).resolve()
    dbg = image.with_name(image.name + ".dbg")
    for path in (image, dbg):
        if not path.is_file():
            raise RuntimeError(f"{VARIABLE}: {path} is not a file")
    measured = {"image": str(image), "image_sha256": _sha256(image), "dbg": str(dbg),
                "dbg_sha256": _sha256(dbg)}
    samples: dict[str, list[float]] = {key: [] for key in (
        "undebug_cli_s", "undebug_cli_cpu_s", "undebug_cli_clean_env_s",
        "undebug_cli_clean_env_cpu_s", "undebug_inproc_total_s", "undebug_inproc_import_s",
        "undebug_inproc_attach_s", "undebug_inproc_threads_s",
        "undebug_inproc_backtraces_s", "gdb_wall_s", "gdb_cpu_s", "gdb_walk_s")}
    check: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="ud-"))
    ud = plain = None
    try:
        ud = UndebugGuest(tmp / "run", "ukbt", "", memory=MEMORY_MB, smp=1, kernel=image,
                          ready=READY, settle=SETTLE_S)
        clean = clean_env(ud.env, tmp)
        undebug("bt", ud.name, "--all", "--json", env=clean, capture_output=True)  # pycache
        undebug("stop", ud.name, env=ud.env, stdout=subprocess.DEVNULL)
        (tmp / "plain").mkdir()
        plain = PlainGuest(tmp / "plain", "", memory=MEMORY_MB, smp=1, kernel=image,
                           ready=READY, settle=SETTLE_S, devices=("pvpanic",))
        for _ in range(ROUNDS):
            for key, env in (("undebug_cli", ud.env), ("undebug_cli_clean_env", clean)):
                with Clock() as clock:
                    out = undebug("bt", ud.name, "--all", "--json", env=env,
                                  capture_output=True).stdout
                samples[f"{key}_s"].append(clock.wall)
                samples[f"{key}_cpu_s"].append(clock.cpu)
            inproc = json.loads(subprocess.run(
                [sys.executable, "-c", IN_PROCESS, ud.name], env=ud.env, check=True,
                capture_output=True, text=True).stdout)
            for key in ("total", "import", "attach", "threads", "backtraces"):
                samples[f"undebug_inproc_{key}_s"].append(inproc[f"{key}_s"])
            clock, gdb_side = gdb_round(plain, GDB_SCRIPT, dbg, "GDBBT ")
            samples["gdb_wall_s"].append(clock.wall)
            samples["gdb_cpu_s"].append(clock.cpu)
            samples["gdb_walk_s"].append(gdb_side["walk_s"])
            if not check:
                mine, theirs = cli_side(out), trim(gdb_side)
                check = {"all_threads": compare(mine, theirs),
                         "app_threads": compare(*app_threads(mine, theirs))}
    finally:
        teardown(tmp, ud, plain)
    med = {k: round(median(v), 4) for k, v in samples.items()}
    threads = check["all_threads"]["threads_undebug"]
    speedup = round(med["gdb_wall_s"] / med["undebug_cli_s"], 1)
    speedup_clean = round(med["gdb_wall_s"] / med["undebug_cli_clean_env_s"], 1)
    summary = {
        "skipped": False, "measured": measured, "threads": threads,
        "baseline": "bench/gdb/unikraft_bt.py under gdb -batch -nx, on an identical second "
                    f"QEMU (same image, -M pc -accel tcg -m {MEMORY_MB}, 1 vCPU, pvpanic)",
        "median_s": med,
        "ms_per_thread": {k: round(med[k] * 1000 / threads, 3) for k in (
            "undebug_cli_s", "undebug_cli_clean_env_s", "gdb_wall_s", "gdb_walk_s")},
        "speedup_cli_vs_gdb_end_to_end": speedup,
        "speedup_cli_clean_env_vs_gdb_end_to_end": speedup_clean,
        "speedup_in_process_vs_gdb_walk": round(med["gdb_walk_s"]
                                                / med["undebug_inproc_total_s"], 1),
        "agreement": check,
        "load_average_at_end": os.getloadavg(),
        "rounds": ROUNDS,
        "goal": f">= {MIN_THREADS} threads: undebug bt --all --json end to end >= "
                f"{GOAL_SPEEDUP}x the gdb script end to end (same run)",
        "goal_met": {
            "enough_threads": threads >= MIN_THREADS,
            "10x_end_to_end": threads >= MIN_THREADS and speedup >= GOAL_SPEEDUP,
            "10x_end_to_end_clean_env": threads >= MIN_THREADS and speedup_clean >= GOAL_SPEEDUP,
        },
    }
    return {"samples": samples, "summary": summary}
