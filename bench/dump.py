"""Dump bundles of a 1 GiB guest: undebug's core.elf (full and --sparse) vs QEMU's dump-guest-memory.

The reference guest runs ``threads=2000`` on ``-smp 2 -m 1024`` (about 13 MiB of its 1 GiB
is not zero: stacks, heap, the flight recorder). undebug side: ``undebug dump NAME`` and
``undebug dump NAME --sparse`` end to end (the whole bundle: core.elf, summary.json with
every thread's backtrace, the flight recorder), and the core's own writing time from the
summary (``core.seconds``). Baseline: QMP ``dump-guest-memory`` (ELF, ``paging=false``,
memory only) of an identical *second* QEMU started here (the supervisor owns the first
guest's QMP connection), in the same rounds, interleaved. Both guests are paused while
measured. Sizes are ``st_size``. Then opening a bundle and listing its threads (``undebug
threads BUNDLE --json``, end to end). Then the stress run: every crash kind of the
reference guest through ``run --ci`` ``STRESS_ROUNDS`` times (default 20, env
``UNDEBUG_BENCH_STRESS_ROUNDS``): detected (exit 1 with a complete bundle) and classified
(the bundle names the planted function; a hang is a hang).

Goals (same run): the full dump at least as fast as QEMU's (the core, and the bundle end
to end); --sparse at least 5x faster (the core) and 10x smaller than QEMU's dump, its
bundle end to end at least as fast; open + threads under 1 s; every crash detected.

Run it as ``python -m bench dump`` (a module of the bench package, not a script). The
stress run boots a fresh guest per crash kind per round (160 ``run --ci`` runs at the
default 20 rounds); ``UNDEBUG_BENCH_STRESS_ROUNDS=0`` skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.threads import (
    GUEST,
    Clock,
    PlainGuest,
    UndebugGuest,
    clean_env,
    ensure_guest,
    median,
    teardown,
    undebug,
)

MEMORY_MB = 1024
APPEND = "threads=2000"
ROUNDS = 3
BOOT_TIMEOUT_S = 300
KINDS = {"null": "crash_null", "panic": "crash_panic", "assert": "crash_assert",
         "stack-overflow": "recurse_forever", "div0": "crash_div0", "oom": "crash_oom",
         "triple-fault": "crash_triple_fault", "hang": "crash_hang"}


def _dump(name: str, out: Path, env: dict[str, str], *extra: str) -> tuple[float, float, Path,
                                                                            dict[str, Any]]:
    with Clock() as clock:
        doc = json.loads(undebug("dump", name, "-o", str(out), "--json", *extra, env=env,
                                 capture_output=True).stdout)
    bundle = Path(doc["bundle"])
    summary = json.loads((bundle / "summary.json").read_text())
    return clock.wall, clock.cpu, bundle, summary


def dumps(tmp: Path) -> dict[str, Any]:
    samples: dict[str, list[float]] = {k: [] for k in (
        "qemu_s", "full_s", "full_cpu_s", "full_core_s", "sparse_s", "sparse_cpu_s",
        "sparse_core_s", "open_threads_s", "open_threads_clean_s")}
    sizes: dict[str, int] = {}
    read: dict[str, dict[str, Any]] = {}  # summary.json's core: what was read, what not
    ud = plain = None
    try:
        ud = UndebugGuest(tmp / "run", "dumpbench", APPEND, memory=MEMORY_MB,
                          boot_timeout=BOOT_TIMEOUT_S, settle=2)
        undebug("stop", "dumpbench", env=ud.env, stdout=subprocess.DEVNULL)
        (tmp / "plain").mkdir()
        plain = PlainGuest(tmp / "plain", APPEND, memory=MEMORY_MB, boot_timeout=BOOT_TIMEOUT_S,
                           settle=2)
        threads = 0
        for i in range(ROUNDS):
            # the order alternates, and the page cache's dirty pages are flushed before
            # each measurement: a 1 GiB write right after another one waits on its
            # writeback (the disk is shared with the other sessions)
            for kind in ("qemu", "full", "sparse") if i % 2 == 0 else ("sparse", "full", "qemu"):
                os.sync()
                if kind == "qemu":
                    qemu_core = tmp / f"qemu-{i}.elf"
                    with Clock() as clock:
                        plain.qmp.execute("dump-guest-memory", paging=False,
                                          protocol=f"file:{qemu_core}", format="elf")
                    samples["qemu_s"].append(clock.wall)
                    sizes["qemu"] = qemu_core.stat().st_size
                    qemu_core.unlink()
                    continue
                extra = ("--sparse",) if kind == "sparse" else ()
                wall, cpu, bundle, summary = _dump("dumpbench", tmp / f"{kind}-{i}", ud.env,
                                                   *extra)
                samples[f"{kind}_s"].append(wall)
                samples[f"{kind}_cpu_s"].append(cpu)
                samples[f"{kind}_core_s"].append(summary["core"]["seconds"])
                core = (bundle / "core.elf").stat()
                sizes[kind] = core.st_size
                sizes[f"{kind}_on_disk"] = core.st_blocks * 512  # never-written pages: holes
                sizes[f"{kind}_bundle"] = sum(f.stat().st_size for f in bundle.iterdir())
                read[kind] = {k: summary["core"].get(k) for k in (
                    "mapped_bytes", "written_bytes", "tested_bytes", "untouched_bytes")}
                if kind == "sparse":
                    # this machine's env (compiles every module: no bytecode written), and
                    # an installed undebug's (bytecode cached: bench/threads.py clean_env)
                    for key, env in (("open_threads_s", ud.env), ("open_threads_clean_s",
                                                                  clean_env(ud.env, tmp))):
                        with Clock() as clock:
                            listed = json.loads(undebug("threads", str(bundle), "--json",
                                                        env=env, capture_output=True).stdout)
                        samples[key].append(clock.wall)
                    threads = len(listed["threads"])
                else:
                    (bundle / "core.elf").unlink()  # 1 GiB each: keep the disk
    finally:
        teardown(tmp, ud, plain)
    med = {k: median(v) for k, v in samples.items()}
    return {"samples": samples, "medians": med, "sizes": sizes, "read": read, "threads": threads,
            "ratios": {
                "full_vs_qemu_speed": med["qemu_s"] / med["full_s"],
                "full_core_vs_qemu_speed": med["qemu_s"] / med["full_core_s"],
                "sparse_vs_qemu_speed": med["qemu_s"] / med["sparse_s"],
                "sparse_core_vs_qemu_speed": med["qemu_s"] / med["sparse_core_s"],
                "qemu_vs_sparse_size": sizes["qemu"] / sizes["sparse"],
                "full_vs_sparse_size": sizes["full"] / sizes["sparse"]}}


def stress(tmp: Path, rounds: int) -> dict[str, Any]:
    env = {**os.environ, "UNDEBUG_RUNTIME_DIR": str(tmp / "run"),
           "UNDEBUG_DUMP_DIR": str(tmp / "dumps")}
    (tmp / "run").mkdir(mode=0o700, parents=True)
    result: dict[str, Any] = {}
    for kind, function in KINDS.items():
        detected = classified = 0
        failures: list[str] = []  # why a run was not detected (the first few)
        for _ in range(rounds):
            extra = ["--hang-after", "2"] if kind == "hang" else []
            proc = subprocess.run(
                [sys.executable, "-m", "undebug.cli", "run", "--ci", "--json", "--timeout",
                 "60", "--smp", "2", "--append", f"threads=4 crash={kind} crash_after=100",
                 *extra, str(GUEST)],
                env={**env, "PYTHONPATH": str(GUEST.parents[1])}, capture_output=True,
                text=True, check=False)
            why = f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}"
            try:
                doc = json.loads(proc.stdout)
            except ValueError:
                failures.append(f"stdout not JSON; {why}")
                continue
            bundle = Path(doc.get("bundle", "/nonexistent"))
            if proc.returncode != 1 or not (bundle / "summary.json").exists():
                failures.append(f"no bundle; {why}")
                continue
            summary = json.loads((bundle / "summary.json").read_text())
            if not summary.get("complete"):
                failures.append(f"incomplete: {summary.get('failure')}")
                continue
            detected += 1
            crash = summary.get("crash") or {}
            if kind == "hang":
                classified += doc["outcome"]["kind"] in ("hang", "timeout")
            elif kind == "triple-fault":
                classified += doc["outcome"]["kind"] == "reset"
            else:
                classified += crash.get("function") == function
        result[kind] = {"runs": rounds, "detected": detected, "classified": classified,
                        "failures": failures[:5]}
    total = rounds * len(KINDS)  # 0: the stress run was skipped (rates None)
    result["detection_rate"] = sum(r["detected"] for r in result.values()
                                   if isinstance(r, dict)) / total if total else None
    result["classification_rate"] = sum(r["classified"] for r in result.values()
                                        if isinstance(r, dict)) / total if total else None
    return result


def run() -> dict[str, Any]:
    guest = ensure_guest()
    rounds = int(os.environ.get("UNDEBUG_BENCH_STRESS_ROUNDS", "20"))
    tmp = Path(tempfile.mkdtemp(prefix="undebug-bench-dump-"))
    try:
        measured = dumps(tmp / "dumps")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    stress_dir = Path(tempfile.mkdtemp(prefix="undebug-bench-stress-"))
    try:
        with Clock() as clock:
            stressed = stress(stress_dir, rounds)
        stressed["seconds"] = round(clock.wall, 1)
    finally:
        shutil.rmtree(stress_dir, ignore_errors=True)
    ratios = measured["ratios"]
    return {"guest": guest, "dumps": measured, "stress": stressed, "summary": {
        "qemu_s": measured["medians"]["qemu_s"], "full_s": measured["medians"]["full_s"],
        "full_core_s": measured["medians"]["full_core_s"],
        "sparse_s": measured["medians"]["sparse_s"],
        "sparse_core_s": measured["medians"]["sparse_core_s"],
        "open_threads_s": measured["medians"]["open_threads_s"],
        "open_threads_clean_s": measured["medians"]["open_threads_clean_s"],
        "sizes": measured["sizes"], "ratios": ratios,
        "detection_rate": stressed["detection_rate"],
        "classification_rate": stressed["classification_rate"],
        "goals": {"full_at_least_qemu_speed": ratios["full_vs_qemu_speed"] >= 1,
                  "full_core_at_least_qemu_speed": ratios["full_core_vs_qemu_speed"] >= 1,
                  "sparse_core_5x_faster": ratios["sparse_core_vs_qemu_speed"] >= 5,
                  "sparse_at_least_qemu_speed": ratios["sparse_vs_qemu_speed"] >= 1,
                  "sparse_5x_faster": ratios["sparse_vs_qemu_speed"] >= 5,  # end to end
                  "sparse_10x_smaller": ratios["qemu_vs_sparse_size"] >= 10,
                  "open_threads_under_1s": measured["medians"]["open_threads_s"] < 1,
                  "every_crash_detected": stressed["detection_rate"] == 1}}}
