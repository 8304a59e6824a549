"""`undebug maps` with 1 GiB mapped in 4 KiB pages: undebug vs the same walk through gdb `x`.

The reference guest with ``--memory 1024`` maps all its RAM in 4 KiB pages (262,144
page-table entries in 512 last-level tables, plus the APICs' 2 MiB pages). undebug side,
on a guest under ``undebug run -d`` (paused with ``undebug stop``): ``undebug maps NAME
--json`` timed end to end as a subprocess (start to exit: imports, attach, the walk, the
names, the JSON), in this machine's environment and in a clean one (``clean_env``: this
one sets PYTHONDONTWRITEBYTECODE, so every import compiles from source), and, in a fresh
Python process, the page-table walk alone (``walk_mappings`` over the mmap'd RAM) and the
whole model (``memory_map``). Baseline:
``bench/gdb/walk_tables.py``, the same walk (``x/512gx`` per table on QEMU's stub in
physical mode, merging as undebug does) run by ``gdb -batch`` against an identical second
QEMU started here (the supervisor owns the first guest's only gdbstub connection), paused
too. Interleaved rounds (gdb in the first 3 of 7), medians of wall time and the command's
CPU time, with ``python -c pass`` as the floor of any Python command in the same rounds. Both sides must
find the same tables and mapped bytes. Goal: ``undebug maps`` under 1 s end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.threads import (
    Clock,
    PlainGuest,
    UndebugGuest,
    clean_env,
    ensure_guest,
    gdb_round,
    median,
    teardown,
    undebug,
)

ROUNDS = 7
GDB_ROUNDS = 3  # one gdb walk of 516 tables takes ~50 s here
MEMORY_MB = 1024
APPEND = "threads=8"
GOAL_S = 1.0
WALK_SCRIPT = Path(__file__).resolve().parent / "gdb" / "walk_tables.py"

IN_PROCESS = r"""
import json, sys, time
from undebug.arch.x86_64 import walk_mappings
from undebug.os import provider_for
from undebug.os.memmap import memory_map
from undebug.target import open_target
with open_target(sys.argv[1]) as target:
    cr3 = target.registers(0)["cr3"]
    t0, c0 = time.perf_counter(), time.process_time()
    walk = walk_mappings(target.read_physical, cr3)
    t1, c1 = time.perf_counter(), time.process_time()
    memmap = memory_map(target, provider_for(target))
    t2 = time.perf_counter()
print(json.dumps({"walk_s": t1 - t0, "walk_cpu_s": c1 - c0, "memory_map_s": t2 - t1,
                  "tables": walk.tables_read, "mappings": len(walk.mappings), "regions": len(memmap.regions),
                  "mapped_bytes": sum(m.size for m in walk.mappings)}))
"""


def run() -> dict[str, Any]:
    guest = ensure_guest()
    tmp = Path(tempfile.mkdtemp(prefix="ud-bench-maps-"))
    samples: dict[str, list[float]] = {k: [] for k in (
        "python_floor_s", "undebug_cli_s", "undebug_cli_cpu_s", "undebug_cli_clean_env_s",
        "undebug_cli_clean_env_cpu_s", "undebug_walk_s",
        "undebug_walk_cpu_s", "undebug_memory_map_s",
        "gdb_wall_s", "gdb_cpu_s", "gdb_walk_s")}
    ours: dict[str, Any] = {}
    theirs: dict[str, Any] = {}
    plain = ud = None
    try:
        ud = UndebugGuest(tmp / "run", "maps", APPEND, memory=MEMORY_MB)
        undebug("stop", "maps", env=ud.env, stdout=subprocess.DEVNULL)
        clean = clean_env(ud.env, tmp)
        undebug("maps", "maps", "--json", env=clean, capture_output=True)  # warm its pycache
        plain_dir = tmp / "plain"
        plain_dir.mkdir()
        plain = PlainGuest(plain_dir, APPEND, memory=MEMORY_MB)
        for round_ in range(ROUNDS):
            with Clock() as clock:
                subprocess.run([sys.executable, "-c", "pass"], check=True)
            samples["python_floor_s"].append(clock.wall)
            with Clock() as clock:
                out = undebug("maps", "maps", "--json", env=ud.env, capture_output=True).stdout
            samples["undebug_cli_s"].append(clock.wall)
            samples["undebug_cli_cpu_s"].append(clock.cpu)
            doc = json.loads(out)
            with Clock() as clock:
                undebug("maps", "maps", "--json", env=clean, capture_output=True)
            samples["undebug_cli_clean_env_s"].append(clock.wall)
            samples["undebug_cli_clean_env_cpu_s"].append(clock.cpu)
            inproc = json.loads(subprocess.run(
                [sys.executable, "-c", IN_PROCESS, "maps"], env=ud.env, check=True,
                capture_output=True, text=True).stdout)
            samples["undebug_walk_s"].append(inproc["walk_s"])
            samples["undebug_walk_cpu_s"].append(inproc["walk_cpu_s"])
            samples["undebug_memory_map_s"].append(inproc["memory_map_s"])
            ours = {"tables": doc["tables_read"], "mapped_bytes": doc["mapped_bytes"],
                    "regions": len(doc["regions"]), "mappings": inproc["mappings"]}
            if round_ >= GDB_ROUNDS:
                continue
            clock, theirs = gdb_round(plain, WALK_SCRIPT, marker="PTWALK ")
            samples["gdb_wall_s"].append(clock.wall)
            samples["gdb_cpu_s"].append(clock.cpu)
            samples["gdb_walk_s"].append(theirs["walk_s"])
    finally:
        teardown(tmp, ud, plain)
    medians = {k: median(v) for k, v in samples.items()}
    same = {k: ours.get(k) == theirs.get(k) for k in ("tables", "mapped_bytes", "mappings")}
    return {"guest": guest, "memory_mb": MEMORY_MB, "rounds": ROUNDS, "samples": samples,
            "undebug": ours, "gdb": {k: v for k, v in theirs.items() if k != "walk_s"},
            "summary": {**{k: round(v, 4) for k, v in medians.items()},
                        "speedup_end_to_end": round(medians["gdb_wall_s"]
                                                    / medians["undebug_cli_s"], 1),
                        "speedup_walk": round(medians["gdb_walk_s"]
                                              / medians["undebug_walk_s"], 1),
                        "same_walk": same, "tables": ours.get("tables"),
                        "mapped_bytes": ours.get("mapped_bytes"),
                        "goal_under_1s": medians["undebug_cli_s"] < GOAL_S,
                        "goal_under_1s_clean_env": medians["undebug_cli_clean_env_s"] < GOAL_S}}
