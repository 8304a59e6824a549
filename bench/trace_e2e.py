"""End to end over virtio-serial under TCG: 2-arg events/s into the recording; overload loss.

The reference guest's ``trace_bench=N`` starts one generator thread per CPU that emits N
2-argument events (32 bytes each), waiting for ring room, so it runs exactly as fast as the
host drains the virtio-serial port, losslessly. Measured three ways per run:

* ``guest``: the guest's own ``trace_bench done events=<n> cycles=<c>`` line and its
  ``tsc_khz`` (first generator start to last generator end);
* ``file_tsc``: from the recording: ``trace_bench`` events in the file divided by the span
  of their TSCs (header ``tsc_hz``), i.e. what actually reached the file;
* ``file_wall``: the host's clock: the recording's size sampled every ~2 ms, bytes/32
  between 10% and 90% of the final size (includes the few non-bench records).

Each recording is decoded (tracers.decode.decode_file with the ELF's tracepoint count) and
checked: every event present (count == the guest's), no damage, no sequence gap, no LOST.

undebug: ``undebug run -d --smp S --append "threads=0 trace_bench=N" --trace-file F``, in
a private UNDEBUG_RUNTIME_DIR; the guest is ended with ``undebug kill`` once the ``done``
line is on the console and the file has stopped growing (the file is decoded before).
With ``--trace-file`` the supervisor writes every byte twice (the session's trace.utrace
and F), so ``undebug_session_only`` measures the same run without it (the session's
recording). The supervisor's CPU time (/proc) is recorded. Baseline, same run, interleaved:
the same guest under a **bare QEMU** started here (same machine options, the same
virtserialport on a unix socket with ``server=on,wait=on``, so QEMU waits for the reader
before the guest runs) and a minimal Python reader process (``recv_into`` 1 MiB,
``os.write`` to a file). Ratio undebug/bare per round, median reported.

Overload: ``trace_flood=N`` (the same generators without waiting: drops are counted) under
undebug with ``--trace-file``, ``threads=0`` and ``threads=4`` (workers keep every CPU
emitting after the flood): host-counted loss (per CPU, sequence gaps with SYNC full seqs,
FORMAT.md 3.2; also TraceModel.loss's modulo-65536 gaps) vs the in-band LOST totals, plus
the guest's own ``lost=`` line and its last SYNCs' ``lost_total``. -smp 1 and -smp 2.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GUEST = ROOT / "build" / "refguest.elf"
BENCH_N = 2_000_000      # events per CPU per run (64 MB per CPU)
FLOOD_N = 2_000_000
ROUNDS = 5
FLOOD_ROUNDS = 1
SMPS = (1, 2)
GOAL_EVENTS_S = 5_000_000
EVENT_BYTES = 32

READER = r"""
import os, socket, sys, time
path, out = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX)
deadline = time.monotonic() + 20
while True:
    try:
        s.connect(path)
        break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.002)
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
buf = bytearray(1 << 20)
view = memoryview(buf)
while True:
    n = s.recv_into(buf)
    if not n:
        break
    v = view[:n]
    while v:
        v = v[os.write(fd, v):]
os.close(fd)
import resource
u = resource.getrusage(resource.RUSAGE_SELF)
print(u.ru_utime + u.ru_stime)
"""


class Sampler:
    """Samples a file's size while waiting for a console line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples: list[tuple[float, int]] = []

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def wait_line(self, console: Path, needle: str, timeout: float = 120,
                  pid: int | None = None) -> str:
        """Also notes ``pid``'s CPU time when the guest's ``ready`` line appears (the
        generators start right after it)."""
        deadline = time.monotonic() + timeout
        self.cpu_at_ready: float | None = None
        while time.monotonic() < deadline:
            self.samples.append((time.monotonic(), self.size()))
            if console.exists():
                text = console.read_text(errors="replace")
                if pid is not None and self.cpu_at_ready is None and "refguest: ready" in text:
                    self.cpu_at_ready = _cpu_s(pid)
                at = text.find(needle)
                if at >= 0 and "\n" in text[at:]:  # QEMU writes the console byte by byte
                    return text
            time.sleep(0.002)
        raise RuntimeError(f"no {needle!r} in {console} after {timeout} s")

    def wait_stable(self, quiet: float = 0.3, timeout: float = 10) -> int:
        deadline = time.monotonic() + timeout
        last, since = self.size(), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.01)
            now = self.size()
            self.samples.append((time.monotonic(), now))
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return now
        return last

    def wall_rate(self) -> float | None:
        """Events/s (bytes/32) between 10% and 90% of the final size, by the host clock."""
        final = self.samples[-1][1] if self.samples else 0
        lo = next(((t, s) for t, s in self.samples if s >= final * 0.1), None)
        hi = next(((t, s) for t, s in self.samples if s >= final * 0.9), None)
        if not lo or not hi or hi[0] <= lo[0]:
            return None
        return (hi[1] - lo[1]) / EVENT_BYTES / (hi[0] - lo[0])


def _ud(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "undebug.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def _tracepoints() -> Any:
    from tracers.metadata import load_tracepoints

    return load_tracepoints(GUEST)


def exact_host_loss(records: Any, rows: Any) -> int:
    """Records one CPU lost, from the wire alone (FORMAT.md 3.2): 16-bit seq gaps, with the
    multiple of 65536 settled by each SYNC's full seq (TraceModel.loss counts gaps modulo
    65536, so a single drop of more than 65535 records would be undercounted there)."""
    import numpy as np

    from tracers.decode import ID_SYNC

    seq = records.seq[rows].astype(np.int64)
    step = (seq[1:] - seq[:-1]) % 65536
    step[step == 0] = 65536
    full = np.concatenate(([0], np.cumsum(step)))
    syncs = np.flatnonzero(records.id[rows] == ID_SYNC)
    if syncs.size == 0:
        return int(full[-1] + 1 - len(rows))
    offset = records.args[rows[syncs], 2].astype(np.int64) - full[syncs]
    return int(full[-1] + offset[-1] - (full[0] + offset[0]) + 1 - len(rows))


def analyse(path: Path, console: str, kind: str) -> dict[str, Any]:
    """Decode a recording and put the guest's numbers next to the file's."""
    from tracers.decode import ID_LOST, decode_file
    from tracers.metadata import for_stream
    from tracers.model import TraceModel

    tps = _tracepoints()
    t = time.monotonic()
    decoded = decode_file(path, tracepoint_count=tps.count)
    decode_s = time.monotonic() - t
    usable, notes = for_stream(tps, decoded.sessions)
    model = TraceModel(decoded, usable)
    r = decoded.records
    hz = decoded.sessions[0].header.tsc_hz if decoded.sessions else 0
    khz = int(re.search(r"tsc_khz=(\d+)", console)[1])  # type: ignore[index]
    done = re.search(rf"trace_{kind} done events=(\d+) cycles=(\d+)(?: lost=(\d+))?", console)
    assert done, console[-500:]
    events, cycles = int(done[1]), int(done[2])
    ident = next(iter(tps.ids_named(f"trace_{kind}")))
    mine = r.id == ident
    tsc = r.tsc[mine]
    losses = model.loss()
    import numpy as np

    exact = {int(c): exact_host_loss(r, np.flatnonzero(r.cpu == c)) for c in np.unique(r.cpu)}
    out: dict[str, Any] = {
        "bytes": path.stat().st_size, "records": len(r), "events_in_file": int(mine.sum()),
        "events_guest": events, "guest_events_s": events * khz * 1000 / cycles,
        "file_tsc_events_s": (int(mine.sum()) / ((int(tsc.max()) - int(tsc.min())) / hz)
                              if tsc.size > 1 else None),
        "decode_s": round(decode_s, 3), "damage": len(decoded.damage),
        "truncated": decoded.truncated is not None, "problem": decoded.problem,
        "build_id_ok": usable is not None and not notes,
        "loss": [{"cpu": x.cpu, "records": x.records, "gaps": x.gaps,
                  "host_exact": exact[x.cpu], "lost_records": x.lost_records,
                  "agree": x.agree, "guest_lost_total": x.guest_lost_total} for x in losses],
        "host_gaps": sum(exact.values()),
        "model_gaps": sum(x.gaps for x in losses),
        "in_band_lost": int(r.args[r.id == ID_LOST, 0].sum()) if len(r) else 0,
        "agree": all(x.agree for x in losses),
    }
    if done[3] is not None:
        out["guest_console_lost"] = int(done[3])
    return out


def _cpu_s(pid: int) -> float | None:
    """CPU seconds of a live process: its threads' run time from ``/proc/PID/task/*/
    schedstat`` (nanoseconds; ``/proc/PID/stat`` counts 10 ms ticks, too coarse for a
    supervisor at rest), or user + system ticks where schedstat is missing."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        return sum(int((t / "schedstat").read_text().split()[0]) for t in tasks) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def undebug_run(tmp: Path, smp: int, kind: str, n: int, *, trace_file: bool = True,
                threads: int = 0) -> dict[str, Any]:
    """``trace_file``: also ``--trace-file F`` (the supervisor then writes every byte twice:
    the session's trace.utrace and F); else only the session's recording is measured."""
    env = {**os.environ, "UNDEBUG_RUNTIME_DIR": str(tmp / "run")}
    name = f"e2e{smp}"
    trace = tmp / f"ud-{kind}-{smp}.utrace" if trace_file else tmp / "run" / name / "trace.utrace"
    sampler = Sampler(trace)
    # one file, no rotation (a 64 MB chunk is less than 2 CPUs' 128 MB): every event counted
    extra = ["--trace-max-size", "0", *(["--trace-file", str(trace)] if trace_file else [])]
    started = _ud(env, "run", "-d", "--name", name, "--smp", str(smp), "--append",
                  f"threads={threads} trace_{kind}={n}", *extra, str(GUEST))
    if started.returncode != 0:
        raise RuntimeError(f"undebug run failed: {started.stderr}")
    try:
        supervisor = json.loads(_ud(env, "ps", "--json").stdout)["guests"][0]["supervisor_pid"]
        console = sampler.wait_line(tmp / "run" / name / "console.log", f"trace_{kind} done",
                                    pid=supervisor)
        sampler.wait_stable()
        cpu_end = _cpu_s(supervisor)
        cpu = (None if cpu_end is None or sampler.cpu_at_ready is None
               else round(cpu_end - sampler.cpu_at_ready, 3))
        res = analyse(trace, console, kind)  # the guest idles: heartbeats only
    finally:
        _ud(env, "kill", name)
    res["file_wall_events_s"] = sampler.wall_rate()
    res["reader_cpu_s"] = cpu
    trace.unlink(missing_ok=True)
    return res


def bare_run(tmp: Path, smp: int, n: int) -> dict[str, Any]:
    sock, trace, console = tmp / "bare.sock", tmp / f"bare-{smp}.utrace", tmp / "bare.log"
    for p in (sock, trace, console):
        p.unlink(missing_ok=True)
    qemu = subprocess.Popen([
        "qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "128", "-smp", str(smp),
        "-display", "none", "-vga", "none", "-nodefaults", "-no-user-config", "-no-reboot",
        "-serial", f"file:{console}",
        "-device", "isa-debug-exit,iobase=0x501,iosize=0x04",
        "-kernel", str(GUEST), "-append", f"threads=0 trace_bench={n}",
        "-device", "virtio-serial-pci,id=vser0",
        "-chardev", f"socket,id=trace0,path={sock},server=on,wait=on",
        "-device", "virtserialport,bus=vser0.0,chardev=trace0,name=undebug.trace,nr=1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(sock), str(trace)],
                              stdout=subprocess.PIPE, text=True)
    sampler = Sampler(trace)
    try:
        text = sampler.wait_line(console, "trace_bench done")
        sampler.wait_stable()
    finally:
        qemu.send_signal(signal.SIGKILL)
        qemu.wait()
        try:
            out, _ = reader.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            reader.kill()
            out, _ = reader.communicate()
    res = analyse(trace, text, "bench")
    res["reader_cpu_s"] = round(float(out.strip()), 3) if out.strip() else None
    res["file_wall_events_s"] = sampler.wall_rate()
    trace.unlink()
    return res


def _lossless(r: dict[str, Any]) -> bool:
    return (r["events_in_file"] == r["events_guest"] and r["damage"] == 0 and not r["problem"]
            and r["host_gaps"] == 0 and r["in_band_lost"] == 0 and r["agree"]
            and r["build_id_ok"])


def _med(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def _m(x: float | None) -> float | None:
    return None if x is None else round(x / 1e6, 2)


VARIANTS = ("undebug", "undebug_session_only", "bare")


def _one(tmp: Path, smp: int, who: str) -> dict[str, Any]:
    if who == "bare":
        return bare_run(tmp, smp, BENCH_N)
    return undebug_run(tmp, smp, "bench", BENCH_N, trace_file=who == "undebug")


def _flood_row(r: dict[str, Any]) -> dict[str, Any]:
    console = r.get("guest_console_lost")
    return {
        "threads": r["threads"], "events": r["events_guest"], "received": r["events_in_file"],
        "host_counted_lost": r["host_gaps"], "in_band_lost": r["in_band_lost"],
        "model_gaps": r["model_gaps"],
        "guest_sync_lost_total": sum(x["guest_lost_total"] or 0 for x in r["loss"]),
        "guest_console_lost": console,
        "never_reported": max(0, (console or 0) - r["host_gaps"]),
        "per_cpu_host_vs_in_band": [(x["cpu"], x["host_exact"], x["lost_records"])
                                    for x in r["loss"]],
        "agree": r["agree"] and r["host_gaps"] == r["in_band_lost"], "damage": r["damage"],
        "delivered_events_s_M": _m(r["file_tsc_events_s"])}


def run() -> dict[str, Any]:
    if not GUEST.exists():
        subprocess.run(["make", "-s", "guest"], cwd=ROOT, check=True)
    tmp = Path(tempfile.mkdtemp(prefix="ud-e2e-"))
    load_before = os.getloadavg()
    started = time.monotonic()
    samples: dict[str, Any] = {f"smp{s}": {v: [] for v in VARIANTS} for s in SMPS}
    flood: dict[str, list[dict[str, Any]]] = {f"smp{s}": [] for s in SMPS}
    try:
        for rnd in range(ROUNDS):
            for smp in SMPS:
                k = rnd % len(VARIANTS)
                for who in VARIANTS[k:] + VARIANTS[:k]:  # rotate the order every round
                    res = _one(tmp, smp, who)
                    samples[f"smp{smp}"][who].append(res)
                    print(f"  smp{smp} {who}: guest {_m(res['guest_events_s'])} M/s, file "
                          f"{_m(res['file_tsc_events_s'])} M/s, wall "
                          f"{_m(res['file_wall_events_s'])} M/s, reader cpu "
                          f"{res['reader_cpu_s']} s, lossless {_lossless(res)}", flush=True)
        for _ in range(FLOOD_ROUNDS):
            for smp in SMPS:
                for threads in (0, 4):
                    res = undebug_run(tmp, smp, "flood", FLOOD_N, threads=threads)
                    res["threads"] = threads
                    flood[f"smp{smp}"].append(res)
                    print(f"  flood smp{smp} threads={threads}: host-counted lost "
                          f"{res['host_gaps']}, in-band LOST {res['in_band_lost']}, console "
                          f"lost {res.get('guest_console_lost')}, agree {res['agree']}",
                          flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary: dict[str, Any] = {"goal_events_s": GOAL_EVENTS_S, "events_per_cpu": BENCH_N}
    for smp in SMPS:
        key = f"smp{smp}"
        runs = samples[key]
        row: dict[str, Any] = {}
        for measure in ("guest_events_s", "file_tsc_events_s", "file_wall_events_s"):
            row[measure + "_M"] = {v: _m(_med([r[measure] for r in runs[v]])) for v in VARIANTS}
        row["reader_cpu_s"] = {v: _med([r["reader_cpu_s"] for r in runs[v]]) for v in VARIANTS}
        for v in ("undebug", "undebug_session_only"):
            ratios = [a["guest_events_s"] / b["guest_events_s"]
                      for a, b in zip(runs[v], runs["bare"], strict=True)]
            row[f"ratio_{v}_over_bare"] = round(statistics.median(ratios), 3)
            row[f"ratio_{v}_over_bare_per_round"] = [round(x, 3) for x in ratios]
        row["lossless_all_rounds"] = {v: all(_lossless(r) for r in runs[v]) for v in VARIANTS}
        row["undebug_min_events_s_M"] = _m(min(min(r["guest_events_s"],
                                                   r["file_tsc_events_s"] or 0)
                                               for r in runs["undebug"]))
        med = row["file_tsc_events_s_M"]["undebug"] or 0
        row["goal_met_median"] = med * 1e6 >= GOAL_EVENTS_S and \
            row["lossless_all_rounds"]["undebug"]
        row["overload"] = [_flood_row(r) for r in flood[key]]
        row["overload_agree_all"] = all(x["agree"] for x in row["overload"])
        row["overload_loss_seen"] = all(x["host_counted_lost"] > 0 for x in row["overload"])
        summary[key] = row
    summary["load_avg_before_after"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    summary["wall_s"] = round(time.monotonic() - started, 1)
    return {"samples": samples, "flood": flood, "summary": summary}
