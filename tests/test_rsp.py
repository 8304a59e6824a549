"""The RSP client: framing and routing against a scripted peer, then against real QEMU."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from undebug.gdb.packets import (
    MAX_PACKET,
    BreakpointType,
    RspDisconnected,
    RspError,
    RspException,
    RspTimeout,
    StopReply,
    ThreadId,
    decode,
    frame,
)
from undebug.gdb.registers import (
    decode_register,
    decode_registers,
    encode_register,
    encode_registers,
    registers_size,
)
from undebug.gdb.rsp import RspClient
from undebug.gdb.tdesc import Register, parse_target_xml

DATA = Path(__file__).parent / "data" / "rsp"


def pkt(payload: bytes) -> bytes:
    """A correctly framed packet, written out here independently of packets.frame()."""
    return b"$%b#%02x" % (payload, sum(payload) % 256)


def acked(payload: bytes) -> bytes:
    """What QEMU 7.2 sends: '+' for the request, then the reply packet."""
    return b"+" + pkt(payload)


# A scripted peer standing in for QEMU where the behaviour cannot be produced on demand
# (bad checksums, RLE, escapes, a stub dying mid-command). It reads the client's packets
# and, for each, checks it equals the next expected request and sends the canned bytes.
# A step (None, bytes) pushes bytes unasked; a reply of None closes the connection.
Step = tuple[bytes | None, bytes | None]


class ScriptedStub:
    def __init__(self, script: list[Step]) -> None:
        self.script = list(script)
        self.received = bytearray()  # everything the client sent, acks included
        self.errors: list[str] = []
        self.server, self.client_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _next_request(self, buf: bytearray) -> bytes | None:
        while True:
            m = re.search(rb"\$([^#]*)#..|\x03", buf)
            if m:
                request = bytes(m.group(1) if m.group(0) != b"\x03" else b"\x03")
                del buf[: m.end()]  # after copying: a match on a bytearray is a live view
                return request
            data = self.server.recv(65536)
            if not data:
                return None
            self.received += data
            buf += data

    def _run(self) -> None:
        buf = bytearray()
        for expected, reply in self.script:
            if expected is not None:
                got = self._next_request(buf)
                if got != expected:
                    self.errors.append(f"expected {expected!r}, got {got!r}")
                    break
            if reply is None:
                self.server.close()
                return
            self.server.sendall(reply)
        with contextlib.suppress(OSError):  # keep reading until the client closes
            while data := self.server.recv(65536):
                self.received += data

    def finish(self) -> None:
        self.thread.join(timeout=5)
        assert not self.thread.is_alive(), "scripted stub did not finish"
        assert self.errors == []


@contextlib.contextmanager
def scripted(script: list[Step], timeout: float = 5.0) -> Iterator[tuple[RspClient, ScriptedStub]]:
    stub = ScriptedStub(script)
    client = RspClient(stub.client_sock, timeout=timeout)
    try:
        yield client, stub
    finally:
        client.close()
    stub.finish()


def test_frame_escapes_and_checksums() -> None:
    assert frame(b"m0,4") == b"$m0,4#fd"
    assert frame(b"a}b#c$d*") == b"$a}]b}\x03c}\x04d}\n#" + b"%02x" % (
        sum(b"a}]b}\x03c}\x04d}\n") % 256
    )


def test_decode_expands_rle_and_unescapes() -> None:
    assert decode(b"0* ") == b"0000"
    assert decode(b"x*!") == b"xxxxx"
    assert decode(b"}]}\x03}\x04}\n") == bytes([0x7D, 0x23, 0x24, 0x2A])


def test_stop_reply_and_thread_id_parsing() -> None:
    t = StopReply.parse(b"T05thread:p01.02;watch:1000;")
    assert (t.kind, t.signal, t.thread, t.info["watch"]) == ("signal", 5, ThreadId("p01.02", 1, 2), "1000")
    assert StopReply.parse(b"S02") == StopReply("signal", 2, None, b"S02")
    w = StopReply.parse(b"W01;process:1")
    assert (w.kind, w.signal, w.exit_status, w.info) == ("exited", None, 1, {"process": "1"})
    assert StopReply.parse(b"X09").kind == "terminated"
    assert ThreadId.parse("p1.-1").tid == -1 and ThreadId.parse("0a") == ThreadId("0a", None, 10)
    assert ThreadId.parse("p1").tid == -1 and ThreadId.parse("0").tid == 0
    for malformed in ("-5", "p1.-2", "pzz.1", "", "p.1"):
        with pytest.raises(RspException, match="malformed thread id"):
            ThreadId.parse(malformed)


def test_ack_mode_then_no_ack_mode_when_the_stub_offers_it() -> None:
    script: list[Step] = [
        (b"qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+",
         acked(b"PacketSize=200;QStartNoAckMode+;multiprocess+")),
        (b"QStartNoAckMode", acked(b"OK")),
        (b"?", pkt(b"T05thread:p01.01;")),  # no '+' from the stub any more
    ]
    with scripted(script) as (client, stub):
        client.handshake()
        assert client.no_ack and client.packet_size == 0x200
        assert client.features["multiprocess"] is True
        assert client.stop_reason().thread == ThreadId("p01.01", 1, 1)
    sent = bytes(stub.received)
    assert sent.endswith(frame(b"QStartNoAckMode") + b"+" + frame(b"?"))  # no ack after '?'


def test_bad_checksum_is_nakked_counted_and_the_retransmission_used() -> None:
    with scripted([(b"g", b"+$1234#00" + pkt(b"1234"))]) as (client, stub):
        assert client.command("g") == b"1234"
        assert client.bad_checksums == 1
    assert stub.received == frame(b"g") + b"-+"


def test_escaped_binary_bytes_both_ways() -> None:
    binary = bytes([0x7D, 0x23, 0x24, 0x2A, 0x41])
    script: list[Step] = [
        (b"X0,5:}]}\x03}\x04}\nA", acked(b"OK")),
        (b"qXfer:features:read:blob:0,ff8", acked(b"l}]}\x03}\x04}\nA")),
    ]
    with scripted(script) as (client, _):
        assert client.command(b"X0,5:" + binary) == b"OK"
        assert client.read_xfer("features", "blob") == binary


TARGET_XML = (  # like QEMU's: xi:include without an xmlns:xi declaration
    b'<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target>'
    b'<architecture>i386:x86-64</architecture><xi:include href="core.xml"/></target>'
)
CORE_XML = (
    b'<?xml version="1.0"?><feature name="org.gnu.gdb.i386.core">'
    b'<reg name="rax" bitsize="64" type="int64" regnum="0"/><reg name="rbx" bitsize="64"/>'
    b'<reg name="eflags" bitsize="32" type="i386_eflags"/>'
    b'<reg name="cs" bitsize="32" type="int32" group="segment"/></feature>'
)


def test_target_xml_include_and_rle_g_reply_decode_to_registers() -> None:
    g_reply = b"0*," + b"8877665544332211" + b"xxxxx* " + b"00f0*!"  # rax=0, eflags 'xx'
    script: list[Step] = [
        (b"qXfer:features:read:target.xml:0,ff8", acked(b"l" + TARGET_XML)),
        (b"qXfer:features:read:core.xml:0,ff8", acked(b"l" + CORE_XML)),
        (b"g", acked(g_reply)),
    ]
    with scripted(script) as (client, _):
        tdesc = client.target_description()
        assert tdesc.architecture == "i386:x86-64"
        assert [(r.name, r.regnum, r.offset) for r in tdesc.registers] == [
            ("rax", 0, 0), ("rbx", 1, 8), ("eflags", 2, 16), ("cs", 3, 20)]
        assert tdesc.find("cs").group == "segment"
        assert client.registers() == {"rax": 0, "rbx": 0x1122334455667788, "cs": 0xF000}


def test_error_reply_raises_rsp_error_with_command_and_code() -> None:
    with scripted([(b"m0,801", acked(b"E22"))]) as (client, _), pytest.raises(RspError) as e:
        client.command("m0,801")
    assert (e.value.code, e.value.command) == (0x22, b"m0,801")


def test_reads_are_split_into_chunks_qemu_accepts() -> None:
    script: list[Step] = [
        (b"m1000,800", acked(b"aa" * 0x800)),
        (b"m1800,800", acked(b"bb" * 0x800)),
        (b"m2000,10", acked(b"cc" * 0x10)),
    ]
    with scripted(script) as (client, _):
        assert client.read_memory(0x1000, 0x1010) == b"\xaa" * 0x800 + b"\xbb" * 0x800 + b"\xcc" * 16


def test_unsolicited_stop_reply_goes_to_the_stop_queue_not_the_command() -> None:
    seen: list[StopReply] = []
    script: list[Step] = [
        (b"m0,2", acked(b"0102")),
        (None, pkt(b"T02thread:p01.01;")),  # the VM stopped by itself (QMP stop, panic)
        (b"m2,2", b"+" + pkt(b"S05") + pkt(b"0304")),  # even between '+' and the reply
    ]
    with scripted(script, timeout=2.0) as (client, _):
        client.on_stop = seen.append
        assert client.read_memory(0, 2) == b"\x01\x02"
        assert client.wait_stop(2).raw == b"T02thread:p01.01;"
        assert client.read_memory(2, 2) == b"\x03\x04"
        assert [s.raw for s in client.drain_stops()] == [b"S05"]
    assert [s.signal for s in seen] == [2, 5]


def test_commands_are_refused_while_running_and_interrupt_sends_0x03() -> None:
    script: list[Step] = [(b"c", b"+"), (b"\x03", pkt(b"T02thread:p01.01;"))]
    with scripted(script) as (client, _):
        client.cont()
        assert client.is_running
        with pytest.raises(RspException, match="running"):
            client.read_memory(0, 4)
        assert client.interrupt().signal == 2
        assert not client.is_running


def test_monitor_collects_console_output_until_ok() -> None:
    script: list[Step] = [
        (b"qRcmd," + b"info cpus".hex().encode(),
         acked(b"O" + b"* CPU #0\n".hex().encode()) + pkt(b"O" + b"done\n".hex().encode())
         + pkt(b"OK")),
    ]
    with scripted(script) as (client, _):
        assert client.monitor("info cpus") == "* CPU #0\ndone\n"


def test_stub_closing_mid_command_raises_disconnected_promptly() -> None:
    with scripted([(b"g", None)], timeout=10.0) as (client, _):
        start = time.monotonic()
        with pytest.raises(RspDisconnected, match=r"closed the connection \(did QEMU exit"):
            client.command("g")
        assert time.monotonic() - start < 1.0
        with pytest.raises(RspDisconnected):
            client.read_memory(0, 1)


def test_stub_gone_before_a_send_says_so() -> None:
    """QEMU killed just before a command: the send fails with EPIPE (a fresh-clone CI run
    hit this with ``kill -9``, and the error read "sending ... failed" with no word of the
    gdbstub being gone); it says so in the same words as the EOF path, then and after.
    The peer stops reading but keeps its sending side open, so the reader sees no EOF
    first and only the send path can answer."""
    server, client_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    client = RspClient(client_sock, timeout=5)
    server.shutdown(socket.SHUT_RD)
    try:
        with pytest.raises(RspDisconnected, match=r"gdbstub lost while sending "
                           r"\(did QEMU exit\?\): .*Broken pipe"):
            client.command("g")
        with pytest.raises(RspDisconnected, match=r"did QEMU exit"):
            client.read_memory(0, 1)
    finally:
        client.close()
        server.close()


def test_no_reply_raises_timeout() -> None:
    with scripted([(b"g", b"+")]) as (client, _):
        start = time.monotonic()
        with pytest.raises(RspTimeout):
            client.command("g", timeout=0.2)
        assert 0.15 < time.monotonic() - start < 1.0


def test_endless_packet_is_an_error_not_unbounded_memory() -> None:
    endless: list[Step] = [(None, b"$" + b"a" * (MAX_PACKET + 100))]
    with scripted(endless) as (client, _), pytest.raises(RspDisconnected, match="without '#'"):
        client.wait_stop(5)


class HostileStub:
    """A stub that misbehaves on purpose (a real QEMU does not): ``answer`` maps each
    request to its reply packet body. It stops after ``limit`` requests, so a client
    without a bound ends with a disconnect instead of hanging the test."""

    def __init__(self, answer: Callable[[bytes], bytes], limit: int = 2000,
                 no_ack: bool = False) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.limit = limit
        self.no_ack = no_ack
        self.server, client_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.client = RspClient(client_sock, timeout=5)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        buf = bytearray()
        with contextlib.suppress(OSError):
            while len(self.requests) < self.limit:
                m = re.search(rb"\$([^#]*)#..", buf)
                if m is None:
                    data = self.server.recv(65536)
                    if not data:
                        return
                    buf += data
                    continue
                request = bytes(m.group(1))
                del buf[: m.end()]
                self.requests.append(request)
                reply = self.answer(request)
                self.server.sendall(reply if reply.startswith(b"$") else
                                   (b"" if self.no_ack else b"+") + pkt(reply))
        self.server.close()

    def close(self) -> None:
        self.client.close()
        self.server.close()
        self.thread.join(timeout=5)


@pytest.mark.parametrize("shape", ["wide", "deep"])
def test_a_target_xml_that_includes_ever_new_files_is_refused_after_a_bound(shape: str) -> None:
    from undebug.gdb.tdesc import MAX_DEPTH, MAX_FILES

    def answer(request: bytes) -> bytes:  # wide: 40 files in one; deep: a chain of new ones
        name = request.decode().split(":")[3]
        fan_out = (40 if name == "target.xml" else 0) if shape == "wide" else 1
        return b"l<target>%b</target>" % b"".join(
            b'<xi:include href="%b.%d"/>' % (name.encode(), i) for i in range(fan_out))

    stub = HostileStub(answer)
    try:
        message, fetched = (f"more than {MAX_FILES} files", MAX_FILES) if shape == "wide" \
            else (f"nested more than {MAX_DEPTH} deep", MAX_DEPTH + 1)
        with pytest.raises(RspException, match=message):
            stub.client.target_description()
        assert len(stub.requests) == fetched
        with pytest.raises(RspException, match=message):
            stub.client.target_xml_files()  # what the supervisor hands to gdbserver
    finally:
        stub.close()


def test_a_register_wider_than_any_cpu_has_is_refused() -> None:
    from undebug.gdb.tdesc import parse_target_xml

    xml = b'<target><feature name="f"><reg name="r0" bitsize="999999999"/></feature></target>'
    with pytest.raises(RspException, match="999999999 bits"):
        parse_target_xml(lambda annex: xml)


@pytest.mark.parametrize("repeated", [b"m01", b"m"], ids=["same-thread", "no-thread"])
def test_a_thread_list_that_makes_no_progress_is_an_error_not_a_loop(repeated: bytes) -> None:
    stub = HostileStub(lambda request: b"m01" if request == b"qfThreadInfo" else repeated)
    try:
        with pytest.raises(RspException, match="the stub repeats its list"):
            stub.client.threads()
        assert len(stub.requests) <= 2
    finally:
        stub.close()


def test_a_bad_checksum_in_no_ack_mode_fails_the_command_and_the_next_one_works() -> None:
    replies = {b"g": b"$1234#00", b"qC": b"QC01"}  # the first: a corrupt packet
    stub = HostileStub(lambda request: replies.get(request, b""), no_ack=True)
    try:
        stub.client.no_ack = True
        with pytest.raises(RspException, match="bad checksum"):
            stub.client.command("g")
        assert stub.client.bad_checksums == 1
        assert stub.client.command("qC") == b"QC01"
    finally:
        stub.close()


def test_replays_recorded_qemu_7_2_attach() -> None:
    """A transcript recorded from QEMU 7.2 (x86_64, -S): ack mode, real target.xml."""
    lines = (DATA / "qemu72_x86_64_attach.jsonl").read_text().splitlines()
    script: list[Step] = [
        (e["request"].encode("latin-1"), e["reply"].encode("latin-1")) for e in map(json.loads, lines)
    ]
    with scripted(script) as (client, _):
        client.handshake()
        assert not client.no_ack and client.packet_size == 4096
        assert client.stop_reason().signal == 5
        regs = client.registers()
        assert (regs["rip"], regs["cs"], regs["cr0"], regs["eflags"]) == (0xFFF0, 0xF000, 0x60000010, 2)
        assert {"cr3", "efer", "fs_base", "k_gs_base", "xmm15", "mxcsr"} <= regs.keys()
        assert client.read_memory(0xFFFF0, 16)[:1] == b"\xea"  # the reset vector's far jmp
        assert client.threads() == [ThreadId("p01.01", 1, 1)]


# -- the register codec, on QEMU 7.2's own x86-64 target description (recorded above) ------

def _recorded() -> dict[str, bytes]:
    """Each recorded request's reply body (the '+' and '#cc' stripped, RLE undone)."""
    out: dict[str, bytes] = {}
    for entry in map(json.loads, (DATA / "qemu72_x86_64_attach.jsonl").read_text().splitlines()):
        reply = entry["reply"].encode("latin-1")
        out[entry["request"]] = decode(reply[reply.index(b"$") + 1 : reply.rindex(b"#")])
    return out


def _qemu72_layout() -> tuple[Register, ...]:
    replies = _recorded()

    def annex(name: str) -> bytes:  # the qXfer chunks of one file, joined
        return b"".join(body[1:] for request, body in replies.items()
                        if request.startswith(f"qXfer:features:read:{name}:"))

    return parse_target_xml(annex).registers


def test_the_recorded_g_reply_decodes_to_the_reset_state_and_encodes_back_the_same() -> None:
    layout = _qemu72_layout()
    g = _recorded()["g"].decode()
    assert len(g) == 2 * registers_size(layout)  # QEMU sends every register it describes
    values = decode_registers(g, layout, whole=True)
    assert len(values) == len(layout) == 66
    # the x86 reset state (Intel SDM vol. 3, 9.1.1: EIP fff0, CS selector f000, CR0 60000010)
    assert (values["rip"], values["cs"], values["eflags"], values["cr0"]) == (
        0xFFF0, 0xF000, 2, 0x60000010)
    assert values["mxcsr"] == 0x1F80  # SDM vol. 1, 10.2.3.1: MXCSR's power-up value
    assert encode_registers(values, layout) == g


def test_register_encoding_is_little_endian_truncated_to_the_width_and_xx_when_unavailable() -> None:
    layout = {reg.name: reg for reg in _qemu72_layout()}
    rip, eflags, xmm0 = layout["rip"], layout["eflags"], layout["xmm0"]
    assert (rip.size, eflags.size, xmm0.size) == (8, 4, 16)
    assert encode_register(0x1122334455667788, rip) == "8877665544332211"
    assert encode_register((1 << 40) | 0x246, eflags) == "46020000"
    assert encode_register(None, xmm0) == "xx" * 16
    assert decode_register("8877665544332211", rip) == 0x1122334455667788
    assert decode_register("0100000000000000000000000000ff00", xmm0) == 0xFF << 112 | 1
    assert decode_register("xxxxxxxx", eflags) is None


def test_a_g_packet_sets_what_it_carries_and_leaves_out_the_unavailable() -> None:
    layout = _qemu72_layout()
    g = encode_registers({"rax": 0x5EED, "rip": 0x100000}, layout)
    assert len(g) == 2 * registers_size(layout)
    values = decode_registers(g, layout, whole=True)
    assert {name: v for name, v in values.items() if v is not None} == {"rax": 0x5EED,
                                                                         "rip": 0x100000}
    with pytest.raises(RspException, match="hex digits"):
        decode_registers(g[:-2], layout, whole=True)
    short = decode_registers(g[: 2 * 8], layout)  # a stub may send fewer than it describes
    assert short["rax"] == 0x5EED and short["rbx"] is None


@pytest.mark.parametrize("text", ["88776655443322", "887766554433221100", "zz77665544332211",
                                  " 877665544332211"])
def test_a_register_value_of_the_wrong_width_or_not_hex_is_an_error(text: str) -> None:
    rip = next(reg for reg in _qemu72_layout() if reg.name == "rip")
    with pytest.raises(RspException, match="register rip"):
        decode_register(text, rip)


def test_a_g_reply_that_is_not_hex_fails_as_a_stub_error_not_a_crash() -> None:
    xml = [(e["request"].encode(), e["reply"].encode("latin-1")) for e in map(
        json.loads, (DATA / "qemu72_x86_64_attach.jsonl").read_text().splitlines())
        if e["request"].startswith("qXfer:features")]
    bad = _recorded()["g"].replace(b"b10f06", b"b1?f06")
    with scripted([*xml, (b"g", acked(bad))]) as (client, _), \
            pytest.raises(RspException, match="register rdx"):
        client.registers()


# -- live: real QEMU 7.2, TCG only -----------------------------------------------------------



class Qemu:
    def __init__(self, smp: int) -> None:
        self.dir = tempfile.mkdtemp(prefix="rsp-")  # short: unix socket paths max 107 bytes
        self.gdb, self.qmp = f"{self.dir}/gdb.sock", f"{self.dir}/qmp.sock"
        qemu = shutil.which("qemu-system-x86_64")
        assert qemu is not None, "qemu-system-x86_64 is not installed (make setup installs it)"
        self.proc = subprocess.Popen([
            qemu, "-M", "pc", "-accel", "tcg", "-m", "64", "-smp", str(smp), "-display", "none",
            "-vga", "none", "-nodefaults", "-no-user-config", "-S",
            "-chardev", f"socket,id=gdb0,path={self.gdb},server=on,wait=off",
            "-gdb", "chardev:gdb0", "-qmp", f"unix:{self.qmp},server=on,wait=off",
        ], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not (os.path.exists(self.gdb) and os.path.exists(self.qmp)):
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            assert time.monotonic() < deadline, "QEMU did not create its sockets"
            time.sleep(0.01)

    def qmp_commands(self, *commands: str) -> None:
        """Plain socket + JSON: greeting, qmp_capabilities, then each command."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(self.qmp)
            f = s.makefile("rw")
            json.loads(f.readline())  # greeting
            for cmd in ("qmp_capabilities", *commands):
                f.write(json.dumps({"execute": cmd}) + "\n")
                f.flush()
                while "return" not in (reply := json.loads(f.readline())):
                    assert "error" not in reply, reply  # events may come first

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL to this PID only; a no-op once it has been reaped
        self.proc.wait(timeout=5)
        if self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def qemu(request: pytest.FixtureRequest) -> Iterator[Qemu]:
    vm = Qemu(getattr(request, "param", 1))
    request.addfinalizer(vm.kill)
    yield vm


def test_live_attach_sees_the_reset_state(qemu: Qemu) -> None:
    with RspClient.connect(qemu.gdb, timeout=5.0) as client:
        assert client.packet_size == 4096 and client.features["qXfer:features:read"] is True
        assert client.no_ack == (client.features.get("QStartNoAckMode") is True)
        stop = client.stop_reason()
        assert (stop.kind, stop.signal, stop.thread) == ("signal", 5, ThreadId("p01.01", 1, 1))
        regs = client.registers()
        assert (regs["rip"], regs["cs"], regs["eflags"], regs["cr0"]) == (0xFFF0, 0xF000, 2, 0x60000010)
        assert regs["rsp"] == regs["cr3"] == regs["efer"] == 0
        assert client.read_register("rip") == 0xFFF0
        # cs.base is not in QEMU 7.2's target.xml (commented out): ask the monitor instead
        assert re.search(r"CS =f000 ffff0000", client.monitor("info registers"))
        reset = client.read_memory(0xFFFF0, 16)
        assert reset[0] == 0xEA  # jmp far f000:e05b
        xp = client.monitor("xp /16xb 0xffff0")
        assert bytes(int(b, 16) for b in re.findall(r"0x([0-9a-f]{2})\b", xp.split(":", 1)[1])) == reset


def test_live_register_write_is_what_qemu_then_reports(qemu: Qemu) -> None:
    with RspClient.connect(qemu.gdb) as client:
        client.write_register("rbx", 0x1122334455667788)
        client.write_register("rcx", (1 << 64) | 0xC0FFEE)  # truncated to its 64 bits
        # outside long mode QEMU keeps the low 32 bits of a written register
        # (x86_cpu_gdb_write_register, target/i386/gdbstub.c), as the monitor shows them
        assert "EBX=55667788 ECX=00c0ffee" in client.monitor("info registers")
        regs = client.registers()
        assert (regs["rbx"], regs["rcx"]) == (0x55667788, 0xC0FFEE)
        assert client.read_register("rbx") == 0x55667788
        with pytest.raises(KeyError, match="no register 'rbz'"):
            client.write_register("rbz", 1)


def test_live_large_read_is_chunked_and_matches_its_pieces(qemu: Qemu) -> None:
    with RspClient.connect(qemu.gdb) as client:
        with pytest.raises(RspError) as e:
            client.command("mf0000,801")
        assert e.value.code == 0x22  # QEMU's limit, the reason reads are chunked
        whole = client.read_memory(0xF0000, 0x10000)
        pieces = b"".join(client.read_memory(0xF0000 + o, 0x1000) for o in range(0, 0x10000, 0x1000))
        assert len(whole) == 0x10000 and whole == pieces and whole[-16:][0] == 0xEA


@pytest.mark.parametrize("qemu", [2], indirect=True)
def test_live_two_vcpus_are_two_threads_each_selectable(qemu: Qemu) -> None:
    with RspClient.connect(qemu.gdb) as client:
        threads = client.threads()
        assert [(t.pid, t.tid) for t in threads] == [(1, 1), (1, 2)]
        assert [client.registers(t)["rip"] for t in threads] == [0xFFF0, 0xFFF0]
        client.step(threads[0])  # the BSP takes the reset jmp; the AP waits for a SIPI
        client.select_thread(threads[1], "g")
        assert client.read_register("rip") == 0xFFF0
        assert [client.registers(t)["rip"] for t in threads] == [0xE05B, 0xFFF0]


def test_live_breakpoint_cont_and_interrupt(qemu: Qemu) -> None:
    with RspClient.connect(qemu.gdb) as client:
        client.add_breakpoint(0xFE05B, BreakpointType.HARDWARE)  # target of the reset jmp
        client.cont()
        stop = client.wait_stop(5)
        assert stop.signal == 5 and client.registers()["rip"] == 0xE05B
        client.remove_breakpoint(0xFE05B, BreakpointType.HARDWARE)
        assert client.step().signal == 5
        client.cont()
        time.sleep(0.05)
        assert client.interrupt(timeout=5).signal == 2


def test_live_qmp_stop_sends_an_unsolicited_stop_reply(qemu: Qemu) -> None:
    seen: list[StopReply] = []
    with RspClient.connect(qemu.gdb, on_stop=seen.append) as client:
        client.stop_reason()
        seen.clear()  # on_stop sees solicited stop replies too
        qemu.qmp_commands("cont", "stop")  # the client sent no 'c'
        stop = client.wait_stop(5)
        assert (stop.signal, stop.thread) == (2, ThreadId("p01.01", 1, 1))
        assert seen == [stop]
        # and the client is still in sync (the BIOS ran, so compare two paths, not values)
        assert client.registers()["rip"] == client.read_register("rip")


def test_live_killing_qemu_mid_call_raises_disconnected(qemu: Qemu) -> None:
    with RspClient.connect(qemu.gdb) as client:
        client.cont()
        killer = threading.Timer(0.2, qemu.kill)
        killer.start()
        start = time.monotonic()
        with pytest.raises(RspDisconnected):
            client.wait_stop(10)
        assert time.monotonic() - start < 2.0
        killer.join()
        with pytest.raises(RspDisconnected):
            client.read_memory(0, 1)


# ---- layers ------------------------------------------------------------------------------

def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, also lazily inside functions."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


PACKAGE = Path(__file__).resolve().parents[1] / "undebug"


def test_the_gdb_package_is_protocol_code_only() -> None:
    for path in sorted((PACKAGE / "gdb").glob("*.py")):
        bad = {m for m in _imports(path) if m.split(".")[:2] in (
            ["undebug", "session"], ["undebug", "os"], ["undebug", "target"],
            ["undebug", "gdbserver"])}
        assert not bad, (path.name, bad)


def test_the_gdbserver_knows_no_os_and_only_its_live_backend_knows_the_supervisor() -> None:
    for path in sorted((PACKAGE / "gdbserver").glob("*.py")):
        layers = {".".join(m.split(".")[:2]) for m in _imports(path)}
        assert "undebug.os" not in layers, path.name
        if path.name != "live.py":
            assert "undebug.session" not in layers, path.name
