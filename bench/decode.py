"""Trace decoding: a file of 2-argument events into the columnar model, vs babeltrace2.

Baselines, measured in the same run, interleaved: (1) babeltrace2 reading an equivalent
LTTng-UST CTF trace (same event count, two u64 fields, recorded here by a small C
program; sink.utils.dummy, so no text formatting) when lttng-tools, liblttng-ust-dev,
babeltrace2 and gcc are installed and a session daemon can run; (2) numpy ``fromfile``
with a structured dtype (a raw read with no checks: the ceiling); (3)
``struct.iter_unpack`` (the pure-Python way). Then the careful per-record path, and a
longer hypothesis fuzz run of the decoder (both paths must agree, nothing may raise).

``UNDEBUG_BENCH_EVENTS`` (default 20,000,000) sets the file's size in events.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tracers.decode import MAGIC, SYNC_W0, SYNC_W1, decode, decode_file, record_dtype
from tracers.model import TraceModel

EVENTS = int(os.environ.get("UNDEBUG_BENCH_EVENTS", 20_000_000))
LTTNG_EVENTS = min(EVENTS, 2_000_000)  # babeltrace2 reads ~3 M/s: keep its rounds short
ROUNDS = 7
CHUNK = 4096  # records per CPU batch; each batch begins with a SYNC, as the stub sends them
FUZZ_EXAMPLES = 5000
HZ, BOOT = 3_000_000_000, 2_000_000_000_000


def write_stream(path: Path, events: int, cpus: int = 2) -> int:
    """A stream of 2-argument events (32 bytes each) in per-CPU batches, each batch
    starting with a SYNC. Returns the number of records written."""
    head = struct.pack("<QHHIQQHBBHH32sQ", MAGIC, 1, 80, 1, HZ, BOOT, cpus, 20, 1, 16, 16,
                       bytes(range(20)).ljust(32, b"\0"), BOOT)
    ev = record_dtype(2)
    sync = record_dtype(3)
    seq = [0] * cpus
    records = 0
    with open(path, "wb") as f:
        f.write(head)
        done, batch = 0, 0
        while done < events:
            cpu = batch % cpus
            n = min(CHUNK - 1, events - done)
            s = np.zeros(1, sync)
            s["tsc"], s["id"], s["cpu"], s["nslots"] = BOOT + 10 * done, 0xFF00, cpu, 3
            s["seq"], s["tid"] = seq[cpu] & 0xFFFF, 1 + cpu
            s["w"][0] = [SYNC_W0, SYNC_W1, seq[cpu], 0]
            e = np.zeros(n, ev)
            index = np.arange(done, done + n, dtype=np.uint64)
            e["tsc"] = BOOT + 10 * index + 5
            e["id"] = index % 6
            e["cpu"], e["nslots"], e["tid"] = cpu, 2, 1 + cpu
            e["seq"] = (seq[cpu] + 1 + np.arange(n)) & 0xFFFF
            e["w"][:, 0], e["w"][:, 1] = index, index * 7
            f.write(s.tobytes())
            f.write(e.tobytes())
            seq[cpu] += n + 1
            records += n + 1
            done += n
            batch += 1
    return records


# ---- LTTng -----------------------------------------------------------------------------

_TP_H = """#undef LTTNG_UST_TRACEPOINT_PROVIDER
#define LTTNG_UST_TRACEPOINT_PROVIDER udbench
#undef LTTNG_UST_TRACEPOINT_INCLUDE
#define LTTNG_UST_TRACEPOINT_INCLUDE "./tp.h"
#if !defined(UDBENCH_TP_H) || defined(LTTNG_UST_TRACEPOINT_HEADER_MULTI_READ)
#define UDBENCH_TP_H
#include <lttng/tracepoint.h>
LTTNG_UST_TRACEPOINT_EVENT(udbench, ev, LTTNG_UST_TP_ARGS(uint64_t, a, uint64_t, b),
    LTTNG_UST_TP_FIELDS(lttng_ust_field_integer(uint64_t, a, a)
                        lttng_ust_field_integer(uint64_t, b, b)))
#endif
#include <lttng/tracepoint-event.h>
"""
_TP_C = "#define LTTNG_UST_TRACEPOINT_CREATE_PROBES\n#define LTTNG_UST_TRACEPOINT_DEFINE\n" \
        "#include \"tp.h\"\n"
_MAIN_C = """#include <stdlib.h>
#include "tp.h"
int main(int argc, char **argv) {
    unsigned long n = strtoul(argv[1], 0, 0);
    for (unsigned long i = 0; i < n; i++)
        lttng_ust_tracepoint(udbench, ev, i, i * 7);
    return 0;
}
"""


def _run(*argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=True, **kw)


def lttng_trace(tmp: Path, events: int) -> tuple[Path | None, str]:
    """Record ``events`` 2-field events with LTTng-UST; (trace dir, how) or (None, why not)."""
    for tool in ("lttng", "lttng-sessiond", "babeltrace2", "gcc"):
        if shutil.which(tool) is None:
            return None, f"{tool} is not installed"
    src = tmp / "lttng-src"
    src.mkdir()
    (src / "tp.h").write_text(_TP_H)
    (src / "tp.c").write_text(_TP_C)
    (src / "main.c").write_text(_MAIN_C)
    try:
        _run("gcc", "-O2", "-I.", "-o", "emit", "main.c", "tp.c", "-llttng-ust", "-ldl", cwd=src)
    except subprocess.CalledProcessError as exc:
        return None, f"cannot build the LTTng-UST program: {exc.stderr.strip()[-200:]}"
    daemon = None
    if subprocess.run(["lttng", "list"], capture_output=True).returncode != 0:
        daemon = subprocess.Popen(["lttng-sessiond", "--no-kernel"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    name = f"undebug-bench-{os.getpid()}"
    out = tmp / "lttng-trace"
    try:
        _run("lttng", "create", name, f"--output={out}")
        try:
            _run("lttng", "enable-channel", "-u", "ch", "-s", name, "--subbuf-size=8M",
                 "--num-subbuf=8", "--blocking-timeout=inf")
            _run("lttng", "enable-event", "-u", "udbench:ev", "-c", "ch", "-s", name)
            _run("lttng", "start", name)
            _run(str(src / "emit"), str(events),
                 env={**os.environ, "LTTNG_UST_ALLOW_BLOCKING": "1"})
            _run("lttng", "stop", name)
        finally:
            subprocess.run(["lttng", "destroy", name], capture_output=True)
    except subprocess.CalledProcessError as exc:
        return None, f"lttng failed: {' '.join(exc.cmd)}: {exc.stderr.strip()[-200:]}"
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait()
    counted = _run("babeltrace2", str(out), "-c", "sink.utils.counter").stdout
    if f"{events} Event messages" not in " ".join(counted.split()):
        return None, f"the LTTng trace does not hold {events} events (discarded?)"
    return out, "LTTng-UST 2.13 session, blocking channel (no discards)"


def babeltrace_s(trace: Path) -> float:
    start = time.perf_counter()
    _run("babeltrace2", str(trace), "-c", "sink.utils.dummy")
    return time.perf_counter() - start


# ---- rounds ----------------------------------------------------------------------------

def undebug_s(path: Path) -> tuple[float, int]:
    start = time.perf_counter()
    decoded = decode_file(path)
    took = time.perf_counter() - start
    assert not decoded.damage and decoded.problem is None
    return took, int(np.count_nonzero(decoded.records.id < 0xFF00))


def fromfile_s(path: Path) -> float:
    start = time.perf_counter()
    np.fromfile(path, dtype=record_dtype(2), offset=80)
    return time.perf_counter() - start


def iter_unpack_s(data: bytes) -> float:
    start = time.perf_counter()
    for _ in struct.iter_unpack("<QHBBHHQQ", data):
        pass
    return time.perf_counter() - start


def fuzz(examples: int) -> dict[str, Any]:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from tests.test_trace_decode import damaged_streams, same

    count = 0

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.binary(max_size=20_000), damaged_streams()))
    def prop(data: bytes) -> None:
        nonlocal count
        count += 1
        same(decode(data), decode(data, fast=False))

    start = time.monotonic()
    prop()
    return {"examples": count, "seconds": round(time.monotonic() - start, 1), "failures": 0}


def run() -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ud-bench-decode-"))
    try:
        path = tmp / "events.utrace"
        records = write_stream(path, EVENTS)
        size = path.stat().st_size
        sample = path.read_bytes()[80 : 80 + 32 * min(EVENTS, 2_000_000)]
        lttng, lttng_how = lttng_trace(tmp, LTTNG_EVENTS)
        samples: dict[str, list[float]] = {"undebug_s": [], "fromfile_s": [],
                                           "iter_unpack_2M_s": [], "babeltrace2_s": [],
                                           "model_order_loss_s": []}
        events = 0
        # Warm-up, untimed: in a fresh process the first touch of ~1 GB of new memory costs
        # about a second here (nested virtualisation backs guest pages lazily).
        undebug_s(path)
        for _ in range(ROUNDS):
            took, events = undebug_s(path)
            samples["undebug_s"].append(took)
            samples["fromfile_s"].append(fromfile_s(path))
            samples["iter_unpack_2M_s"].append(iter_unpack_s(sample))
            if lttng is not None:
                samples["babeltrace2_s"].append(babeltrace_s(lttng))
        decoded = decode_file(path)
        for _ in range(2):
            start = time.perf_counter()
            model = TraceModel(decoded)
            _ = model.order
            loss = model.loss()
            samples["model_order_loss_s"].append(time.perf_counter() - start)
        assert all(x.agree and x.gaps == 0 for x in loss)
        careful = path.read_bytes()[: 80 + 32 * 200_000]
        start = time.perf_counter()
        careful_records = len(decode(careful, fast=False).records)
        careful_s = time.perf_counter() - start
        fuzz_result = fuzz(FUZZ_EXAMPLES)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in samples.items() if v}
    rate = events / med["undebug_s"]
    summary: dict[str, Any] = {
        "events": events, "records": records, "file_bytes": size,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "undebug_events_per_s": round(rate),
        "goal_20M_per_s_met": rate >= 20e6,
        "fromfile_records_per_s": round(records / med["fromfile_s"]),
        "iter_unpack_records_per_s": round(len(sample) / 32 / med["iter_unpack_2M_s"]),
        "careful_path_records_per_s": round(careful_records / careful_s),
        "fuzz": fuzz_result,
        "babeltrace2": lttng_how if lttng is not None else f"not measured: {lttng_how}",
    }
    if "babeltrace2_s" in med:
        bt_rate = LTTNG_EVENTS / med["babeltrace2_s"]
        summary["babeltrace2_events_per_s"] = round(bt_rate)
        summary["undebug_over_babeltrace2"] = round(rate / bt_rate, 1)
    with contextlib.suppress(KeyError):
        summary["undebug_over_iter_unpack"] = round(rate / summary["iter_unpack_records_per_s"], 1)
    return {"samples": samples, "summary": summary}
