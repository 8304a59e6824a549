"""``undebug net`` with 1,000 open TCP connections: undebug vs a gdb-Python walk of lwIP.

The reference guest (lwIP, ``MEMP_NUM_TCP_PCB`` 1100) runs under ``undebug run -d
--forward tcp::7``; this process opens 1,000 connections to its echo service (RLIMIT_NOFILE
raised to the hard limit first: QEMU, started below, inherits it and holds a socket per
connection too). Measured: ``undebug net NAME --json`` end to end as a subprocess (the
guest is paused, so every round reads the same state). Baseline: ``bench/gdb/lwip_pcbs.py``
under ``gdb -batch``, walking ``tcp_active_pcbs`` and reading the same fields per pcb, on
an identical *second* QEMU started here with its own 1,000 connections (the supervisor
owns the first guest's only gdbstub connection). Interleaved rounds, medians. Both sides
must see the 1,000 connections ESTABLISHED on port 7 with the client ports this process
holds. Goal: under 0.5 s end to end, with the ratio to the gdb walk in the same run.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from bench.threads import (
    Clock,
    PlainGuest,
    UndebugGuest,
    ensure_guest,
    gdb_round,
    median,
    teardown,
    undebug,
)

CONNECTIONS = 1000
ROUNDS = 5
GOAL_S = 0.5
GUEST_PORT = 7
APPEND = "threads=1"
GDB_SCRIPT = Path(__file__).resolve().parent / "gdb" / "lwip_pcbs.py"


def _raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * CONNECTIONS + 256  # our two sets of sockets, and each QEMU's
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(need, soft)), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _open(port: int, count: int) -> list[socket.socket]:
    """``count`` connections, each proven open by one echoed byte."""
    conns = []
    for _ in range(count):
        conn = socket.create_connection(("127.0.0.1", port), timeout=30)
        conn.sendall(b"x")
        if conn.recv(1) != b"x":
            raise RuntimeError("the guest's echo service did not answer")
        conns.append(conn)
    return conns


def run() -> dict[str, Any]:
    guest = ensure_guest()
    nofile = _raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="ud-"))
    ud = plain = None
    ours: list[socket.socket] = []
    theirs: list[socket.socket] = []
    samples: dict[str, list[float]] = {"undebug_net_s": [], "undebug_net_cpu_s": [],
                                       "gdb_wall_s": [], "gdb_cpu_s": [], "gdb_walk_s": []}
    notes: list[str] = []
    check: dict[str, Any] = {}
    try:
        ud = UndebugGuest(tmp / "run", "net1k", APPEND, options=("--forward", "tcp::7"))
        status = json.loads(undebug("ps", "--json", env=ud.env, capture_output=True).stdout)
        forward = next(g for g in status["guests"] if g["name"] == ud.name)["forwards"][0]
        ours = _open(int(forward.split(":")[1]), CONNECTIONS)
        our_ports = [c.getsockname()[1] for c in ours]
        undebug("stop", ud.name, env=ud.env, stdout=subprocess.DEVNULL)

        plain_dir = tmp / "plain"
        plain_dir.mkdir()
        host_port = _free_port()
        plain = PlainGuest(plain_dir, APPEND, memory=128, args=(
            "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{host_port}-:{GUEST_PORT}",
            "-device", "virtio-net-pci,netdev=n0"))
        plain.qmp.execute("cont")
        theirs = _open(host_port, CONNECTIONS)
        their_ports = [c.getsockname()[1] for c in theirs]
        plain.stop()

        for i in range(ROUNDS):
            with Clock() as clock:
                out = undebug("net", ud.name, "--json", env=ud.env, capture_output=True).stdout
            samples["undebug_net_s"].append(clock.wall)
            samples["undebug_net_cpu_s"].append(clock.cpu)
            try:
                clock, gdb_side = gdb_round(plain, script=GDB_SCRIPT, marker="LWIPPCBS ")
            except (subprocess.TimeoutExpired, RuntimeError) as exc:
                notes.append(f"gdb round {i}: {exc}")
                continue
            samples["gdb_wall_s"].append(clock.wall)
            samples["gdb_cpu_s"].append(clock.cpu)
            samples["gdb_walk_s"].append(gdb_side["walk_s"])
            if not check:
                doc = json.loads(out)
                mine = {s["remote_port"] for s in doc["sockets"] if s["state"] == "ESTABLISHED"
                        and s["local_port"] == GUEST_PORT and s["list"] == "tcp_active_pcbs"}
                gdbs = {p["remote_port"] for p in gdb_side["pcbs"]
                        if p["state"] == "ESTABLISHED" and p["local_port"] == GUEST_PORT}
                check = {"undebug_sockets": len(doc["sockets"]),
                         "undebug_established_ours": len(mine & set(our_ports)),
                         "gdb_pcbs": len(gdb_side["pcbs"]),
                         "gdb_established_theirs": len(gdbs & set(their_ports)),
                         "undebug_warnings": doc["warnings"]}
    finally:
        for conn in ours + theirs:
            conn.close()
        teardown(tmp, ud, plain)
    med = {k: round(median(v), 4) for k, v in samples.items() if v}
    gdb_measured = "gdb_wall_s" in med
    summary = {
        "guest": guest,
        "connections": CONNECTIONS,
        "rlimit_nofile": nofile,
        "baseline": "bench/gdb/lwip_pcbs.py under gdb -batch on an identical second QEMU "
                    f"(same ELF, -M pc -accel tcg -m 128 -smp 2, {APPEND}, its own "
                    f"{CONNECTIONS} connections)",
        "median_s": med,
        "ratio_gdb_end_to_end_vs_undebug": round(med["gdb_wall_s"] / med["undebug_net_s"], 1)
        if gdb_measured else None,
        "ratio_gdb_walk_only_vs_undebug": round(med["gdb_walk_s"] / med["undebug_net_s"], 1)
        if gdb_measured else None,
        "agreement": check,
        "notes": notes,
        "load_average_at_end": os.getloadavg(),
        "goal": f"undebug net --json with {CONNECTIONS} connections under {GOAL_S:g} s end "
                "to end",
        "goal_met": med["undebug_net_s"] < GOAL_S,
        "rounds": ROUNDS,
    }
    return {"samples": samples, "summary": summary}
