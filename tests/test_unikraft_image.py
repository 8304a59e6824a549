"""On a real Unikraft image (built locally, never committed): threads, backtraces, stock gdb
through `undebug gdbserver`, and the crash in words.

The image comes from UNDEBUG_UNIKRAFT_IMAGE (a running app with threads) and
UNDEBUG_UNIKRAFT_CRASH_IMAGE (one that crashes soon after boot); each test skips, naming
the variable, when it is unset. ``IMAGE.dbg`` beside the image has the symbols. QEMU is
started here and adopted with ``undebug attach --elf IMAGE.dbg``, as a user's own VM would
be. It has pvpanic but no isa-debug-exit: 0.17's crash path (plat/common/x86/
cpu_native.c) writes isa-debug-exit before pvpanic, so with that device QEMU would exit
before anyone could look. Expected values come from independent readers: stock gdb
walking ``uk_sched_head`` over QEMU's own gdbstub, Unikraft's own crash dump on the
console (``RIP: ...``), and binutils' addr2line.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import real_image, undebug
from tests.test_attach import Qmp
from undebug.session.store import runtime_dir

GDB_WALK = r'''
import gdb, json
gdb.execute("set pagination off")
gdb.execute("target remote " + SOCKET)
names, sched = [], gdb.parse_and_eval("uk_sched_head")
while int(sched) and len(names) < 10000:
    for queue in ("thread_list", "exited_threads"):
        t = sched[queue]["tqh_first"]
        while int(t) and len(names) < 10000:
            names.append(t["name"].string() if int(t["name"]) else "<unnamed>")
            t = t["thread_list"]["tqe_next"]
    sched = sched["next"]
with open(OUT, "w") as f:
    json.dump(names, f)
gdb.execute("detach")
'''


@dataclass
class Booted:
    name: str
    image: Path
    dbg: Path
    console: Path
    gdb_socket: Path
    qmp: Qmp
    gdb_names: list[str]  # the threads stock gdb read before undebug attached


def _boot(name: str, image: Path, crashes: bool) -> Iterator[Booted]:
    tmp = Path(runtime_dir()) / f"uk-{name}"
    tmp.mkdir(exist_ok=True)
    gdb_socket, console = tmp / "gdb.sock", tmp / "console.log"
    proc = subprocess.Popen([
        "qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "64", "-display", "none",
        "-vga", "none", "-nodefaults", "-serial", f"file:{console}", "-device", "pvpanic",
        "-action", "reboot=shutdown,shutdown=pause,panic=pause",
        "-gdb", f"unix:{gdb_socket},server=on,wait=off",
        "-qmp", f"unix:{tmp}/undebug.qmp,server=on,wait=off",
        "-qmp", f"unix:{tmp}/test.qmp,server=on,wait=off", "-kernel", str(image)])
    try:
        deadline = time.monotonic() + 20
        while not (tmp / "test.qmp").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        qmp = Qmp(tmp / "test.qmp")
        if crashes:  # until pvpanic, or the ACPI power-off right after it, has paused it
            while (status := qmp.execute("query-status")["return"]["status"]) not in \
                    ("guest-panicked", "shutdown"):
                assert time.monotonic() < deadline, f"status {status}: no crash"
                time.sleep(0.1)
        else:
            time.sleep(2)  # boot (~0.3 s under TCG) and let the threads start
        dbg = image.with_name(image.name + ".dbg")
        out = tmp / "names.json"
        subprocess.run(["gdb", "-batch", "-nx", "-ex", f"file {dbg}",
                        "-ex", f"python SOCKET = {str(gdb_socket)!r}; OUT = {str(out)!r}",
                        "-ex", f"python exec({GDB_WALK!r})"],
                       check=True, capture_output=True, timeout=60)
        attached = undebug("attach", "--name", name, "--gdb", str(gdb_socket),
                           "--qmp", str(tmp / "undebug.qmp"), "--elf", str(dbg))
        assert attached.code == 0, attached.stderr
        yield Booted(name, image, dbg, console, gdb_socket, qmp, json.loads(out.read_text()))
    finally:
        undebug("kill", name)
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def running() -> Iterator[Booted]:
    yield from _boot("ukrun", real_image("UNDEBUG_UNIKRAFT_IMAGE"), crashes=False)


@pytest.fixture(scope="module")
def crashed() -> Iterator[Booted]:
    yield from _boot("ukcrash", real_image("UNDEBUG_UNIKRAFT_CRASH_IMAGE"), crashes=True)


def test_threads_are_unikrafts_own_by_name(running: Booted) -> None:
    result = undebug("threads", running.name, "--json")
    assert result.code == 0, result.stderr
    threads = result.json()["threads"]
    assert [t["name"] for t in threads] == running.gdb_names
    assert {"idle", "init"} <= {t["name"] for t in threads}
    assert sum(t["state"] == "running" for t in threads) == 1  # one vCPU
    assert {t["state"] for t in threads} <= {"running", "ready", "sleeping", "blocked", "exited"}


def test_every_thread_unwinds_to_its_entry(running: Booted) -> None:
    result = undebug("bt", running.name, "--all", "--json")
    assert result.code == 0, result.stderr
    for trace in result.json()["backtraces"]:
        if trace["thread"]["state"] != "exited":
            assert trace["complete"] and trace["frames"][-1]["function"], trace


def test_stock_gdb_sees_the_threads_through_the_gdbserver(running: Booted) -> None:
    server = subprocess.Popen([sys.executable, "-m", "undebug.cli", "gdbserver", running.name],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        path = re.search(r"listening on (\S+)", line)
        assert path is not None, line
        out = subprocess.run(["gdb", "-batch", "-nx", "-ex", f"file {running.dbg}",
                              "-ex", f"target remote {path.group(1)}", "-ex", "info threads",
                              "-ex", "thread apply all bt"],
                             capture_output=True, text=True, timeout=120).stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    listed = re.findall(r'Thread \d+ "([^"]+)"', out.split("\nThread ", 1)[0])
    assert listed == running.gdb_names, out
    assert "No stack." not in out


def test_lldb_sees_the_threads_by_name_through_the_gdbserver(running: Booted) -> None:
    """LLDB 14 reads names only from jThreadsInfo/qThreadStopInfo (not qXfer:threads)."""
    server = subprocess.Popen([sys.executable, "-m", "undebug.cli", "gdbserver", running.name,
                               "--listen", "127.0.0.1:0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        where = re.search(r"listening on (\S+)", line)
        assert where is not None, line
        out = subprocess.run(["lldb", "--no-lldbinit", "-b", "-o", f"target create {running.dbg}",
                              "-o", f"gdb-remote {where.group(1)}", "-o", "thread list",
                              "-o", "detach"], capture_output=True, text=True,
                             timeout=120).stdout
    finally:
        server.terminate()
        server.wait(timeout=30)
    listed = re.findall(r"^[ *] thread #\d+: tid = .*, name = '(.*?)'", out, re.M)
    assert sorted(listed) == sorted(running.gdb_names), out


def test_the_crash_is_described_from_the_trap_frame(crashed: Booted) -> None:
    import undebug as api

    dump = re.search(r"RIP: ([0-9a-f]{16})", crashed.console.read_text(errors="replace"))
    assert dump is not None, "Unikraft's own crash dump has the trap frame's RIP"
    rip = int(dump.group(1), 16)
    function, where = subprocess.run(["addr2line", "-f", "-e", str(crashed.dbg), f"{rip:#x}"],
                                     capture_output=True, text=True,
                                     check=True).stdout.split()[:2]
    location = f"{Path(where.split(':')[0]).name}:{where.split(':')[1]}"
    with api.attach(crashed.name) as guest:
        crash = guest.provider.crash()
        running = [t for t in guest.threads() if t.cpu == 0]
    assert crash is not None and len(running) == 1
    assert (crash.function, crash.location, crash.thread_name) == \
        (function, location, running[0].name)
    assert re.fullmatch(rf"page fault (reading|writing|executing) 0x[0-9a-f]+ in {function} "
                        rf"\({re.escape(location)}\), thread {re.escape(running[0].name)}",
                        crash.reason), crash.reason
    bt = undebug("bt", crashed.name, "--thread", str(running[0].id), "--json").json()
    frames = bt["backtraces"][0]["frames"]
    marker = next(i for i, f in enumerate(frames) if f["method"] == "exception")
    assert frames[marker]["exception"]["vector"] == 14 and frames[marker + 1]["pc"] == rip
    assert bt["backtraces"][0]["complete"]
