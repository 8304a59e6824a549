"""Baseline for bench/unikraft_bt.py: all-thread backtraces of a Unikraft guest in gdb scripting.

Not a benchmark by itself: it runs in gdb's embedded Python (it lives in bench/gdb/, out
of the modules ``make bench`` runs). Run inside gdb against a paused Unikraft 0.17 guest::

    gdb -batch -nx -ex 'target remote /path/gdb.sock' -x bench/gdb/unikraft_bt.py IMAGE.dbg

The same method as bench/gdb/osv_bt.py, on Unikraft's structures: walk
``uk_sched_head->thread_list`` (a TAILQ through ``thread_list.tqe_next``; then
``exited_threads``, then the next scheduler, the order ``undebug threads`` numbers them
in); for the thread ``__uk_sched_thread_current[0]`` names, ``bt`` on the vCPU as it is;
for a switched-out thread, save the vCPU's rsp/rip/rbp/rbx/r12-r15, load them from the
thread's saved context as 0.17's ``ukarch_ctx_switch`` (arch/x86/x86_64/ctx.S) leaves it
(at ``ctx.sp``: r15, r14, r13, r12, rbx, rbp, the return rip at +48; rsp = ``ctx.sp`` +
56; a thread that has not run yet: rip = ``ctx.ip``, rsp = ``ctx.sp``), run ``bt``
(``gdb.execute(..., to_string=True)``) and restore. Exited threads are skipped (no stack),
as ``undebug bt --all`` does.

Prints one line ``GDBBT {json}`` with the timing of the walk and, per thread, its id,
name, state and the function names of its ``bt``; then detaches (which resumes the guest).
"""

import json
import re
import struct
import time

import gdb  # only inside gdb

SAVED = ("rsp", "rip", "rbp", "rbx", "r12", "r13", "r14", "r15")
SWITCH_SAVED = ("r15", "r14", "r13", "r12", "rbx", "rbp")  # from ctx.sp up, then rip
RESUME_CODE = bytes.fromhex("415f415e415d415c5b5dc3")  # .Lresume: pop r15..rbp; ret
RUNNABLE, EXITED = 0x008, 0x010  # UK_THREADF_* (lib/uksched/include/uk/thread.h)
FRAME = re.compile(r"^#\d+\s+(?:0x[0-9a-f]+ in )?(\S+) \(", re.M)


def _int(value):
    return int(value.cast(gdb.lookup_type("unsigned long")))


def _state(t, current):
    flags = int(t["flags"])
    if flags & EXITED:
        return "exited"
    if _int(t) == current:
        return "running"
    if flags & RUNNABLE:
        return "ready"
    return "sleeping" if int(t["wakeup_time"]) > 0 else "blocked"


def _context(t, inferior, resumes):
    """The registers the thread resumes with: ukarch_ctx_switch's frame, popped."""
    ip, sp = _int(t["ctx"]["ip"]), _int(t["ctx"]["sp"])
    if ip not in resumes:
        resumes[ip] = bytes(inferior.read_memory(ip, len(RESUME_CODE))) == RESUME_CODE
    if not resumes[ip]:
        return {"rip": ip, "rsp": sp}
    words = struct.unpack("<7Q", bytes(inferior.read_memory(sp, 56)))
    return {**dict(zip(SWITCH_SAVED, words[:6], strict=True)), "rip": words[6], "rsp": sp + 56}


def main():
    gdb.execute("set pagination off")
    gdb.execute("set confirm off")
    gdb.execute("set backtrace past-main on")  # init runs main: unwind it to its entry too
    start = time.perf_counter()
    inferior = gdb.selected_inferior()
    current = _int(gdb.parse_and_eval("__uk_sched_thread_current[0]"))
    resumes = {}
    threads = []
    sched = gdb.parse_and_eval("uk_sched_head")
    while _int(sched) != 0:
        for queue in ("thread_list", "exited_threads"):
            t = sched[queue]["tqh_first"]
            while _int(t) != 0:
                name = t["name"].string(errors="backslashreplace") if _int(t["name"]) \
                    else "<unnamed>"
                state = _state(t, current)
                text = ""
                if state == "running":
                    text = gdb.execute("bt", to_string=True)
                elif state != "exited":
                    saved = {r: _int(gdb.parse_and_eval(f"${r}")) for r in SAVED}
                    try:
                        for r, v in _context(t, inferior, resumes).items():
                            gdb.execute(f"set ${r} = {v}")
                        text = gdb.execute("bt", to_string=True)
                    finally:
                        for r in SAVED:
                            gdb.execute(f"set ${r} = {saved[r]}")
                threads.append({"id": len(threads) + 1, "name": name, "state": state,
                                "bt": text})
                t = t["thread_list"]["tqe_next"]
        sched = sched["next"]
    walk_s = time.perf_counter() - start
    for th in threads:
        th["functions"] = FRAME.findall(th.pop("bt"))
    print("GDBBT " + json.dumps({"walk_s": walk_s, "threads": threads}), flush=True)
    gdb.execute("detach")


main()
