"""Baseline for bench/threads.py: all-thread backtraces the way OSv's gdb script does them.

Not a benchmark by itself: it runs in gdb's embedded Python (it lives in bench/gdb/, out
of the modules ``make bench`` runs). Run inside gdb against a paused reference guest::

    gdb -batch -nx -ex 'target remote /path/gdb.sock' -x bench/gdb/osv_bt.py build/refguest.elf

Modelled on OSv's ``scripts/loader.py`` (``osv info threads`` / ``osv thread apply all
bt``): walk the guest's ``thread_list`` with ``gdb.parse_and_eval``; for a thread that is
not running, save the vCPU's rsp/rip/rbp and callee-saved registers, load the thread's
saved ``ctx`` into them, run ``bt`` (``gdb.execute(..., to_string=True)``), and restore;
for a running thread, select the gdb thread of its vCPU (``percpu[i].current``) and run
``bt`` there. Exited threads are skipped (no stack), as ``undebug bt --all`` does.

Prints one line ``OSVBT {json}`` with the timing of the walk and, per thread, its id,
name, state and the function names of its ``bt``; then detaches (which resumes the guest).
"""

import json
import re
import time

import gdb  # only inside gdb

SAVED = ("rsp", "rip", "rbp", "rbx", "r12", "r13", "r14", "r15")
FRAME = re.compile(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\S+) \(", re.M)


def _int(value):
    return int(value.cast(gdb.lookup_type("unsigned long")))


def _running_on():
    """Thread struct address -> gdb thread (vCPU) that runs it, from percpu[i].current."""
    cpus = int(gdb.parse_and_eval("cpu_count"))
    vcpus = sorted(gdb.selected_inferior().threads(), key=lambda t: t.num)
    out = {}
    for i in range(min(cpus, len(vcpus))):
        current = _int(gdb.parse_and_eval(f"percpu[{i}].current"))
        if current:
            out[current] = vcpus[i]
    return out


def main():
    gdb.execute("set pagination off")
    gdb.execute("set confirm off")
    start = time.perf_counter()
    home = gdb.selected_thread()
    running = _running_on()
    states = {0: "running", 1: "ready", 2: "sleeping", 3: "blocked", 4: "exited"}
    threads = []
    t = gdb.parse_and_eval("thread_list")
    while _int(t) != 0:
        address = _int(t)
        tid = int(t["id"])
        name = t["name"].string(errors="backslashreplace")
        state = states.get(int(t["state"]), str(int(t["state"])))
        text = ""
        if state == "exited":
            pass
        elif address in running:
            running[address].switch()
            text = gdb.execute("bt", to_string=True)
            home.switch()
        else:
            ctx = t["ctx"]
            saved = {r: _int(gdb.parse_and_eval(f"${r}")) for r in SAVED}
            try:
                for r in SAVED:
                    gdb.execute(f"set ${r} = {_int(ctx[r])}")
                text = gdb.execute("bt", to_string=True)
            finally:
                for r in SAVED:
                    gdb.execute(f"set ${r} = {saved[r]}")
        threads.append({"id": tid, "name": name, "state": state, "bt": text})
        t = t["next"]
    walk_s = time.perf_counter() - start
    for th in threads:
        th["functions"] = FRAME.findall(th.pop("bt"))
    print("OSVBT " + json.dumps({"walk_s": walk_s, "threads": threads}), flush=True)
    gdb.execute("detach")


main()
