"""Stock gdb through ``undebug gdbserver`` at 1,000 guest threads vs gdb over QEMU's stub
with an OSv-style register-swap script.

The reference guest runs ``threads=1000`` (1,007 guest threads) on ``-smp 2``. undebug
side: ``undebug gdbserver NAME`` on its default unix socket, then, timed end to end,
``gdb -batch -nx -ex 'target remote SOCK' -ex 'info threads' -ex 'thread apply all bt'``
(gdb's own unwinder over the server's guest threads: names from ``qXfer:threads:read``,
sleeping threads' saved contexts as their registers), with gdb's CPU time and the
server's (from /proc) for each round: on a loaded machine the wall time is mostly the
~6 round trips per thread waiting to be scheduled. Baseline: ``bench/gdb/osv_bt.py``
(see bench/threads.py) by ``gdb -batch`` against an identical second QEMU's own gdbstub.
Also, for the record, LLDB 14 through the same server: ``thread list`` + ``bt all``.
Both guests are paused between rounds (gdb's detach resumes them: ``undebug stop``, QMP
``stop``), rounds are interleaved, medians. The results check that gdb saw every thread
through the server and unwound each. Goal: under 2 s end to end through the server.
"""

from __future__ import annotations

import os
import re
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
    ensure_guest,
    gdb_round,
    median,
    teardown,
    undebug,
)

WORKERS = 1000
ROUNDS = 3
GOAL_S = 2.0
TIMEOUT_S = 300


def _serve(guest: UndebugGuest) -> tuple[subprocess.Popen[bytes], str]:
    """``undebug gdbserver NAME`` on a free loopback port (LLDB's gdb-remote takes no unix
    socket) and where gdb connects."""
    proc = subprocess.Popen([sys.executable, "-m", "undebug.cli", "gdbserver", guest.name,
                             "--listen", "127.0.0.1:0"],
                            env=guest.env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.fullmatch(r"listening on (\S+) \(gdb: target remote \S+\)\n", line)
    if match is None:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"undebug gdbserver did not start: {line!r}")
    return proc, match.group(1)


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gdb_through_server(where: str) -> tuple[Clock, dict[str, int]]:
    with Clock() as clock:
        done = subprocess.run(["gdb", "-batch", "-nx", "-ex", "set pagination off",
                               "-ex", f"target remote {where}", "-ex", "info threads",
                               "-ex", "thread apply all bt", str(GUEST)],
                              capture_output=True, text=True, timeout=TIMEOUT_S, check=True)
    out = done.stdout
    return clock, {
        "info_threads_rows": len(re.findall(r'^[ *]+\d+ +Thread \d+ "', out, re.M)),
        "backtraces": len(re.findall(r"^Thread \d+ \(Thread \d+ ", out, re.M)),
        "frames": len(re.findall(r"^#\d+ ", out, re.M)),
        "unwound_to_thread_entry": out.count(" thread_trampoline ")}


def _lldb_through_server(where: str) -> tuple[Clock, dict[str, int]]:
    """The same in LLDB 14: ``thread list`` (names from jThreadsInfo) and ``bt all``."""
    with Clock() as clock:
        done = subprocess.run(["lldb", "--no-lldbinit", "-b", "-o", f"target create {GUEST}",
                               "-o", f"gdb-remote {where}", "-o", "thread list",
                               "-o", "bt all", "-o", "detach"],
                              capture_output=True, text=True, timeout=TIMEOUT_S, check=True)
    out = done.stdout
    return clock, {"thread_list_rows": len(re.findall(r"^[ *] thread #\d+: tid = .*, name = ",
                                                      out, re.M)),
                   "frames": len(re.findall(r"^ +[ *] frame #\d+: ", out, re.M))}


def run() -> dict[str, Any]:
    used = ensure_guest()
    tmp = Path(tempfile.mkdtemp(prefix="ud-bench-gs-"))
    append = f"threads={WORKERS}"
    samples: dict[str, list[float]] = {"server_gdb_s": [], "server_gdb_cpu_s": [],
                                       "server_cpu_s": [], "lldb_s": [], "lldb_cpu_s": [],
                                       "osv_script_s": [], "osv_script_cpu_s": []}
    seen: dict[str, Any] = {}
    ud = plain = None
    server: subprocess.Popen[bytes] | None = None
    try:
        ud = UndebugGuest(tmp / "run", "gs1000", append, boot_timeout=TIMEOUT_S)
        undebug("stop", ud.name, env=ud.env, stdout=subprocess.DEVNULL)
        server, where = _serve(ud)
        plain_dir = tmp / "plain"
        plain_dir.mkdir()
        plain = PlainGuest(plain_dir, append, boot_timeout=TIMEOUT_S)
        for _ in range(ROUNDS):
            served_before = _cpu_s(server.pid)
            clock, seen = _gdb_through_server(where)
            samples["server_cpu_s"].append(_cpu_s(server.pid) - served_before)
            undebug("stop", ud.name, env=ud.env, stdout=subprocess.DEVNULL)
            samples["server_gdb_s"].append(clock.wall)
            samples["server_gdb_cpu_s"].append(clock.cpu)
            clock, seen["lldb"] = _lldb_through_server(where)
            undebug("stop", ud.name, env=ud.env, stdout=subprocess.DEVNULL)
            samples["lldb_s"].append(clock.wall)
            samples["lldb_cpu_s"].append(clock.cpu)
            clock, osv = gdb_round(plain)
            samples["osv_script_s"].append(clock.wall)
            samples["osv_script_cpu_s"].append(clock.cpu)
            seen["osv_threads"] = len(osv["threads"])
    finally:
        if server is not None:
            server.terminate()  # the server this benchmark started, by its Popen
            server.wait(timeout=10)
        teardown(tmp, ud, plain)
    med = {k: round(median(v), 3) for k, v in samples.items() if v}
    threads = seen.get("backtraces") or 0
    return {
        "guest": used, "workers": WORKERS, "samples": samples, "median_s": med,
        "seen_through_server": seen,
        "ms_per_thread": {k: round(med[k] * 1000 / threads, 2) if threads else None
                          for k in ("server_gdb_s", "osv_script_s") if k in med},
        "summary": {
            "threads": threads,
            "gdb_through_server_s": med.get("server_gdb_s"),
            "osv_script_over_qemu_stub_s": med.get("osv_script_s"),
            "lldb_thread_list_bt_all_through_server_s": med.get("lldb_s"),
            "cpu_gdb_plus_server_s": round(med["server_gdb_cpu_s"] + med["server_cpu_s"], 3)
            if "server_cpu_s" in med else None,
            "speedup": round(med["osv_script_s"] / med["server_gdb_s"], 1)
            if "osv_script_s" in med and "server_gdb_s" in med else None,
            "goal_under_2_s": med.get("server_gdb_s", GOAL_S) < GOAL_S},
    }
