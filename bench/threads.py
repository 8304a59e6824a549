"""All-thread backtraces at 100, 1,000 and 10,000 threads: undebug vs an OSv-style gdb script.

The reference guest runs ``threads=N`` (N + 7 guest threads) on ``-smp 2 -m 512`` (10,000
threads need ~200 MiB of stacks). undebug side, on a guest started by ``undebug run -d``:
(a) ``undebug bt NAME --all --json`` timed end to end as a subprocess, in this machine's
environment and in a "clean" one (see ``clean_env``: without PYTHONUNBUFFERED /
PYTHONDONTWRITEBYTECODE); (b) in a fresh Python process, ``undebug.attach(NAME)`` →
``threads()`` → ``backtrace(id)`` for every thread, timed inside the process (imports,
attach, thread walk, unwinding separately). Baseline: ``bench/gdb/osv_bt.py``, a gdb Python
script in the style of OSv's ``scripts/loader.py`` (swap rsp/rip/rbp and the callee-saved
registers to each thread's saved context, ``bt``, restore), run by ``gdb -batch`` against
an identical *second* QEMU started here (the supervisor owns the first guest's only gdbstub
connection): timed end to end and, inside gdb, the walk alone. Both guests are paused
(``undebug stop``, QMP ``stop``) so their busy workers do not load the host. Interleaved
rounds per size, medians of wall time and of the command process's CPU time; how both
grow from size to size. The results also check that both see the same
threads and the same function-name chains. Goals (10,000 threads, end to end): under 1 s,
at least 30x the gdb script, each checked only when its baseline was measured in the run.

Shared helpers for bench/memory.py, bench/latency.py and bench/unikraft_bt.py live here
too (plain QEMU with a unix-socket gdbstub and QMP, guests under undebug with a private
runtime directory, a gdb baseline round, the comparison of both sides' chains).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GUEST = ROOT / "build" / "refguest.elf"
GDB_SCRIPT = Path(__file__).resolve().parent / "gdb" / "osv_bt.py"
SIZES = (100, 1000, 10_000)
ROUNDS = {100: 5, 1000: 5, 10_000: 3}  # the gdb script takes ~3.5 ms per thread
MEMORY_MB = 512
GDB_TIMEOUT_S = 600  # one gdb round at 10,000 threads: ~35-60 s on this machine
BOOT_TIMEOUT_S = 300  # 10,000 threads under TCG on a loaded host
GOAL_SPEEDUP = 30
GOAL_CLI_S = 1.0
READY = b"refguest: ready"


# ---- shared helpers ------------------------------------------------------------------

def ensure_guest() -> str:
    """Build build/refguest.elf; if the build fails (others may be editing the guest) but an
    ELF is there, use it. Returns what was used, for the results."""
    made = subprocess.run(["make", "-s", "-C", str(ROOT), "guest"], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if made.returncode != 0 and not GUEST.exists():
        raise RuntimeError(f"make guest failed:\n{made.stderr}")
    digest = hashlib.sha1(GUEST.read_bytes()).hexdigest()[:12]
    note = "" if made.returncode == 0 else " (make guest failed: existing ELF used)"
    if note:
        print(f"warning: make guest failed, using the existing {GUEST}", file=sys.stderr)
    return f"{GUEST.relative_to(ROOT)} sha1 {digest}{note}"


def wait_ready(console: Path, timeout: float = 60, ready: bytes = READY,
               settle: float = 0) -> None:
    """Until ``ready`` is on the console, then ``settle`` seconds more (for a guest that
    prints no line once its threads have all started)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if console.exists() and ready in console.read_bytes():
            time.sleep(settle)
            return
        time.sleep(0.01)
    raise RuntimeError(f"no {ready!r} line in {console}")


class Qmp:
    """Just enough QMP: one command at a time, events skipped."""

    def __init__(self, path: Path) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.file = self.sock.makefile("rwb")
        self.file.readline()  # greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.file.write(json.dumps(message).encode() + b"\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise RuntimeError(f"QMP {command}: {reply['error']}")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


class PlainGuest:
    """A second QEMU, identical to the one undebug starts, with a unix-socket gdbstub for
    gdb; started with ``-S``, let run to its ``ready`` line (and ``settle``), then stopped
    (QMP). ``kernel`` is the reference guest unless given; ``append`` "" passes none; ``args``
    are more QEMU arguments (a -netdev, say)."""

    def __init__(self, directory: Path, append: str, memory: int = 256, smp: int = 2,
                 boot_timeout: float = 60, kernel: Path = GUEST, ready: bytes = READY,
                 settle: float = 0, devices: tuple[str, ...] = (),
                 args: tuple[str, ...] = ()) -> None:
        self.dir = directory
        self.gdb_sock = directory / "gdb.sock"
        self.console = directory / "console.log"
        self.proc = subprocess.Popen([
            "qemu-system-x86_64", "-S",
            "-chardev", f"socket,id=g,path={self.gdb_sock},server=on,wait=off", "-gdb", "chardev:g",
            "-qmp", f"unix:{directory / 'qmp.sock'},server=on,wait=off",
            "-serial", f"file:{self.console}", "-M", "pc", "-accel", "tcg", "-m", str(memory),
            "-smp", str(smp), "-display", "none", "-vga", "none", "-nodefaults",
            *(a for d in devices for a in ("-device", d)), *args, "-kernel", str(kernel),
            *(("-append", append) if append else ())], stdin=subprocess.DEVNULL)
        try:
            self.qmp = Qmp(directory / "qmp.sock")
            self.qmp.execute("cont")
            wait_ready(self.console, boot_timeout, ready, settle)
            self.qmp.execute("stop")
        except BaseException:
            self.close()
            raise

    def stop(self) -> None:
        self.qmp.execute("stop")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # only the QEMU this object started, by its Popen (PID)
        self.proc.wait()


def undebug_env(runtime: Path) -> dict[str, str]:
    return {**os.environ, "UNDEBUG_RUNTIME_DIR": str(runtime),
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def clean_env(env: dict[str, str], tmp: Path) -> dict[str, str]:
    """``env`` as a normal installation would run: this machine's environment sets
    PYTHONUNBUFFERED=1 (every small write is a syscall) and PYTHONDONTWRITEBYTECODE=1 (with
    no __pycache__ in the checkout, every import compiles from source). Bytecode goes to a
    private PYTHONPYCACHEPREFIX so nothing is written into the source tree."""
    out = {k: v for k, v in env.items() if k not in ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE")}
    out["PYTHONPYCACHEPREFIX"] = str(tmp / "pycache")
    return out


def undebug(*argv: str, env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "undebug.cli", *argv], env=env, check=True,
                          **kwargs)


class UndebugGuest:
    """A guest under ``undebug run -d`` in a private runtime dir; ``undebug kill`` at close.
    ``kernel``, ``append``, ``ready`` and ``settle`` as for :class:`PlainGuest`; ``options``
    are more ``undebug run`` options (``--forward``, say)."""

    def __init__(self, runtime: Path, name: str, append: str, memory: int = 256,
                 smp: int = 2, boot_timeout: float = 60, kernel: Path = GUEST,
                 ready: bytes = READY, settle: float = 0, options: tuple[str, ...] = ()) -> None:
        self.name = name
        self.env = undebug_env(runtime)
        undebug("run", "-d", "--name", name, "--smp", str(smp), "--memory", str(memory),
                *(("--append", append) if append else ()), *options, str(kernel), env=self.env,
                stdout=subprocess.DEVNULL)
        try:
            wait_ready(runtime / name / "console.log", boot_timeout, ready, settle)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        subprocess.run([sys.executable, "-m", "undebug.cli", "kill", self.name], env=self.env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def teardown(tmp: Path, *guests: UndebugGuest | PlainGuest | None) -> None:
    """End the guests a benchmark started (by PID or undebug kill) and its temp dir."""
    for guest in guests:
        if guest is not None:
            guest.close()
    shutil.rmtree(tmp, ignore_errors=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


# ---- this benchmark ------------------------------------------------------------------

IN_PROCESS = r"""
import json, sys, time
t0 = time.perf_counter()
import undebug, undebug.api
t1 = time.perf_counter()
with undebug.attach(sys.argv[1]) as g:
    t2 = time.perf_counter()
    threads = g.threads()
    t3 = time.perf_counter()
    chains = {}
    for t in threads:
        if t.state != "exited":
            chains[t.id] = [f.function for f in g.backtrace(t.id).frames]
    t4 = time.perf_counter()
states = {t.id: t.state for t in threads}
print(json.dumps({"import_s": t1 - t0, "attach_s": t2 - t1, "threads_s": t3 - t2,
                  "backtraces_s": t4 - t3, "total_s": t4 - t1, "count": len(threads),
                  "chains": chains, "states": states}))
"""


class Clock:
    """Wall time and the CPU time (user + sys) of the child processes waited for meanwhile:
    on a shared, loaded machine the wall time of a CPU-bound command grows with the load,
    its CPU time much less."""

    def __enter__(self) -> Clock:
        self.wall = time.perf_counter()
        self.cpu = self._children()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = self._children() - self.cpu

    @staticmethod
    def _children() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime


def gdb_round(guest: PlainGuest, script: Path = GDB_SCRIPT, elf: Path = GUEST,
              marker: str = "OSVBT ") -> tuple[Clock, dict[str, Any]]:
    """One run of a gdb script (which prints its result on a line starting with
    ``marker``) on the stopped plain guest, stopped again after (its detach resumes it)."""
    with Clock() as clock:
        done = subprocess.run(["gdb", "-batch", "-nx", "-ex", f"target remote {guest.gdb_sock}",
                               "-x", str(script), str(elf)], capture_output=True,
                              text=True, check=True, timeout=GDB_TIMEOUT_S)
    guest.stop()
    line = next((x for x in done.stdout.splitlines() if x.startswith(marker)), None)
    if line is None:
        raise RuntimeError(f"the gdb script printed no result: {done.stderr.strip()[-500:]}")
    return clock, json.loads(line[len(marker):])


def compare(undebug_side: dict[str, Any], gdb_side: dict[str, Any]) -> dict[str, Any]:
    """Same thread count; function-name chains per thread where both saw the same state."""
    u_states = {int(k): v for k, v in undebug_side["states"].items()}
    u_chains = {int(k): v for k, v in undebug_side["chains"].items()}
    g_threads = {t["id"]: t for t in gdb_side["threads"]}
    compared, agree, differ = 0, 0, []
    for tid, t in sorted(g_threads.items()):
        if tid not in u_states or t["state"] in ("exited", "running") \
                or t["state"] != u_states[tid]:
            continue  # two guests, two moments: running threads are somewhere else
        compared += 1
        if t["functions"] == u_chains.get(tid):
            agree += 1
        elif len(differ) < 10:
            differ.append({"id": tid, "name": t["name"], "gdb": t["functions"],
                           "undebug": u_chains.get(tid)})
    planted = {}
    for tid in (1, 4, 5, 7, 8, len(g_threads) // 2, len(g_threads)):
        if tid in g_threads:
            planted[str(tid)] = {"name": g_threads[tid]["name"], "gdb": g_threads[tid]["functions"],
                                 "undebug": u_chains.get(tid)}
    return {"threads_undebug": undebug_side["count"], "threads_gdb": len(g_threads),
            "same_count": undebug_side["count"] == len(g_threads),
            "same_ids": sorted(u_states) == sorted(g_threads),
            "chains_compared": compared, "chains_agree": agree, "chains_differ": differ,
            "sample": planted}


def one_size(workers: int, tmp: Path) -> dict[str, Any]:
    """Both guests with ``threads=workers``, ROUNDS[workers] interleaved rounds; both are
    ended (and ``tmp`` removed) before the next size boots. Both stay paused while any
    side is measured: 10,000 busy workers under TCG would take the host's two cores."""
    append = f"threads={workers}"
    samples: dict[str, list[float]] = {
        "undebug_cli_s": [], "undebug_cli_cpu_s": [], "undebug_cli_clean_env_s": [],
        "undebug_cli_clean_env_cpu_s": [], "gdb_cpu_s": [], "undebug_inproc_total_s": [],
        "undebug_inproc_import_s": [], "undebug_inproc_attach_s": [],
        "undebug_inproc_threads_s": [], "undebug_inproc_backtraces_s": [], "gdb_wall_s": [],
        "gdb_walk_s": []}
    notes: list[str] = []
    check: dict[str, Any] = {}
    cli_count = 0
    plain = ud = None
    name = f"bt{workers}"
    tmp.mkdir()
    try:
        ud = UndebugGuest(tmp / "run", name, append, memory=MEMORY_MB,
                          boot_timeout=BOOT_TIMEOUT_S)
        clean = clean_env(ud.env, tmp)
        undebug("bt", name, "--all", "--json", env=clean, capture_output=True)  # warm pycache
        undebug("stop", name, env=ud.env, stdout=subprocess.DEVNULL)
        plain_dir = tmp / "plain"
        plain_dir.mkdir()
        plain = PlainGuest(plain_dir, append, memory=MEMORY_MB, boot_timeout=BOOT_TIMEOUT_S)
        for i in range(ROUNDS[workers]):
            with Clock() as clock:
                out = undebug("bt", name, "--all", "--json", env=ud.env,
                              capture_output=True).stdout
            samples["undebug_cli_s"].append(clock.wall)
            samples["undebug_cli_cpu_s"].append(clock.cpu)
            cli_count = len(json.loads(out)["backtraces"])
            with Clock() as clock:
                undebug("bt", name, "--all", "--json", env=clean, capture_output=True)
            samples["undebug_cli_clean_env_s"].append(clock.wall)
            samples["undebug_cli_clean_env_cpu_s"].append(clock.cpu)

            inproc = json.loads(subprocess.run(
                [sys.executable, "-c", IN_PROCESS, name], env=ud.env, check=True,
                capture_output=True, text=True).stdout)
            for key in ("total", "import", "attach", "threads", "backtraces"):
                samples[f"undebug_inproc_{key}_s"].append(inproc[f"{key}_s"])
            try:
                clock, gdb_side = gdb_round(plain)
            except subprocess.TimeoutExpired:
                notes.append(f"gdb round {i} timed out after {GDB_TIMEOUT_S} s")
                continue
            except RuntimeError as exc:
                notes.append(f"gdb round {i}: {exc}")
                continue
            samples["gdb_wall_s"].append(clock.wall)
            samples["gdb_cpu_s"].append(clock.cpu)
            samples["gdb_walk_s"].append(gdb_side["walk_s"])
            if not check:
                check = compare(inproc, gdb_side)
                check["threads_undebug_cli"] = cli_count
    finally:
        teardown(tmp, ud, plain)
    med = {k: median(v) for k, v in samples.items() if v}
    n = check.get("threads_gdb") or cli_count

    def per_thread(key: str) -> float | None:
        return round(med[key] * 1000 / n, 3) if key in med else None

    def ratio(slow: str, fast: str) -> float | None:
        return round(med[slow] / med[fast], 1) if slow in med and fast in med else None

    return {
        "workers": workers, "threads": n, "samples": samples, "notes": notes,
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "ms_per_thread": {
            "undebug_cli_end_to_end": per_thread("undebug_cli_s"),
            "undebug_cli_end_to_end_clean_env": per_thread("undebug_cli_clean_env_s"),
            "undebug_in_process": per_thread("undebug_inproc_total_s"),
            "gdb_end_to_end": per_thread("gdb_wall_s"),
            "gdb_walk_only": per_thread("gdb_walk_s")},
        "speedup_cli_vs_gdb_end_to_end": ratio("gdb_wall_s", "undebug_cli_s"),
        "speedup_cli_clean_env_vs_gdb_end_to_end": ratio("gdb_wall_s", "undebug_cli_clean_env_s"),
        "speedup_in_process_vs_gdb_walk": ratio("gdb_walk_s", "undebug_inproc_total_s"),
        "cpu_ratio_gdb_process_vs_cli": ratio("gdb_cpu_s", "undebug_cli_cpu_s"),
        "agreement": check,
    }


def growth(sizes: list[dict[str, Any]], key: str) -> dict[str, float | None]:
    """How a median grows from one size to the next (10x the threads each step)."""
    out: dict[str, float | None] = {}
    for small, big in itertools.pairwise(sizes):
        a, b = small["median_s"].get(key), big["median_s"].get(key)
        out[f"{big['workers']}/{small['workers']}"] = round(b / a, 1) if a and b else None
    return out


def run() -> dict[str, Any]:
    guest = ensure_guest()
    tmp = Path(tempfile.mkdtemp(prefix="ud-"))
    try:
        sizes = [one_size(workers, tmp / str(workers)) for workers in SIZES]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    big = sizes[-1]
    med = big["median_s"]
    gdb_measured = "gdb_wall_s" in med

    def speedup_met(key: str) -> bool | None:  # None: the baseline was not measured
        return med["gdb_wall_s"] / med[key] >= GOAL_SPEEDUP if gdb_measured else None

    summary = {
        "guest": guest,
        "baseline": "bench/gdb/osv_bt.py under gdb -batch, on an identical second QEMU "
                    f"(same ELF, -M pc -accel tcg -m {MEMORY_MB} -smp 2, same threads=N)",
        "sizes": {str(s["threads"]): {k: v for k, v in s.items() if k != "samples"}
                  for s in sizes},
        "growth": {key: growth(sizes, key) for key in (
            "undebug_cli_s", "undebug_cli_clean_env_s", "undebug_cli_cpu_s",
            "undebug_inproc_total_s", "gdb_wall_s", "gdb_walk_s", "gdb_cpu_s")},
        "cpu_note": "*_cpu_s: user+sys of the command's own process (gdb's CPU excludes the "
                    "work of QEMU's gdbstub it waits for); the goals are on wall time",
        "load_average_at_end": os.getloadavg(),
        "goal": f"at {big['threads']} threads: undebug bt --all --json end to end under "
                f"{GOAL_CLI_S:g} s and >= {GOAL_SPEEDUP}x the gdb script end to end (same run)",
        "goal_met": {
            "cli_under_1s": med["undebug_cli_s"] < GOAL_CLI_S,
            "cli_clean_env_under_1s": med["undebug_cli_clean_env_s"] < GOAL_CLI_S,
            "30x_end_to_end": speedup_met("undebug_cli_s"),
            "30x_end_to_end_clean_env": speedup_met("undebug_cli_clean_env_s"),
        },
        "gdb_baseline": "measured" if gdb_measured else "not measured: " + "; ".join(big["notes"]),
        "rounds": {str(k): v for k, v in ROUNDS.items()},
    }
    return {"samples": {str(s["threads"]): s["samples"] for s in sizes}, "summary": summary}
