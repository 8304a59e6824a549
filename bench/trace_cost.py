"""Cost per enabled 2-argument tracepoint (host): undebug ring code vs LTTng-UST and bare rdtsc+store.

Host microbenchmark (rdtsc under TCG times the emulator, not the code, so the code's cost is
measured on the host). ``bench/c/ud_bench.c`` is linked with the **unmodified**
``guest-stubs/src/{trace,transport,virtio}.c``, compiled with the guest library's own
code-generation flags (guest-stubs/Makefile), and ``bench/c/host_port.c`` (CPU 0, Linux
thread id, the stub's inline rdtsc, a transport that discards the bytes). It times N
``UNDEBUG_TRACEPOINT(host_bench, "i=%lu t0=%lu", i, t0)`` calls (2 x u64, a 32-byte record):

* ``flight``: flight recorder (no reader; the ring overwrites its oldest records);
* ``stream``: streaming mode, the producer calling ``undebug_trace_poll()`` every 2048
  events (as refguest's ``trace_bench`` does) with the discarding transport: lossless;
* ``stream_thread`` (informational): a consumer thread on a second CPU polls every ~8 us;
  on a shared host it can be descheduled for longer than one ring (16384 events) and then
  records are dropped (reported as ``lost``);
* ``disabled``: after ``undebug_trace_enable(0)``.

Baselines, same run, interleaved: ``bare`` (inline rdtsc + one 32-byte store into a 512 KiB
ring) and LTTng-UST 2.13 (``bench/c/lttng_bench.c``, provider ``lttng_tp.h`` with
``ctf_integer(uint64_t) x 2``) under an active session (``lttng create``,
``enable-event -u ud_bench:ev``, ``start``, run, ``stop``, ``destroy``; default channel:
per-UID buffers, discard mode, 4 x 512 KiB) and with no session (its enabled check only).
Everything is compiled with gcc -O2 into a temporary directory; the measuring thread is
pinned to one CPU. ``make bench`` installs liblttng-ust-dev and lttng-tools; without them
LTTng is reported "not measured" and the goal against it is not checked. In-guest cost:
refguest with ``trace=ring trace_bench=2000000`` (and ``trace=off``) on ``-smp 1`` under
TCG, reported as TCG cycles (emulated; not comparable to host ns).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CDIR = Path(__file__).resolve().parent / "c"
STUB_SRC = ROOT / "guest-stubs" / "src"
STUB_INC = ROOT / "guest-stubs" / "include"
GUEST = ROOT / "build" / "refguest.elf"

N = 1_000_000          # events per repetition
REPS = 5               # repetitions per process (after one warm-up), median taken
ROUNDS = 11            # interleaved rounds
GUEST_EVENTS = 2_000_000
GOAL_VS_LTTNG = 0.30
GOAL_VS_BARE = 3.0

# guest-stubs/Makefile CFLAGS (code generation), so the host objects are the guest's code
GUEST_CFLAGS = ["-ffreestanding", "-fno-pic", "-fno-pie", "-mno-red-zone",
                "-mgeneral-regs-only", "-mcmodel=small", "-fno-omit-frame-pointer",
                "-fno-stack-protector", "-fno-builtin", "-fno-tree-loop-distribute-patterns",
                "-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", f"-I{STUB_INC}"]
HOST_CFLAGS = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-fno-pie", f"-I{STUB_INC}"]


def _cc(args: list[str]) -> None:
    subprocess.run(["gcc", *args], check=True, capture_output=True, text=True)


def build(tmp: Path) -> dict[str, Any]:
    """Compile ud_bench (always) and lttng_bench (if liblttng-ust-dev is usable)."""
    objs = []
    for name in ("trace", "transport", "virtio"):
        obj = tmp / f"stub_{name}.o"
        _cc([*GUEST_CFLAGS, "-c", "-o", str(obj), str(STUB_SRC / f"{name}.c")])
        objs.append(str(obj))
    for name in ("host_port", "ud_bench"):
        obj = tmp / f"{name}.o"
        _cc([*HOST_CFLAGS, "-c", "-o", str(obj), str(CDIR / f"{name}.c")])
        objs.append(str(obj))
    ud = tmp / "ud_bench"
    _cc(["-no-pie", "-o", str(ud), *objs, "-lpthread"])
    out: dict[str, Any] = {"ud_bench": ud, "lttng_bench": None, "lttng_error": None}
    try:
        lt = tmp / "lttng_bench"
        for name in ("lttng_tp", "lttng_bench"):
            _cc(["-O2", "-Wall", "-Wextra", f"-I{CDIR}", "-c", "-o", str(tmp / f"{name}.o"),
                 str(CDIR / f"{name}.c")])
        _cc(["-o", str(lt), str(tmp / "lttng_tp.o"), str(tmp / "lttng_bench.o"),
             "-llttng-ust", "-ldl", "-lpthread"])
        out["lttng_bench"] = lt
    except subprocess.CalledProcessError as e:
        last = (e.stderr or "").strip().splitlines()[-1:] or ["no output"]
        out["lttng_error"] = ("liblttng-ust-dev not installed or not usable (compile/link "
                              f"failed: {last[0]})")
    return out


def _json_run(argv: list[Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    p = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=300,
                       env=env)
    if p.returncode != 0 or not p.stdout.strip():
        raise RuntimeError(f"{argv[0]} failed ({p.returncode}): {p.stdout} {p.stderr}")
    res: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    return res


def _lttng(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    # --no-sessiond: never let the CLI spawn a daemon we would not own
    return subprocess.run(["lttng", "--no-sessiond", *args], capture_output=True, text=True,
                          timeout=60, check=check)


class SessionDaemon:
    """Use a running lttng-sessiond, or start one (foreground child) and stop it by PID."""

    def __init__(self, tmp: Path) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Any = None
        self.error: str | None = None
        self.tmp = tmp

    def start(self) -> bool:
        if not shutil.which("lttng") or not shutil.which("lttng-sessiond"):
            self.error = "lttng-tools not installed (no lttng / lttng-sessiond)"
            return False
        if _lttng("list", check=False).returncode == 0:
            return True
        self.log = open(self.tmp / "sessiond.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(["lttng-sessiond"], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if _lttng("list", check=False).returncode == 0:
                return True
            time.sleep(0.1)
        text = (self.tmp / "sessiond.log").read_text(errors="replace").strip()
        self.error = f"lttng-sessiond did not start: {text[-300:] or 'no output'}"
        self.stop()
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self.log is not None:
            self.log.close()
            self.log = None


def lttng_session_run(lt: Path, tmp: Path, tag: str, cpu: int) -> dict[str, Any]:
    name = f"udbench-{os.getpid()}-{tag}"
    out = tmp / f"lttng-{tag}"
    _lttng("create", name, f"--output={out}")
    try:
        _lttng("enable-event", "-u", "-s", name, "ud_bench:ev")
        _lttng("start", name)
        res = _json_run([lt, "enabled", N, REPS, cpu])
        _lttng("stop", name)
        listing = _lttng("list", name).stdout
        m = re.search(r"Discarded events:\s*(\d+)", listing)
        res["discarded_events"] = int(m.group(1)) if m else None
        m = re.search(r"Lost packets:\s*(\d+)", listing)
        res["lost_packets"] = int(m.group(1)) if m else 0
        res["trace_bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    finally:
        _lttng("destroy", name, check=False)
        shutil.rmtree(out, ignore_errors=True)
    return res


def guest_tcg(tmp: Path, append: str) -> dict[str, Any]:
    """Boot refguest (-smp 1, TCG) and read `trace_bench done events=<n> cycles=<c>`."""
    console = tmp / "guest.log"
    console.unlink(missing_ok=True)
    proc = subprocess.Popen([
        "qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "128", "-smp", "1",
        "-display", "none", "-vga", "none", "-nodefaults", "-serial", f"file:{console}",
        "-kernel", str(GUEST), "-append", append])
    pat = re.compile(rb"trace_bench done events=(\d+) cycles=(\d+)\n")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = console.read_bytes() if console.exists() else b""
            m = pat.search(text)
            if m:
                khz = re.search(rb"tsc_khz=(\d+)", text)
                ev, cyc = int(m.group(1)), int(m.group(2))
                return {"append": append, "events": ev, "cycles": cyc,
                        "tcg_cycles_per_event": cyc / ev,
                        "guest_tsc_khz": int(khz.group(1)) if khz else None}
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"no trace_bench line from the guest ({append})")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def _med(xs: list[float]) -> float:
    return statistics.median(xs)


def run() -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ud-bench-tc-"))
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[0]
    ccpu = cpus[1] if len(cpus) > 1 else None
    daemon = SessionDaemon(tmp)
    samples: dict[str, list[float]] = {}
    raw: dict[str, list[dict[str, Any]]] = {}
    notes: list[str] = []

    def add(key: str, res: dict[str, Any]) -> None:
        samples.setdefault(key, []).append(_med(res["ns_per_event"]))
        raw.setdefault(key, []).append(res)

    try:
        bins = build(tmp)
        ud, lt = bins["ud_bench"], bins["lttng_bench"]
        session_ok = False
        if lt is None:
            notes.append(f"LTTng-UST not measured: {bins['lttng_error']}")
        else:
            session_ok = daemon.start()
            if not session_ok:
                notes.append(f"LTTng-UST active session not measured: {daemon.error}; only "
                             "the no-session (enabled-check) cost was measured")
        for rnd in range(ROUNDS):
            jobs: list[tuple[str, Any]] = [
                ("bare", lambda: _json_run([ud, "bare", N, REPS, cpu])),
                ("undebug_flight", lambda: _json_run([ud, "flight", N, REPS, cpu])),
                ("undebug_stream", lambda: _json_run([ud, "stream", N, REPS, cpu])),
                ("undebug_disabled", lambda: _json_run([ud, "disabled", N, REPS, cpu])),
            ]
            if ccpu is not None:
                jobs.append(("undebug_stream_thread",
                             lambda: _json_run([ud, "stream", N, REPS, cpu, ccpu])))
            if lt is not None:
                jobs.append(("lttng_disabled",
                             lambda: _json_run([lt, "disabled", N, REPS, cpu])))
                if session_ok:
                    jobs.append(("lttng_enabled",
                                 lambda r=rnd: lttng_session_run(lt, tmp, str(r), cpu)))
            # rotate the order every round
            k = rnd % len(jobs)
            for key, job in jobs[k:] + jobs[:k]:
                add(key, job())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        daemon.stop()

    guest: dict[str, Any] = {}
    try:
        if GUEST.exists():
            on = [guest_tcg(tmp, f"trace=ring trace_bench={GUEST_EVENTS}") for _ in range(3)]
            off = [guest_tcg(tmp, f"trace=off trace_bench={GUEST_EVENTS}") for _ in range(3)]
            guest = {
                "label": "TCG cycles (emulated; not comparable to host ns)",
                "enabled_flight_recorder_runs": on,
                "disabled_runs": off,
                "enabled_tcg_cycles_per_event": round(
                    _med([r["tcg_cycles_per_event"] for r in on]), 1),
                "disabled_tcg_cycles_per_loop": round(
                    _med([r["tcg_cycles_per_event"] for r in off]), 1),
            }
        else:
            notes.append(f"guest TCG part skipped: {GUEST} missing (make guest)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: round(_med(v), 3) for k, v in samples.items()}
    best = {k: round(min(x for r in v for x in r["ns_per_event"]), 3) for k, v in raw.items()}
    cyc = {k: round(_med([_med(r["tsc_cycles_per_event"]) for r in v]), 1)
           for k, v in raw.items()}
    checks = {k: sorted({r.get("check", "") for r in v}) for k, v in raw.items()
              if k.startswith("undebug") or k == "bare"}
    summary: dict[str, Any] = {
        "unit": "ns per event (host, CLOCK_MONOTONIC); median_ns: median over rounds of "
                "per-process medians; min_ns: fastest repetition of all",
        "median_ns": med,
        "min_ns": best,
        "median_tsc_cycles_per_event": cyc,
        "cpu": cpu, "consumer_cpu": ccpu,
        "checks": checks,
    }
    if "undebug_stream_thread" in raw:
        summary["stream_thread_lost"] = [r["lost"] for r in raw["undebug_stream_thread"]]
    fl, st, bare = med["undebug_flight"], med["undebug_stream"], med["bare"]

    def _paired(a: str, b: str) -> float:
        """median over rounds of the ratio within each round (same round = same noise)"""
        return round(_med([x / y for x, y in zip(samples[a], samples[b], strict=True)]), 3)

    ratios: dict[str, Any] = {
        "flight_over_bare": round(fl / bare, 2),
        "stream_over_bare": round(st / bare, 2),
        "goal_over_bare": GOAL_VS_BARE,
        "bare_goal_met": fl / bare <= GOAL_VS_BARE and st / bare <= GOAL_VS_BARE,
    }
    ratios["flight_over_bare_per_round_median"] = _paired("undebug_flight", "bare")
    ratios["flight_over_bare_min"] = round(best["undebug_flight"] / best["bare"], 2)
    if "lttng_enabled" in med:
        lte = med["lttng_enabled"]
        ratios.update({
            "flight_over_lttng": round(fl / lte, 3),
            "stream_over_lttng": round(st / lte, 3),
            "flight_over_lttng_per_round_median": _paired("undebug_flight", "lttng_enabled"),
            "flight_over_lttng_min": round(best["undebug_flight"] / best["lttng_enabled"], 3),
            "goal_over_lttng": GOAL_VS_LTTNG,
            "lttng_goal_met": fl / lte <= GOAL_VS_LTTNG and st / lte <= GOAL_VS_LTTNG,
            "lttng_baseline": "same run, active session",
        })
        summary["lttng_session"] = {
            "active_session_measured": True,
            "all_runs_enabled": all(r["enabled"] for r in raw["lttng_enabled"]),
            "discarded_events": [r["discarded_events"] for r in raw["lttng_enabled"]],
            "trace_mb_per_round": round(_med([r["trace_bytes"] for r in raw["lttng_enabled"]])
                                        / 1e6, 1),
        }
    else:  # a goal is checked only against a baseline measured in this run
        ratios.update({
            "goal_over_lttng": GOAL_VS_LTTNG,
            "lttng_goal_met": None,
            "lttng_baseline": "not measured: " + "; ".join(
                n for n in notes if n.startswith("LTTng")),
        })
        summary["lttng_session"] = {"active_session_measured": False}
    summary["ratios"] = ratios
    if guest:
        summary["guest_tcg"] = {k: guest[k] for k in (
            "label", "enabled_tcg_cycles_per_event", "disabled_tcg_cycles_per_loop")}
    summary["notes"] = notes
    return {
        "config": {"n_per_rep": N, "reps_per_process": REPS, "rounds": ROUNDS,
                   "guest_events": GUEST_EVENTS, "guest_cflags": GUEST_CFLAGS,
                   "host_cflags": HOST_CFLAGS},
        "samples": samples,
        "raw": raw,
        "guest_tcg": guest,
        "summary": summary,
    }
