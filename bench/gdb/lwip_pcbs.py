"""Baseline for bench/net.py: lwIP's active TCP connections the way a gdb user reads them.

Not a benchmark by itself: it runs in gdb's embedded Python (bench/gdb/ is out of the
modules ``make bench`` runs). Against a paused guest with lwIP::

    gdb -batch -nx -ex 'target remote /path/gdb.sock' -x bench/gdb/lwip_pcbs.py build/refguest.elf

Walks ``tcp_active_pcbs`` along ``next`` with ``gdb.parse_and_eval`` and, per pcb, reads
what ``undebug net`` shows (addresses, ports, state, send queue, cwnd, rto), as a gdb
script in the style of lwIP's own ``tcp_debug_print_pcbs()`` would from outside. Prints
one line ``LWIPPCBS {json}``: the walk's time and the pcbs; then detaches.
"""

import json
import time

import gdb  # only inside gdb

LIMIT = 100_000


def _int(value):
    return int(value.cast(gdb.lookup_type("unsigned long")))


def main():
    gdb.execute("set pagination off")
    start = time.perf_counter()
    pcbs = []
    pcb = gdb.parse_and_eval("tcp_active_pcbs")
    seen = set()
    while _int(pcb) != 0 and _int(pcb) not in seen and len(pcbs) < LIMIT:
        seen.add(_int(pcb))
        p = pcb.dereference()
        pcbs.append({"local_port": int(p["local_port"]), "remote_port": int(p["remote_port"]),
                     "state": str(p["state"]), "local_ip": _int(p["local_ip"]["addr"]),
                     "remote_ip": _int(p["remote_ip"]["addr"]),
                     "send_queue": (int(p["snd_lbb"]) - int(p["lastack"])) & 0xFFFFFFFF,
                     "cwnd": int(p["cwnd"]), "rto": int(p["rto"])})
        pcb = p["next"]
    walk = time.perf_counter() - start
    print("LWIPPCBS " + json.dumps({"walk_s": walk, "pcbs": pcbs}))
    gdb.execute("detach")


main()
