"""The thread-aware gdbserver proxy, with stock gdb and real QEMU: gdb sees the guest's own
threads by name, unwinds each one, reads a sleeping thread's saved context, stops at a
breakpoint in the right guest thread and goes on; odd clients and a corrupt guest do not
bring the proxy down."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import boot, undebug, wait_for_console
from undebug.gdb.packets import MAX_PACKET, frame
from undebug.gdbserver.wire import BadPacket, GdbConnection

EVIL_ESCAPED = "evil\\x1b]0;owned\\x07"
WORKERS = [f"worker-{i}" for i in range(16)]
# gdb 13 has no error-message+ feature: a refused register write shows as E01 in gdb
REFUSED_WRITE = "Could not write register \"rax\"; remote failure reply 'E01'"


@dataclass
class Proxy:
    proc: subprocess.Popen[bytes]
    where: str  # what gdb's target remote takes
    guest: str

    logged: bytes = b""

    def log_so_far(self) -> str:
        """What the proxy has logged until now (it runs on)."""
        assert self.proc.stderr is not None
        os.set_blocking(self.proc.stderr.fileno(), False)
        try:
            self.logged += self.proc.stderr.read() or b""
        finally:
            os.set_blocking(self.proc.stderr.fileno(), True)
        return self.logged.decode(errors="backslashreplace")

    def stderr(self) -> str:
        """Everything the proxy logged (it must have exited)."""
        assert self.proc.stderr is not None
        return (self.logged + self.proc.stderr.read()).decode(errors="backslashreplace")


def start_proxy(guest: str, *extra: str, listen: str | None = "127.0.0.1:0") -> Proxy:
    """``undebug gdbserver GUEST`` (``listen`` None: its default, a unix socket)."""
    where = [] if listen is None else ["--listen", listen]
    proc = subprocess.Popen([sys.executable, "-m", "undebug.cli", "gdbserver", guest,
                             *where, *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = re.fullmatch(r"listening on (\S+) \(gdb: target remote (\S+)\)\n", line)
    assert match and match.group(1) == match.group(2), (line, proc.stderr and proc.stderr.read())
    return Proxy(proc, match.group(1), guest)


def stop_proxy(proxy: Proxy) -> str:
    if proxy.proc.poll() is None:
        os.kill(proxy.proc.pid, signal.SIGTERM)
    assert proxy.proc.wait(timeout=10) == 0
    return proxy.stderr()


def gdb(proxy: Proxy, *commands: str, timeout: float = 30) -> bytes:
    """Stock gdb in batch mode against the proxy; its raw output (stdout and stderr)."""
    args = ["gdb", "-batch", "-nx", "-ex", "set pagination off",
            "-ex", f"target remote {proxy.where}"]
    for cmd in commands:
        args += ["-ex", cmd]
    elf = Path(__file__).resolve().parents[1] / "build" / "refguest.elf"
    done = subprocess.run([*args, str(elf)], capture_output=True, timeout=timeout)
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def proxy(guest_image: Path) -> Iterator[Proxy]:
    """A reference guest (-smp 2, 16 workers) served by one proxy for the whole module."""
    name = boot("gdbsrv", "threads=16", guest_image)
    server = start_proxy(name)
    try:
        yield server
    finally:
        log = stop_proxy(server)
        undebug("kill", name)
    assert "Traceback" not in log and "stopped; the guest stays as it is" in log


def gdb_threads(output: str) -> dict[str, tuple[int, str]]:
    """``info threads`` rows: guest thread name -> (gdb's number, the row)."""
    rows = re.findall(r'^[ *]+(\d+) +Thread (\d+) "(.*?)" \((.*?)\) (.*)$', output, re.M)
    return {name: (int(num), f"{tid} {state} {where}") for num, tid, name, state, where in rows}


def test_info_threads_lists_every_guest_thread_by_name(proxy: Proxy) -> None:
    raw = gdb(proxy, "info threads")
    assert b"\x1b" not in raw and b"\x07" not in raw  # the hostile name reaches gdb escaped
    rows = gdb_threads(raw.decode())
    assert set(rows) == {"main", "idle0", "idle1", "sleeper", "blocked", "short-lived",
                         EVIL_ESCAPED, *WORKERS}
    # gdb's thread ids are the guest's own, as `undebug threads` prints them.
    ours = {t["name"]: t for t in undebug("threads", proxy.guest, "--json").json()["threads"]}
    for name, (_, row) in rows.items():
        key = "evil\x1b]0;owned\x07" if name == EVIL_ESCAPED else name
        assert row.split()[0] == str(ours[key]["id"])
    assert "blocked (event)" in rows["blocked"][1] and "exited" in rows["short-lived"][1]
    assert sum("on vCPU" in row for _, row in rows.values()) == 2


def test_thread_apply_all_bt_unwinds_each_to_its_planted_chain(proxy: Proxy) -> None:
    out = gdb(proxy, "thread apply all bt").decode()
    traces = dict(re.findall(r'^Thread \d+ \(Thread \d+ "(.*?)".*?\):\n((?:#.*\n?)+)', out,
                             re.M))
    assert len(traces) == 7 + 16, out

    def chain(name: str) -> list[str]:
        return re.findall(r"^#\d+ +(?:0x[0-9a-f]+ in )?(\w+) \(", traces[name], re.M)

    sleeper = chain("sleeper")
    assert sleeper.index("nap") < sleeper.index("sleeper_main"), sleeper
    assert chain("blocked")[:4] == ["schedule", "block", "wait_for_event", "blocker_main"]
    for worker in WORKERS:
        assert "worker_main" in chain(worker), (worker, traces[worker])
        assert chain(worker)[-1] == "thread_trampoline"


def test_a_sleeping_worker_shows_its_saved_context_frames_and_locals(proxy: Proxy,
                                                                   tmp_path: Path) -> None:
    """The guest is held stopped from the thread list to gdb's last command (one gdb
    session, which picks the worker by name), and undebug's own ``regs`` runs from gdb's
    ``shell`` while gdb is attached: a worker listed asleep once woke on a vCPU before a
    later look (a fresh-clone run read "vCPU 0")."""
    assert undebug("stop", proxy.guest).code == 0
    try:
        ours = {t["name"]: t for t in
                undebug("threads", proxy.guest, "--json").json()["threads"]}
        worker = next(t for name, t in ours.items() if name.startswith("worker-")
                      and t["state"] == "sleeping")
        regs_json = tmp_path / "regs.json"
        regs = shlex.join([sys.executable, "-m", "undebug.cli", "regs", proxy.guest,
                           "--thread", str(worker["id"]), "--json"])
        select = ("python [gdb.execute(f'thread {t.num}') for t in "
                  f"gdb.selected_inferior().threads() if t.name == {worker['name']!r}]")
        out = gdb(proxy, select, "info registers rip rsp rax",
                  f"shell {regs} > {shlex.quote(str(regs_json))}", "frame 2", "info locals",
                  "set var $rax = 1", "stepi").decode()
    finally:
        undebug("cont", proxy.guest)  # refused (exit 2) if gdb's detach resumed it already
    saved = json.loads(regs_json.read_text())
    assert saved["source"] == "saved context"
    rip = re.search(r"^rip +(0x[0-9a-f]+)", out, re.M)
    rsp = re.search(r"^rsp +(0x[0-9a-f]+)", out, re.M)
    assert rip and int(rip.group(1), 16) == saved["registers"]["rip"], out
    assert rsp and int(rsp.group(1), 16) == saved["registers"]["rsp"], out
    assert re.search(r"^rax +<unavailable>", out, re.M), out  # not saved by switch_context
    assert re.search(r"^#2 .* in worker_main \(", out, re.M), out
    assert re.search(r"^w = 0x[0-9a-f]+$", out, re.M), out  # worker_main's local
    # Writing or stepping a thread that is not on a vCPU is refused, with the reason: on
    # gdb's console for the step (gdb waits for a stop then), in the log for the write.
    assert REFUSED_WRITE in out, out
    assert f"thread {worker['id']} ({worker['name']}) is sleeping (sleep), not on a vCPU: " \
        "only a running thread can be stepped" in out, out
    assert f"thread {worker['id']} ({worker['name']}) is not on a vCPU: its registers are " \
        "the context it saved" in proxy.log_so_far()


def test_breakpoint_stops_in_a_worker_and_continue_goes_on(proxy: Proxy) -> None:
    out = gdb(proxy, "break checksum_block", "continue", "info threads", "bt", "continue",
              "info breakpoints").decode()
    hits = re.findall(r'^Thread \d+ "(.*?)" hit Breakpoint 1, checksum_block \(', out, re.M)
    assert len(hits) == 2 and all(h.startswith("worker-") for h in hits), out
    current = re.search(r'^\* +\d+ +Thread \d+ "(.*?)" \(running on vCPU (\d)\)', out, re.M)
    assert current and current.group(1) == hits[0], out  # the stopped vCPU's guest thread
    assert re.search(r"^#1 .* in handle_request \(.*\n#2 .* in worker_main \(", out, re.M), out
    assert "breakpoint already hit 2 times" in out
    # gdb detached at exit: its breakpoint is gone and the guest runs on.
    status = undebug("ps", "--json").json()["guests"]
    mine = next(g for g in status if g["name"] == proxy.guest)
    assert mine["breakpoints"] == [] and mine["state"] == "running"


def test_register_write_on_the_stopped_vcpu_and_refused_on_a_sleeping_thread(
        proxy: Proxy) -> None:
    out = gdb(proxy, "break checksum_block", "continue", "set $rax = 0x5eedcafe", "p/x $rax",
              "thread 4", "set $rax = 1").decode()
    assert "$1 = 0x5eedcafe" in out, out  # rax is scratch at the function's entry
    assert out.index(REFUSED_WRITE) > out.index("$1 = 0x5eedcafe"), out
    # thread 4: the sleeper (guest-stubs/refguest/README.md: ids in creation order)
    assert "thread 4 (sleeper) is not on a vCPU" in proxy.log_so_far()
    mine = next(g for g in undebug("ps", "--json").json()["guests"] if g["name"] == proxy.guest)
    assert mine["breakpoints"] == []


class RawClient:
    """A hand-driven RSP client, for what gdb never sends."""

    def __init__(self, where: str) -> None:
        if "/" in where:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(where)
        else:
            host, _, port = where.rpartition(":")
            self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.buffer = b""
        self.ack = True

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self) -> bytes:
        """The next packet's body; acks are skipped, console (O) packets kept."""
        while True:
            match = re.match(rb"[+-]*\$([^#]*)#([0-9a-f]{2})", self.buffer, re.S)
            if match:
                self.buffer = self.buffer[match.end():]
                if self.ack:
                    self.sock.sendall(b"+")
                return match.group(1)
            chunk = self.sock.recv(65536)
            assert chunk, "the proxy closed the connection"
            self.buffer += chunk

    def ask(self, payload: bytes) -> bytes:
        self.sock.sendall(frame(payload))
        return self.read()


def test_odd_and_malformed_packets_get_error_replies(proxy: Proxy) -> None:
    client = RawClient(proxy.where)
    assert b"QStartNoAckMode+" in client.ask(b"qSupported:swbreak+")
    client.send_raw(b"$qC#00")  # a bad checksum: the proxy asks again
    assert client.sock.recv(1) == b"-"
    assert client.ask(b"QStartNoAckMode") == b"OK"
    client.ack = False
    client.send_raw(b"$qC#00")  # no-ack mode: nothing is sent again, so an error reply
    assert client.read() == b"E16"
    client.send_raw(b"garbage+++\x00\xff")
    assert client.ask(b"mzzzz,10").startswith(b"E")
    assert client.ask(b"m0,10").startswith(b"E")  # page 0 is unmapped in the guest
    assert client.ask(b"Zq") .startswith(b"E")
    assert client.ask(b"Hg123456") == b"E01"  # no such thread
    assert client.ask(b"Hgpzz.1") == client.ask(b"Hg-5") == b"E16"  # malformed thread ids
    assert client.ask(b"P10=0100") == b"E16"  # rip is 8 bytes wide, not 2
    assert client.ask(b"T99999") == b"E01"
    assert client.ask(b"vNoSuchPacket;1") == b""
    assert client.ask(b"Z5,1000,8") == b""  # no such breakpoint type
    assert client.ask(b"G00").startswith(b"E")  # far too short for the register layout
    assert client.ask(b"p99") .startswith(b"E")
    current = int(client.ask(b"qC")[2:], 16)
    ids = client.ask(b"qfThreadInfo")
    assert ids.startswith(b"m") and current in [int(i, 16) for i in ids[1:].split(b",")]
    assert client.ask(b"qsThreadInfo") == b"l"
    # A second debugger meanwhile is turned away; the first one goes on.
    second = socket.create_connection(("127.0.0.1", int(proxy.where.rpartition(":")[2])),
                                      timeout=10)
    assert second.recv(100) == b""
    second.close()
    # Continue, then interrupt (gdb's Ctrl-C): a SIGINT stop in a guest thread.
    client.sock.sendall(frame(b"vCont;c"))
    time.sleep(0.3)
    client.send_raw(b"\x03")
    assert re.fullmatch(rb"T02thread:[0-9a-f]+;core:[01];hexname:[0-9a-f]+;", client.read())
    assert client.ask(b"D") == b"OK"
    client.sock.close()
    time.sleep(0.3)
    mine = next(g for g in undebug("ps", "--json").json()["guests"] if g["name"] == proxy.guest)
    assert mine["state"] == "running"  # detach let the guest run
    assert proxy.proc.poll() is None


def test_non_loopback_listen_is_refused_without_allow_remote(proxy: Proxy) -> None:
    result = undebug("gdbserver", proxy.guest, "--listen", "0.0.0.0:0")
    assert result.code == 2 and "no authentication" in result.stderr


def test_corrupt_thread_list_is_served_with_warnings_and_the_end_stops_the_server(
        guest_image: Path, runtime_dir: Path) -> None:
    name = boot("gdbbad", "threads=2 corrupt=cyclic-threads", guest_image)
    server = start_proxy(name, listen=str(runtime_dir / "gdb.sock"))
    try:
        out = gdb(server, "info threads").decode()
        assert {"main", "worker-0", "worker-1"} <= set(gdb_threads(out)), out
    finally:
        undebug("kill", name)
    try:
        assert server.proc.wait(timeout=10) == 0  # the guest has ended: so has the server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
    log = server.stderr()
    assert "thread list loops back" in log and "the guest has ended" in log
    assert not (runtime_dir / "gdb.sock").exists()


def test_unusable_guest_thread_ids_get_substitutes_and_names_are_escaped() -> None:
    from undebug.gdb.registers import encode_registers
    from undebug.gdb.tdesc import Register
    from undebug.gdbserver import threads as proxy_threads
    from undebug.os.provider import GuestThread, ThreadSnapshot

    def thread(tid: int, name: str, cpu: int | None = None) -> GuestThread:
        return GuestThread(tid, name, "running" if cpu is not None else "sleeping", cpu,
                           {"rip": 0x1000 + tid}, None)

    # A corrupt guest: ids 0 and 7 twice, one too large for gdb; vCPU 1 runs nothing known.
    snapshot = ThreadSnapshot([thread(7, "a", 0), thread(7, "b\x1b[2J"), thread(0, "c"),
                               thread(1 << 40, "d")], {0: 7, 1: None}, ["list looks odd"])

    class FakeTarget:
        def cpu_count(self) -> int:
            return 2

        def registers(self, cpu: int) -> dict[str, int]:
            return {"rip": 0xC0DE00 + cpu, "rsp": 0x8000}

    view = proxy_threads.ThreadView.from_target(FakeTarget(),  # type: ignore[arg-type]
                                                lambda target: snapshot)
    ids = [t.gdb_id for t in view.threads]
    assert len(set(ids)) == 5 and ids[0] == 7 and all(0 < i < 1 << 31 for i in ids)
    assert view.threads[1].name == "b\\x1b[2J" and b"\x1b" not in view.xml()
    assert sum("unusable" in w for w in view.warnings) == 3 and "list looks odd" in view.warnings
    assert view.on_cpu(0) is view.threads[0]
    assert view.on_cpu(1) is not None and view.on_cpu(1).name == "vCPU 1"  # type: ignore[union-attr]
    rip = Register("rip", 64, 16, 0, "code_ptr", None, "core")
    eflags = Register("eflags", 32, 17, 8, "int", None, "core")
    assert encode_registers(view.threads[1].registers, (rip, eflags)) == \
        "0710000000000000" + "xx" * 4


def test_gdb_attaches_to_a_crashed_guest_and_bt_shows_the_planted_crash_chain(
        guest_image: Path) -> None:
    # One vCPU: the crashing worker is the thread on it (QEMU reports a panic pause on
    # its current vCPU, not on the one that panicked).
    name = "gdbcrash"
    assert undebug("run", "-d", "--name", name, "--smp", "1", "--append",
                   "threads=2 crash=panic crash_after=100", str(guest_image)).code == 0
    try:
        wait_for_console(name, "PANIC: planted panic")
        server = start_proxy(name)
        try:
            out = gdb(server, "bt").decode()
        finally:
            log = stop_proxy(server)
    finally:
        undebug("kill", name)
    assert "Unknown remote qXfer reply" not in out and "No stack." not in out, out
    # The README's crash path: worker_main -> handle_request -> crash_panic -> panic
    chain = re.findall(r"^#\d+ +(?:0x[0-9a-f]+ in )?(\w+) \(", out, re.M)
    assert "panic" in chain, out
    at = chain.index("crash_panic")
    assert chain[at - 1] == "panic" and chain[at + 1 : at + 3] == ["handle_request", "worker_main"], out
    assert "the guest crashed: guest panicked: PANIC: planted panic" in log


def listed_breakpoints(guest: str) -> list[dict]:
    result = undebug("break", guest, "--list", "--json")
    assert result.code == 0, result.stderr
    return result.json()["breakpoints"]


def test_default_listen_is_a_0600_unix_socket_in_the_session_dir(proxy: Proxy,
                                                                  runtime_dir: Path) -> None:
    server = start_proxy(proxy.guest, listen=None)
    path = runtime_dir / proxy.guest / "gdbserver.sock"
    try:
        assert server.where == str(path)
        mode = path.stat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, oct(mode)
        assert path.stat().st_uid == os.getuid()
        assert "main" in gdb_threads(gdb(server, "info threads").decode())
        second = undebug("gdbserver", proxy.guest)  # the same default: in use
        assert second.code == 2 and "another server is listening there" in second.stderr
    finally:
        stop_proxy(server)
    assert not path.exists()


def test_a_killed_gdbservers_breakpoints_are_deleted_and_the_clis_stay(proxy: Proxy) -> None:
    from undebug.elf import ElfFile

    elf = ElfFile(Path(__file__).resolve().parents[1] / "build" / "refguest.elf")
    symbol = elf.symbol("checksum_block")
    assert symbol is not None
    address = symbol.address
    assert undebug("break", proxy.guest, "handle_request").code == 0
    server = start_proxy(proxy.guest, listen=None)
    try:
        client = RawClient(server.where)
        client.ask(b"qSupported:swbreak+")
        assert client.ask(b"Z0,%x,1" % address) == b"OK"
        mine = [bp for bp in listed_breakpoints(proxy.guest) if bp["owner"] == "gdb"]
        assert mine == [{"id": mine[0]["id"], "address": address, "location": "checksum_block",
                         "hardware": False, "owner": "gdb", "when_register": None,
                         "when_value": None}], mine
        server.proc.kill()  # SIGKILL: the server cannot clean up; the supervisor does
        server.proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(bp["owner"] == "gdb" for bp in listed_breakpoints(proxy.guest)):
            assert time.monotonic() < deadline, listed_breakpoints(proxy.guest)
            time.sleep(0.1)
        left = listed_breakpoints(proxy.guest)
        assert [(bp["location"], bp["owner"]) for bp in left] == [("handle_request", "cli")]
        client.sock.close()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait()
        undebug("delete", proxy.guest, "--all")
        undebug("cont", proxy.guest)  # the attach stopped it


# ---- the server's side of the wire (a socket pair stands in for gdb's connection) ----------

@pytest.fixture
def wire() -> Iterator[tuple[GdbConnection, socket.socket]]:
    server, client = socket.socketpair()
    conn = GdbConnection(server)
    client.settimeout(2)
    yield conn, client
    conn.close()
    client.close()


def _receive(conn: GdbConnection, reads: int = 50) -> bytes | None:
    """The next packet, reading at most ``reads`` times (each ``recv`` takes 64 KiB)."""
    for _ in range(reads):
        if (packet := conn.receive(0.05)) is not None:
            return packet
    return None


def test_server_acks_packets_asks_again_for_corrupt_ones_and_resends_on_nak(
        wire: tuple[GdbConnection, socket.socket]) -> None:
    conn, client = wire
    client.sendall(frame(b"qC")[:-2] + b"00" + frame(b"qC"))
    assert _receive(conn) == b"qC" and conn.bad_packets == 1
    assert client.recv(16) == b"-+"
    conn.send(b"QC1")
    assert client.recv(16) == frame(b"QC1")
    client.sendall(b"-")
    assert _receive(conn, reads=2) is None
    assert client.recv(16) == frame(b"QC1")  # sent again


def test_server_in_no_ack_mode_answers_a_corrupt_packet_with_an_error(
        wire: tuple[GdbConnection, socket.socket]) -> None:
    conn, client = wire
    conn.no_ack = True
    client.sendall(b"$g#00" + frame(b"g"))
    with pytest.raises(BadPacket):
        _receive(conn)
    assert _receive(conn) == b"g"
    client.setblocking(False)
    with pytest.raises(BlockingIOError):  # no acks, no naks
        client.recv(16)


def test_server_sees_an_interrupt_between_packets_not_inside_one(
        wire: tuple[GdbConnection, socket.socket]) -> None:
    conn, client = wire
    client.sendall(frame(b"X0,1:\x03") + b"\x03")
    assert _receive(conn) == b"X0,1:\x03"
    assert conn.take_interrupt(0.5) and not conn.take_interrupt(0.05)


def test_server_skips_an_oversized_packet_to_its_end_and_takes_none_of_it_as_control(
        wire: tuple[GdbConnection, socket.socket]) -> None:
    conn, client = wire
    conn.send(b"OK")
    assert client.recv(16) == frame(b"OK")
    sender = threading.Thread(target=client.sendall, args=(b"$X0,0:" + b"a" * MAX_PACKET,))
    sender.start()  # more than the socket buffers: the server must read while it is sent
    while sender.is_alive():
        assert conn.receive(0.05) is None
    assert _receive(conn, reads=8) is None  # what the socket still buffers
    assert conn.bad_packets == 1  # dropped, not buffered without bound
    client.sendall(b"\x03-\x03#00" + frame(b"g"))  # its tail: binary data, not Ctrl-C or a nak
    assert _receive(conn) == b"g"
    assert not conn.take_interrupt(0.05)
    assert client.recv(16) == b"+"  # the ack for g, and no resent OK
