"""The gdbserver with a second, independent client: stock LLDB 14 (Debian's ``lldb``)
beside stock gdb, against a live reference guest. LLDB reads thread names only from
``jThreadsInfo``/``qThreadStopInfo`` and stop replies (never ``qXfer:threads`` nor
``qThreadExtraInfo``), so these tests fail if those answers are missing or wrong. Also:
the stop reply names the thread on the vCPU that QEMU says stopped, for a breakpoint, an
interrupt and ``undebug stop``."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PLANTED_SEED, boot, undebug
from tests.test_proxy import EVIL_ESCAPED, Proxy, RawClient, gdb, gdb_threads, start_proxy, stop_proxy
from undebug.elf import ElfFile

ELF = Path(__file__).resolve().parents[1] / "build" / "refguest.elf"
WORKERS = [f"worker-{i}" for i in range(4)]


@pytest.fixture(scope="module")
def served(guest_image: Path) -> Iterator[Proxy]:
    """A reference guest (-smp 2, 4 workers) and one gdbserver on loopback TCP (LLDB's
    gdb-remote takes HOST:PORT)."""
    name = boot("gdbclients", "threads=4", guest_image)
    server = start_proxy(name)
    try:
        yield server
    finally:
        log = stop_proxy(server)
        undebug("kill", name)
    assert "Traceback" not in log


def lldb(proxy: Proxy, *commands: str, timeout: float = 60) -> bytes:
    """Stock LLDB in batch mode, connected with ``gdb-remote``; its raw output. It detaches
    at the end (as gdb does at exit), so the guest runs on."""
    args = ["lldb", "--no-lldbinit", "-b", "-o", f"target create {ELF}",
            "-o", f"gdb-remote {proxy.where}"]
    for cmd in (*commands, "detach"):
        args += ["-o", cmd]
    done = subprocess.run(args, capture_output=True, timeout=timeout)
    return done.stdout + done.stderr


def lldb_threads(output: str) -> dict[str, tuple[int, bool, str]]:
    """``thread list`` rows: name -> (tid, selected, the row)."""
    rows = re.findall(r"^([ *]) thread #\d+: tid = (0x[0-9a-f]+), (.*?), name = '(.*?)'(.*)$",
                      output, re.M)
    return {name: (int(tid, 16), mark == "*", f"{where}{rest}")
            for mark, tid, where, name, rest in rows}


def guest_threads(guest: str) -> dict[str, dict]:
    return {t["name"]: t for t in undebug("threads", guest, "--json").json()["threads"]}


def test_lldb_thread_list_shows_every_guest_thread_by_name_the_hostile_one_escaped(
        served: Proxy) -> None:
    raw = lldb(served, "thread list")
    assert b"\x1b" not in raw and b"\x07" not in raw
    rows = lldb_threads(raw.decode())
    ours = guest_threads(served.guest)
    assert set(rows) == {"main", "idle0", "idle1", "sleeper", "blocked", "short-lived",
                         EVIL_ESCAPED, *WORKERS}, raw
    for name, (tid, _, _) in rows.items():  # LLDB's tids are the guest's own ids
        key = "evil\x1b]0;owned\x07" if name == EVIL_ESCAPED else name
        assert tid == ours[key]["id"], (name, tid)
    # Exactly one thread carries the stop reason (the attach's): the others have none.
    assert sum("stop reason" in row for _, _, row in rows.values()) == 1, raw


def test_gdb_and_lldb_both_focus_the_worker_that_hit_a_breakpoint(served: Proxy) -> None:
    address = ElfFile(ELF).symbol("checksum_block").address  # type: ignore[union-attr]
    out = lldb(served, "breakpoint set -n checksum_block", "continue", "thread list",
               "register read rip").decode()
    rows = lldb_threads(out)
    selected = [name for name, (_, chosen, _) in rows.items() if chosen]
    assert len(selected) == 1 and selected[0].startswith("worker-"), out
    assert "stop reason = breakpoint 1.1" in rows[selected[0]][2], out
    # The selected thread's own registers (from its vCPU) are at the breakpoint: the
    # stop reply named the vCPU that hit it, not vCPU 0's thread.
    rip = re.search(r"rip = (0x[0-9a-f]+)", out)
    assert rip and int(rip.group(1), 16) == address, out
    gdb_out = gdb(served, "break checksum_block", "continue", "p/x $pc").decode()
    hit = re.search(r'^Thread \d+ "(worker-\d+)" hit Breakpoint 1, checksum_block', gdb_out, re.M)
    assert hit and re.search(rf"^\$1 = {address:#x}$", gdb_out, re.M), gdb_out
    assert undebug("ps", "--json").json()["guests"][0]["breakpoints"] == []


def _ask_stop(client: RawClient, payload: bytes) -> bytes:
    client.sock.sendall(b"$%s#%02x" % (payload, sum(payload) & 0xFF))
    while True:  # console (O) packets come first
        reply = client.read()
        if not reply.startswith(b"O") or reply == b"OK":
            return reply


def test_an_interrupt_and_undebug_stop_report_the_vcpu_qemu_names(served: Proxy) -> None:
    """QEMU's interrupt reply names the vCPU that stopped last (here: the one a breakpoint
    stopped on vCPU 1), so an answer that always said vCPU 0 fails here."""
    address = ElfFile(ELF).symbol("checksum_block").address  # type: ignore[union-attr]
    client = RawClient(served.where)
    client.ask(b"qSupported:swbreak+")
    assert client.ask(b"Z0,%x,1" % address) == b"OK"
    for _ in range(40):  # workers run on both vCPUs: wait for a hit on vCPU 1
        reply = _ask_stop(client, b"vCont;c")
        assert re.match(rb"T05thread:[0-9a-f]+;core:[01];hexname:[0-9a-f]+;swbreak:;$", reply), reply
        if b"core:1;" in reply:
            break
    else:
        pytest.fail("40 breakpoint hits, none on vCPU 1")
    assert client.ask(b"z0,%x,1" % address) == b"OK"
    client.sock.sendall(b"$vCont;c#a8")
    time.sleep(0.3)
    client.send_raw(b"\x03")
    reply = client.read()
    assert re.fullmatch(rb"T02thread:[0-9a-f]+;core:1;hexname:[0-9a-f]+;", reply), reply
    paused = undebug("ps", "--json").json()["guests"][0]
    assert paused["paused_cpu"] == 1 and paused["last_stop"] is None, paused
    # undebug stop while the debugger waits for the guest: the same vCPU, and its thread.
    client.sock.sendall(b"$vCont;c#a8")
    time.sleep(0.3)
    assert undebug("stop", served.guest).code == 0
    client.sock.settimeout(5)
    reply = client.read()
    match = re.fullmatch(rb"T02thread:([0-9a-f]+);core:1;hexname:([0-9a-f]+);", reply)
    assert match, reply
    on_cpu1 = [t for t in guest_threads(served.guest).values() if t["cpu"] == 1]
    assert [t["id"] for t in on_cpu1] == [int(match.group(1), 16)], on_cpu1
    assert bytes.fromhex(match.group(2).decode()).decode() == on_cpu1[0]["name"]
    # A hardware breakpoint's stop says hwbreak (a software one said swbreak above).
    handler = ElfFile(ELF).symbol("handle_request").address  # type: ignore[union-attr]
    assert client.ask(b"Z1,%x,1" % handler) == b"OK"
    reply = _ask_stop(client, b"vCont;c")
    assert re.fullmatch(rb"T05thread:[0-9a-f]+;core:[01];hexname:[0-9a-f]+;hwbreak:;", reply), reply
    assert client.ask(b"z1,%x,1" % handler) == b"OK"
    assert client.ask(b"D") == b"OK"
    client.sock.close()


def test_qxfer_threads_names_are_escaped_for_xml_and_a_terminal(served: Proxy) -> None:
    client = RawClient(served.where)
    client.ask(b"qSupported")
    xml = client.ask(b"qXfer:threads:read::0,3fff")
    assert xml.startswith(b"l<?xml") and b"\x1b" not in xml
    names = re.findall(rb'<thread id="([0-9a-f]+)"(?: core="[01]")? name="([^"]*)">', xml)
    assert (b"7", b"evil\\x1b]0;owned\\x07") in names, xml  # thread 7: the README's evil one
    assert len(names) == 7 + len(WORKERS)
    assert client.ask(b"D") == b"OK"
    client.sock.close()
    out = gdb(served, "info threads").decode()
    assert EVIL_ESCAPED in gdb_threads(out)


# ---- watchpoints ---------------------------------------------------------------------------

def _counter_symbol() -> tuple[int, int]:
    symbol = ElfFile(ELF).symbol("planted_counter")
    assert symbol is not None
    return symbol.address, symbol.size


def test_a_watchpoint_on_planted_counter_stops_the_cli_when_the_guest_writes_it(
        served: Proxy) -> None:
    address, size = _counter_symbol()
    made = undebug("watch", served.guest, "planted_counter", "--json")
    assert made.code == 0, made.stderr
    wp = made.json()["watchpoint"]
    assert (wp["address"], wp["length"], wp["watch"], wp["owner"]) == (address, size, "write",
                                                                       "cli")
    try:
        listed = undebug("watch", served.guest, "--list").stdout
        assert listed == f"watchpoint {wp['id']} on {address:#x} (planted_counter, {size} " \
            "bytes, write, set by cli)\n"
        stop = undebug("wait", served.guest, "--timeout", "30", "--json")
        assert stop.code == 0, stop.stderr
        info = stop.json()["stop"]
        assert (info["reason"], info["breakpoint"], info["watch"], info["data_address"]) == \
            ("watchpoint", wp["id"], "write", address)
        # Stopped after the write: the instruction after the increment (README: a request
        # ends with requests_handled++ then planted_counter++), in a worker.
        assert info["function"].startswith("handle_request") and \
            info["thread"]["name"].startswith("worker-"), info
    finally:
        assert undebug("delete", served.guest, str(wp["id"])).stdout == \
            f"deleted watchpoint {wp['id']}\n"
        undebug("cont", served.guest)


def test_watch_refuses_what_it_cannot_watch_with_exit_2(served: Proxy) -> None:
    for args, message in [((), "give a SYMBOL or ADDR"),
                          (("--list", "--read"), "give a SYMBOL or ADDR"),
                          (("planted_counter", "--len", "0"), "must be at least 1"),
                          (("planted_counter", "--len", "5000"), "1 to 4096 bytes"),
                          (("planted_counter", "--read", "--access"), "not allowed with"),
                          (("no_such_variable",), "no symbol 'no_such_variable'"),
                          (("0x8000000000000000",), "not a canonical x86-64 address")]:
        result = undebug("watch", served.guest, *args)
        assert result.code == 2 and message in result.stderr, (args, result.stderr)
    assert undebug("watch", served.guest, "--list").stdout == "no watchpoints\n"
    made = undebug("watch", served.guest, "planted_counter", "--read", "--json").json()
    try:
        again = undebug("watch", served.guest, "planted_counter", "--read")
        assert again.code == 2 and "a read watchpoint at" in again.stderr, again.stderr
    finally:
        undebug("delete", served.guest, str(made["watchpoint"]["id"]))
        undebug("cont", served.guest)


def test_read_and_access_watchpoints_stop_where_the_guest_reads(served: Proxy) -> None:
    """--read on planted_counter: QEMU 7.2 counts the workers' locked add as a read. --access
    on requests_handled: main_loop reads it for its heartbeat line (README). (QEMU 7.2
    under TCG never fires an access watchpoint on a locked read-modify-write: stock gdb's
    awatch planted_counter over QEMU's own stub does not stop either.)"""
    for variable, access, where in [("planted_counter", "--read", "handle_request"),
                                    ("requests_handled", "--access", "main_loop")]:
        made = undebug("watch", served.guest, variable, access, "--json").json()["watchpoint"]
        try:
            stop = undebug("wait", served.guest, "--timeout", "30", "--json")
            assert stop.code == 0, stop.stderr
            info = stop.json()["stop"]
            assert (info["reason"], info["breakpoint"], info["watch"]) == \
                ("watchpoint", made["id"], access[2:]), info
            assert info["data_address"] == made["address"] and \
                info["function"].startswith(where), info
        finally:
            undebug("delete", served.guest, str(made["id"]))
            undebug("cont", served.guest)


def test_gdb_and_lldb_watchpoints_stop_when_the_guest_writes_planted_counter(
        served: Proxy) -> None:
    address, _ = _counter_symbol()
    out = gdb(served, "watch planted_counter", "continue", "p/x $pc",
              "p/x planted_counter - requests_handled").decode()
    hit = re.search(r'^Thread \d+ "(worker-\d+)" hit Hardware watchpoint 1: planted_counter\n\n'
                    r"Old value = (\d+)\nNew value = (\d+)$", out, re.M)
    # +1, or +2 when the other vCPU's locked add lands before QEMU has stopped it (-smp 2;
    # a fresh-clone run saw +2, as hardware with a data breakpoint can).
    assert hit and 1 <= int(hit.group(3)) - int(hit.group(2)) <= 2, out
    # Both counters go up by one per request: the write gdb saw was the guest's own (the
    # other vCPU may be between its two increments: short by one).
    diff = re.search(r"^\$2 = (0x[0-9a-f]+)$", out, re.M)
    assert diff and 0 <= PLANTED_SEED - int(diff.group(1), 16) <= 1, out
    assert "handle_request" in out.split("New value")[1].splitlines()[1], out
    out = lldb(served, "watchpoint set variable planted_counter", "continue",
               "thread list").decode()
    rows = lldb_threads(out)
    stopped = [name for name, (_, chosen, row) in rows.items() if chosen]
    assert len(stopped) == 1 and stopped[0].startswith("worker-"), out
    assert "stop reason = watchpoint 1" in rows[stopped[0]][2], out
    assert re.search(rf"Watchpoint 1: addr = 0x0*{address:x} size = 8", out), out
    left = undebug("break", served.guest, "--list", "--json").json()["breakpoints"]
    assert left == [], left  # the debuggers' watchpoints went with them


# ---- monitor commands ----------------------------------------------------------------------

def _table(text: str) -> dict[str, str]:
    """``undebug threads``'s table rows: id -> name (escaped, as printed)."""
    return dict(re.findall(r"^(\d+) +(\S+) +(?:sleeping|running|blocked|exited|ready)", text,
                           re.M))


def test_monitor_threads_and_ps_print_the_clis_text_in_gdb_and_lldb(served: Proxy) -> None:
    ours = {str(t["id"]): t["name"] for t in guest_threads(served.guest).values()}
    expected = {tid: "evil\\x1b]0;owned\\x07" if name.startswith("evil") else name
                for tid, name in ours.items()}
    raw = gdb(served, "monitor threads", "monitor ps", "monitor maps", "monitor heap",
              "monitor nope")
    assert b"\x1b" not in raw and b"\x07" not in raw
    out = raw.decode()
    assert _table(out) == expected, out
    assert re.search(rf"^{served.guest} +paused +tcg +2 ", out, re.M), out  # ps, gdb has it
    assert "undebug: no monitor command 'nope'" in out, out
    assert "help, dump, heap, maps, net, ps, threads" in out, out
    # maps: the thread stacks by name, the hostile one escaped (from the page tables).
    stack = guest_threads(served.guest)["worker-0"]["stack"]
    assert re.search(rf"^{stack[0]:#018x}-{stack[1]:#018x}  rw-s .* stack of worker-0$", out,
                     re.M), out
    assert "guard page of evil\\x1b]0;owned\\x07" in out, out
    heap = undebug("heap", served.guest).stdout  # the same renderer, the guest as it is now
    assert heap.splitlines()[0] in out, (heap, out)
    raw = lldb(served, "process plugin packet monitor threads")
    assert b"\x1b" not in raw and _table(raw.decode()) == expected, raw
    assert b"response: OK" in raw


def test_monitor_dump_writes_a_bundle_of_this_stop_and_monitor_net_shows_lwip(
        served: Proxy, tmp_path: Path) -> None:
    """``monitor dump DIR`` in stock gdb: a sparse bundle of the guest as gdb holds it;
    offline, ``undebug threads PATH`` prints the table ``monitor threads`` printed at that
    same stop. ``monitor net``: what ``undebug net`` prints (guest's lwIP, QEMU's view)."""
    raw = gdb(served, "monitor threads", f"monitor dump {tmp_path}", "monitor net",
              "monitor net extra")
    out = raw.decode()
    bundle = re.search(r"^bundle: (/\S+)$", out, re.M)
    assert bundle, out
    path = Path(bundle[1])
    assert path.parent == tmp_path and (path / "core.elf").exists(), out
    assert not (path / "INCOMPLETE").exists()
    summary = json.loads((path / "summary.json").read_text())
    assert summary["core"]["sparse"] is True and summary["core"]["zero_pages_skipped"] > 0
    offline = undebug("threads", str(path))
    assert offline.code == 0, offline.stderr
    assert _table(offline.stdout) == _table(out) and len(_table(out)) >= 6, (offline, out)
    # this guest has no NIC (no --forward): lwIP's (empty) table, then QEMU's view, live
    net = undebug("net", served.guest)
    assert net.code == 0 and "host: no NIC" in net.stdout, net
    assert net.stdout in out, (net.stdout, out)
    assert "undebug: monitor net takes no arguments" in out, out


def test_monitor_output_is_hex_encoded_o_packets_then_ok(served: Proxy) -> None:
    client = RawClient(served.where)
    client.ask(b"qSupported")
    client.sock.sendall(b"$qRcmd,%s#%02x" % (b"help".hex().encode(),
                                             sum(b"qRcmd," + b"help".hex().encode()) & 0xFF))
    packets = [client.read()]
    while packets[-1].startswith(b"O") and packets[-1] != b"OK":
        packets.append(client.read())
    assert packets[-1] == b"OK" and len(packets) >= 2, packets
    text = b"".join(bytes.fromhex(p[1:].decode()) for p in packets[:-1]).decode()
    assert text.startswith("undebug monitor commands: help, dump, heap, maps, net, ps, threads"), text
    assert client.ask(b"qRcmd,zz").startswith(b"E")  # not hex
    assert client.ask(b"D") == b"OK"
    client.sock.close()


# ---- the memory map and unmapped reads -----------------------------------------------------

def test_memory_map_from_the_page_tables_and_unmapped_reads_fail_in_gdb_and_lldb(
        served: Proxy) -> None:
    counter, _ = _counter_symbol()
    worker = guest_threads(served.guest)["worker-0"]
    stack_low = worker["stack"][0]
    guard = stack_low - 4096  # README: every thread stack has an unmapped guard page below
    out = gdb(served, "info mem", "x/gx 0", f"x/gx {guard:#x}", f"x/gx {stack_low:#x}",
              "set mem inaccessible-by-default off", "mem 0 0x1000 rw", "x/gx 0").decode()
    ranges = [(int(lo, 16), int(hi, 16)) for lo, hi in
              re.findall(r"^\d+ +y +\t?(0x[0-9a-f]+) (0x[0-9a-f]+) rw", out, re.M)]
    assert ranges, out

    def mapped(address: int) -> bool:
        return any(lo <= address < hi for lo, hi in ranges)

    assert mapped(counter) and mapped(stack_low) and not mapped(0) and not mapped(guard)
    assert out.count("Cannot access memory at address 0x0\n") == 2, out  # the map; the server
    assert f"Cannot access memory at address {guard:#x}" in out, out
    assert re.search(rf"{stack_low:#x}:\t0x[0-9a-f]{{16}}$", out, re.M), out  # stdout
    # The server's own answer to reads there: an error, at once.
    client = RawClient(served.where)
    client.ask(b"qSupported")
    started = time.monotonic()
    assert client.ask(b"m%x,8" % guard) == b"E0e"
    assert client.ask(b"m0,800") == b"E0e" and client.ask(b"mffff800000000000,8") == b"E0e"
    assert time.monotonic() - started < 2
    assert client.ask(b"D") == b"OK"
    client.sock.close()
    out = lldb(served, f"memory read -s8 -fx -c1 {stack_low:#x}", f"memory read {guard:#x}"
               ).decode()
    assert re.search(rf"^0x0*{stack_low:x}: 0x[0-9a-f]{{16}}$", out, re.M), out
    assert f"error: memory read failed for {guard:#x}" in out, out


# ---- qOffsets ------------------------------------------------------------------------------

def test_qoffsets_answers_a_load_offset_and_nothing_without_one(served: Proxy) -> None:
    """The reference guest runs at its link address: no answer (gdb and LLDB then relocate
    nothing). A slid guest (Nanos' KASLR) has no image here, so the second half stands a
    Target with a load offset (the Nanos provider sets it) behind a real session object:
    fake data, because no slid guest can be booted in this suite."""
    import socket

    from undebug.errors import UsageError
    from undebug.gdb.tdesc import TargetDescription
    from undebug.gdbserver.backend import Snapshot
    from undebug.gdbserver.session import GdbSession
    from undebug.gdbserver.wire import GdbConnection

    client = RawClient(served.where)
    client.ask(b"qSupported")
    assert client.ask(b"qOffsets") == b""
    assert client.ask(b"D") == b"OK"
    client.sock.close()

    class SlidTarget:
        load_offset = 0xFFFFFFFF7FE00000 + 0x3A000  # a -DNO_KASLR Nanos, moved 0x3a000

        def cpu_count(self) -> int:
            return 0

    class Held:
        def target(self) -> SlidTarget:
            return target

        def warn_once(self, message: str) -> None:
            pass

    def no_os(target: object) -> Snapshot:
        raise UsageError("no OS awareness for this stand-in")

    target = SlidTarget()
    ours, theirs = socket.socketpair()
    session = GdbSession(GdbConnection(ours), Held(), no_os,  # type: ignore[arg-type]
                         TargetDescription(None, ()), {})
    try:
        assert session.handle(b"qOffsets") == \
            b"Text=ffffffff7fe3a000;Data=ffffffff7fe3a000;Bss=ffffffff7fe3a000"
    finally:
        ours.close()
        theirs.close()
