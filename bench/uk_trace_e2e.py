"""A real Unikraft app streaming through undebug's library (guest-stubs/unikraft/): events/s, loss.

The images are built outside the repository (guest-stubs/unikraft/README.md); each row is
skipped, saying why, when its variable is unset:

* ``UNDEBUG_UNIKRAFT_STUB_STRESS_IMAGE``: the app built with ``CONFIG_APPSTUB_STRESS=N``:
  after 200 ms its main thread emits N 2-argument events (32 bytes each) as fast as it
  can, handing a batch to the transport every 2048 events and waiting for ring room (as
  the reference guest's ``trace_bench``: lossless while the host keeps up), then prints
  ``stress done events=<n> cycles=<c> ns=<ns> lost=<l>`` (ns: Unikraft's clock);
* ``UNDEBUG_UNIKRAFT_STUB_FLOOD_IMAGE``: the same with ``CONFIG_APPSTUB_STRESS_FLOOD``:
  no waiting for room (overload: the ring drops the newest records, counted in band).

Each run: ``undebug run -d --trace-max-size 0 IMAGE`` in a private UNDEBUG_RUNTIME_DIR,
the session's recording decoded once the ``done`` line is on the console and the file
has stopped growing, then ``undebug kill`` (which removes it). Events/s three ways (the guest's own line;
the recording's events over the span of their TSCs; the host clock on the file's size).
Checked: every event in the file, no damage, no gap, no LOST (stress); host-counted loss
from sequence gaps (FORMAT.md 3.2, bench.trace_e2e.exact_host_loss) against the in-band
LOST totals and the guest's ``lost=`` (flood).

Baseline in the same run, interleaved: the reference guest's ``trace_bench`` with the
same event count, ``-smp 1``, session recording (bench.trace_e2e.undebug_run); the ratio
Unikraft/reference per round holds up under load where absolute rates do not.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.trace_e2e import GUEST, Sampler, _ud, exact_host_loss, undebug_run

STRESS_VAR = "UNDEBUG_UNIKRAFT_STUB_STRESS_IMAGE"
FLOOD_VAR = "UNDEBUG_UNIKRAFT_STUB_FLOOD_IMAGE"
ROUNDS = 5
DONE = re.compile(r"stress done events=(\d+) cycles=(\d+) ns=(\d+) lost=(\d+)")


def uk_run(tmp: Path, image: Path, name: str) -> dict[str, Any]:
    import numpy as np

    from tracers.decode import ID_LOST, decode_file
    from tracers.metadata import for_stream, load_tracepoints
    from tracers.model import TraceModel

    env = {**os.environ, "UNDEBUG_RUNTIME_DIR": str(tmp / "run")}
    trace = tmp / "run" / name / "trace.utrace"
    sampler = Sampler(trace)
    started = _ud(env, "run", "-d", "--name", name, "--trace-max-size", "0", str(image))
    if started.returncode != 0:
        raise RuntimeError(f"undebug run failed: {started.stderr}")
    try:
        console = sampler.wait_line(tmp / "run" / name / "console.log", "stress done")
        sampler.wait_stable()
        tps = load_tracepoints(image.with_name(image.name + ".dbg"))
        decoded = decode_file(trace, tracepoint_count=tps.count)
        size = trace.stat().st_size
    finally:
        _ud(env, "kill", name)
    done = DONE.search(console)
    assert done, console[-500:]
    events, cycles, ns, lost = (int(x) for x in done.groups())
    usable, notes = for_stream(tps, decoded.sessions)
    r = decoded.records
    mine = r.id == next(iter(tps.ids_named("stress")))
    tsc = r.tsc[mine]
    hz = decoded.sessions[0].header.tsc_hz
    losses = TraceModel(decoded, usable).loss()
    host = {int(c): exact_host_loss(r, np.flatnonzero(r.cpu == c)) for c in np.unique(r.cpu)}
    res = {
        "events_guest": events, "events_in_file": int(mine.sum()),
        "guest_events_s": events / (ns / 1e9), "guest_tsc_events_s": events * hz / cycles,
        "file_tsc_events_s": int(mine.sum()) / ((int(tsc.max()) - int(tsc.min())) / hz),
        "file_wall_events_s": sampler.wall_rate(), "bytes": size,
        "damage": len(decoded.damage), "problem": decoded.problem,
        "build_id_ok": usable is not None and not notes,
        "host_gaps": sum(host.values()), "model_gaps": sum(x.gaps for x in losses),
        "in_band_lost": int(r.args[r.id == ID_LOST, 0].sum()) if len(r) else 0,
        "agree": all(x.agree for x in losses), "guest_console_lost": lost,
    }
    return res


def _lossless(r: dict[str, Any]) -> bool:
    return (r["events_in_file"] == r["events_guest"] and r["damage"] == 0 and not r["problem"]
            and r["host_gaps"] == 0 and r["in_band_lost"] == 0 and r["agree"]
            and r["guest_console_lost"] == 0 and r["build_id_ok"])


def _m(x: float | None) -> float | None:
    return None if x is None else round(x / 1e6, 2)


def _image(variable: str) -> Path | None:
    value = os.environ.get(variable)
    return Path(value) if value else None


def run() -> dict[str, Any]:
    stress, flood = _image(STRESS_VAR), _image(FLOOD_VAR)
    summary: dict[str, Any] = {}
    samples: dict[str, list[dict[str, Any]]] = {"unikraft": [], "refguest": [], "flood": []}
    if stress is None and flood is None:
        summary = {"skipped": True, "reason": f"{STRESS_VAR} and {FLOOD_VAR} are not set "
                   "(Unikraft images with undebug's library, built outside the repository)"}
        return {"samples": samples, "summary": summary}
    tmp = Path(tempfile.mkdtemp(prefix="ud-uke2e-"))
    load_before = os.getloadavg()
    started = time.monotonic()
    try:
        for rnd in range(ROUNDS if stress else 0):
            assert stress is not None
            order = ("unikraft", "refguest") if rnd % 2 == 0 else ("refguest", "unikraft")
            for who in order:
                if who == "unikraft":
                    res = uk_run(tmp, stress, "ukstress")
                else:
                    n = samples["unikraft"][-1]["events_guest"] if samples["unikraft"] else \
                        4_000_000
                    res = undebug_run(tmp, 1, "bench", n, trace_file=False)
                samples[who].append(res)
                print(f"  {who}: guest {_m(res['guest_events_s'])} M/s, file "
                      f"{_m(res['file_tsc_events_s'])} M/s, wall "
                      f"{_m(res['file_wall_events_s'])} M/s", flush=True)
        if flood is not None:
            res = uk_run(tmp, flood, "ukflood")
            samples["flood"].append(res)
            print(f"  flood: host-counted lost {res['host_gaps']}, in-band LOST "
                  f"{res['in_band_lost']}, console lost {res['guest_console_lost']}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    uk, ref = samples["unikraft"], samples["refguest"]
    if stress is None:
        summary["stress"] = {"skipped": True, "reason": f"{STRESS_VAR} is not set"}
    else:
        summary["stress"] = {
            "events": uk[0]["events_guest"],
            **{f"unikraft_{m}_M": _m(statistics.median(r[m] for r in uk))
               for m in ("guest_events_s", "file_tsc_events_s")},
            "unikraft_file_tsc_range_M": [_m(min(r["file_tsc_events_s"] for r in uk)),
                                          _m(max(r["file_tsc_events_s"] for r in uk))],
            "refguest_file_tsc_events_s_M": _m(statistics.median(r["file_tsc_events_s"]
                                                                 for r in ref)),
            "ratio_unikraft_over_refguest_per_round": [
                round(a["file_tsc_events_s"] / b["file_tsc_events_s"], 3)
                for a, b in zip(uk, ref, strict=True)],
            "lossless_all_rounds": all(_lossless(r) for r in uk),
            "refguest_lossless_all_rounds": all(
                r["events_in_file"] == r["events_guest"] and r["host_gaps"] == 0 for r in ref),
        }
    if flood is None:
        summary["flood"] = {"skipped": True, "reason": f"{FLOOD_VAR} is not set"}
    else:
        f = samples["flood"][0]
        summary["flood"] = {
            "events": f["events_guest"], "received": f["events_in_file"],
            "host_counted_lost": f["host_gaps"], "in_band_lost": f["in_band_lost"],
            "guest_console_lost": f["guest_console_lost"],
            "agree": f["agree"] and f["host_gaps"] == f["in_band_lost"] ==
            f["guest_console_lost"] and f["events_in_file"] + f["host_gaps"] ==
            f["events_guest"],
            "delivered_events_s_M": _m(f["file_tsc_events_s"])}
    summary["refguest_image"] = str(GUEST)
    summary["load_avg_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    summary["wall_s"] = round(time.monotonic() - started, 1)
    return {"samples": samples, "summary": summary}
