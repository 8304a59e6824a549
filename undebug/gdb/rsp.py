"""A GDB Remote Serial Protocol client for the one connection QEMU's gdbstub allows.

A reader thread splits the byte stream into packets (``PacketSplitter``). Stop replies
(``S``, ``T``, ``W``, ``X``) go to a stop queue and to ``on_stop``, because QEMU sends one
unsolicited whenever the VM stops (QMP ``stop``, a pvpanic pause, a breakpoint). Every
other packet answers the pending command. Commands are synchronous, serialised by one
lock, and bounded by a timeout.

QEMU 7.2 consumes any byte that arrives while the VM runs and only stops the VM, so a
command sent then gets no reply: stop the VM first. The client refuses commands while it
knows the VM runs (after ``cont``/``vcont``/``step`` until their stop reply).

This module holds only the connection; the wire format and its values live in
``undebug.gdb.packets``, the register layout in ``undebug.gdb.tdesc`` and the register
values' encoding in ``undebug.gdb.registers``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Literal, TypeVar

from undebug.gdb.packets import (
    MAX_PACKET,
    QEMU_MAX_READ,
    BreakpointType,
    Control,
    Dropped,
    Event,
    Packet,
    PacketSplitter,
    RspDisconnected,
    RspError,
    RspException,
    RspTimeout,
    StopReply,
    ThreadId,
    decode,
    frame,
    parse_features,
)
from undebug.gdb.registers import decode_register, decode_registers, encode_register
from undebug.gdb.tdesc import TargetDescription, fetch_target_xml, parse_target_xml

__all__ = ["RspClient", "RspException"]  # RspException: callers catch it next to the client

log = logging.getLogger(__name__)

Address = str | os.PathLike[str] | tuple[str, int]
OnStop = Callable[[StopReply], None] | None
OnClose = Callable[[str], None] | None
_T = TypeVar("_T")

_STOP_QUEUE_LEN = 64  # a supervisor that only uses on_stop never drains the queue
_CORRUPT = b"\x00corrupt"  # stands for a reply that arrived with a bad checksum (no-ack)
MAX_THREADS = 65536  # vCPUs: QEMU takes at most 4096
_ERROR = re.compile(rb"E[0-9a-fA-F]{2}")
_HEX = re.compile(rb"[0-9a-fA-F]+")


def _unhex(reply: bytes, command: bytes) -> bytes:
    try:
        return bytes.fromhex(reply.decode("ascii"))
    except ValueError as e:
        raise RspException(f"malformed hex reply to {command[:60]!r}: {reply[:60]!r}") from e


def _is_console(packet: bytes) -> bool:
    return packet[:1] == b"O" and _HEX.fullmatch(packet[1:]) is not None


class RspClient:
    """The one connection to a gdbstub. Thread-safe; every wait has a timeout."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0, on_stop: OnStop = None) -> None:
        """Wrap a connected socket and start the reader; ``connect`` also handshakes."""
        self.timeout = timeout
        self.on_stop = on_stop  # runs on the reader thread: keep it short, never call the client
        self.on_close: OnClose = None  # once, with the reason, when the connection goes
        self.features: dict[str, str | bool] = {}
        self.packet_size = 4096
        self.no_ack = False
        self.bad_checksums = 0  # corrupt packets received
        self.naks = 0  # '-' received for our packets
        self._sock = sock
        self._lock = threading.RLock()  # one command/reply (or compound) at a time
        self._send_lock = threading.Lock()  # the reader's acks interleave with commands
        self._cond = threading.Condition()
        self._replies: deque[bytes] = deque()
        self._stops: deque[StopReply] = deque(maxlen=_STOP_QUEUE_LEN)
        self._dead: str | None = None
        self._running = False
        self._last_sent = b""
        self._tdesc: TargetDescription | None = None
        self._reader = threading.Thread(target=self._read_loop, name="rsp-reader", daemon=True)
        self._reader.start()

    @classmethod
    def connect(cls, address: Address, timeout: float = 5.0, on_stop: OnStop = None) -> RspClient:
        """Connect to a unix socket path or a (host, port), then negotiate features."""
        try:
            if isinstance(address, tuple):
                sock = socket.create_connection(address, timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            else:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect(os.fspath(address))
                except OSError:
                    sock.close()
                    raise
        except OSError as e:
            raise RspDisconnected(
                f"cannot connect to the gdbstub at {address!r}: {e}; is QEMU running with -gdb?"
            ) from e
        sock.settimeout(None)
        client = cls(sock, timeout=timeout, on_stop=on_stop)
        try:
            client.handshake()
        except BaseException:
            client.close()
            raise
        return client

    def handshake(self) -> None:
        """qSupported, then QStartNoAckMode if offered (QEMU 7.2 does not offer it)."""
        reply = self.command(b"qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+")
        self.features = parse_features(reply)
        size = self.features.get("PacketSize")
        if isinstance(size, str):
            self.packet_size = max(64, int(size, 16))
        if self.features.get("QStartNoAckMode") is True and self.command(b"QStartNoAckMode"):
            self.no_ack = True  # the reader acked the OK before we got here, as required

    # -- plumbing ---------------------------------------------------------------------------

    def _read_loop(self) -> None:
        splitter = PacketSplitter()
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    raise RspDisconnected("the gdbstub closed the connection (did QEMU exit?)")
                for event in splitter.feed(data):
                    self._on_event(event)
        except RspDisconnected as e:
            reason = str(e)
        except OSError as e:
            reason = f"connection to the gdbstub lost (did QEMU exit?): {e}"
        except Exception as e:  # a bug here must not leave callers waiting for timeouts
            log.exception("gdbstub reader failed")
            reason = f"gdbstub reader failed: {e!r}"
        self._die(reason)

    def _on_event(self, event: Event) -> None:
        match event:
            case Packet():
                self._on_packet(event)
            case Control.NACK:
                self.naks += 1
                if not self.no_ack and self._last_sent and self.naks < 100:
                    self._sendall(self._last_sent)
            case Dropped(oversized=True):
                raise RspDisconnected(f"gdbstub sent over {MAX_PACKET} bytes without '#'")
            case Dropped():  # cut short by the next packet
                self.bad_checksums += 1
            case _:  # acks; a stub's 0x03 means nothing
                pass

    def _on_packet(self, packet: Packet) -> None:
        if packet.checksum_ok:
            if not self.no_ack:
                self._sendall(b"+")
        else:
            self.bad_checksums += 1
            if not self.no_ack:
                self._sendall(b"-")  # the stub retransmits
                return
            # No-ack mode: nobody retransmits. The pending command fails (a corrupt stop
            # reply is dropped: the next stop, or the command's timeout, follows).
            log.warning("dropping a packet with a bad checksum (no-ack mode): %r",
                        packet.body[:60])
            self._reply(_CORRUPT)
            return
        payload = decode(packet.body)
        if payload and payload[0] in b"STWX":
            try:
                stop = StopReply.parse(payload)
            except RspException:
                log.warning("dropping malformed stop reply %r", payload[:60])
                return
            with self._cond:
                self._running = False
                self._stops.append(stop)
                self._cond.notify_all()
            if self.on_stop is not None:
                try:
                    self.on_stop(stop)
                except Exception:
                    log.exception("on_stop callback failed for %r", stop.raw)
        else:
            self._reply(payload)

    def _reply(self, payload: bytes) -> None:
        with self._cond:
            self._replies.append(payload)
            self._cond.notify_all()

    def _die(self, reason: str) -> None:
        with self._cond:
            first = self._dead is None
            if first:
                self._dead = reason
            self._cond.notify_all()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        if first and self.on_close is not None:
            try:
                self.on_close(reason)
            except Exception:
                log.exception("on_close callback failed")

    def _sendall(self, data: bytes) -> None:
        with self._send_lock:
            if self._dead is not None:
                raise RspDisconnected(self._dead)
            try:
                self._sock.sendall(data)
            except OSError as e:
                reason = f"connection to the gdbstub lost while sending (did QEMU exit?): {e}"
                self._die(reason)
                raise RspDisconnected(reason) from e

    def _send(self, payload: bytes) -> None:
        packet = frame(payload)
        self._last_sent = packet
        self._sendall(packet)

    def _wait(self, queue: deque[_T], timeout: float | None, what: str) -> _T:
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with self._cond:
            while not queue:
                if self._dead is not None:
                    raise RspDisconnected(self._dead)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise RspTimeout(f"no {what} within {limit:.1f}s")
                self._cond.wait(remaining)
            return queue.popleft()

    def _check_ready(self, command: bytes) -> None:
        if self._dead is not None:
            raise RspDisconnected(self._dead)
        if self._running:
            raise RspException(
                f"cannot send {command[:30]!r}: the VM is running (QEMU would only stop it); "
                "call interrupt() or wait_stop() first"
            )

    def _exchange(self, payload: bytes, timeout: float | None = None,
                  console: list[bytes] | None = None, empty_ok: bool = True) -> bytes:
        with self._lock:
            self._check_ready(payload)
            with self._cond:
                self._replies.clear()  # a reply that came after its command timed out
            self._send(payload)
            while True:
                reply = self._wait(self._replies, timeout, f"reply to {payload[:60]!r}")
                if reply is _CORRUPT:
                    raise RspException(f"the reply to {payload[:60]!r} had a bad checksum "
                                       "(no-ack mode: it is not sent again)")
                if not _is_console(reply):
                    break
                if console is not None:
                    console.append(reply)
        if _ERROR.fullmatch(reply) or not (reply or empty_ok):
            raise RspError(payload, int(reply[1:], 16) if reply else None)
        return reply

    # -- commands ---------------------------------------------------------------------------

    def command(self, payload: bytes | str, timeout: float | None = None) -> bytes:
        """Send one packet and return its (decoded) reply; ``E nn`` raises RspError."""
        return self._exchange(payload.encode() if isinstance(payload, str) else payload, timeout)

    def _supported(self, payload: str) -> bytes:
        return self._exchange(payload.encode(), empty_ok=False)

    def read_memory(self, addr: int, size: int) -> bytes:
        """Read ``size`` bytes with ``m``, in chunks QEMU accepts (<= 2048, <= PacketSize/2)."""
        chunk = max(1, min(QEMU_MAX_READ, self.packet_size // 2))
        out = bytearray()
        with self._lock:
            while len(out) < size:
                cmd = f"m{addr + len(out):x},{min(chunk, size - len(out)):x}".encode()
                data = _unhex(self._exchange(cmd, empty_ok=False), cmd)
                out += data[: size - len(out)]
        return bytes(out)

    def read_physical(self, addr: int, size: int) -> bytes:
        """Read guest-physical memory: QEMU's ``Qqemu.PhyMemMode`` switches ``m`` to
        physical addresses; it is switched back even when the read fails."""
        with self._lock:
            self._supported("Qqemu.PhyMemMode:1")
            try:
                return self.read_memory(addr, size)
            finally:
                self._supported("Qqemu.PhyMemMode:0")

    def write_memory(self, addr: int, data: bytes) -> None:
        """Write with ``M`` (hex), in chunks that fit the stub's PacketSize."""
        chunk = max(1, (self.packet_size - 48) // 2)
        with self._lock:
            for off in range(0, len(data), chunk):
                piece = data[off : off + chunk]
                self._supported(f"M{addr + off:x},{len(piece):x}:{piece.hex()}")

    def target_xml_files(self) -> dict[str, bytes]:
        """target.xml and the files it includes, as the stub sends them (bounded)."""
        with self._lock:
            return fetch_target_xml(lambda annex: self.read_xfer("features", annex))

    def target_description(self) -> TargetDescription:
        """The register layout from qXfer target.xml (fetched once, then cached)."""
        with self._lock:
            if self._tdesc is None:
                files = self.target_xml_files()
                self._tdesc = parse_target_xml(files.__getitem__)
            return self._tdesc

    def read_xfer(self, obj: str, annex: str) -> bytes:
        """Read a whole ``qXfer:obj:read:annex`` object, chunk by chunk."""
        out = bytearray()
        length = max(64, self.packet_size - 8)
        with self._lock:
            while len(out) <= MAX_PACKET:
                cmd = f"qXfer:{obj}:read:{annex}:{len(out):x},{length:x}".encode()
                reply = self._exchange(cmd, empty_ok=False)
                if reply[:1] not in (b"m", b"l"):
                    raise RspException(f"malformed qXfer reply to {cmd!r}: {reply[:60]!r}")
                out += reply[1:]
                if reply[:1] == b"l" or len(reply) == 1:
                    return bytes(out)
        raise RspException(f"qXfer {obj} {annex} is larger than {MAX_PACKET} bytes")

    def select_thread(self, thread: ThreadId | str, op: Literal["g", "c"] = "g") -> None:
        """``Hg`` (thread for g/p/m) or ``Hc`` (thread for c/s)."""
        self._supported(f"H{op}{thread}")

    def _on_thread(self, thread: ThreadId | None, payload: str) -> bytes:
        """``payload`` for ``thread`` (``Hg`` first), or for the current g-thread."""
        with self._lock:
            if thread is not None:
                self.select_thread(thread, "g")
            return self._supported(payload)

    def registers(self, thread: ThreadId | None = None) -> dict[str, int]:
        """The available registers of ``thread`` (or the current g-thread), by name, from
        one ``g``."""
        layout = self.target_description().registers
        values = decode_registers(self._on_thread(thread, "g").decode("ascii", "replace"), layout)
        return {name: value for name, value in values.items() if value is not None}

    def read_register(self, name: str, thread: ThreadId | None = None) -> int:
        """One register by name, with ``p``; raises if the stub reports it unavailable."""
        reg = self.target_description().find(name)
        reply = self._on_thread(thread, f"p{reg.regnum:x}")
        value = decode_register(reply.decode("ascii", "replace"), reg)
        if value is None:
            raise RspException(f"register {name} is unavailable ({reply[:40]!r})")
        return value

    def write_register(self, name: str, value: int, thread: ThreadId | None = None) -> None:
        """Set one register by name, with ``P`` (truncated to its width); KeyError names
        the registers that exist."""
        reg = self.target_description().find(name)
        self._on_thread(thread, f"P{reg.regnum:x}={encode_register(value, reg)}")

    def threads(self) -> list[ThreadId]:
        """All threads (vCPUs in QEMU) from qfThreadInfo/qsThreadInfo. Each ``m`` reply
        must bring new threads: a stub that repeats itself (or sends none) is an error,
        not an endless loop."""
        out: dict[str, ThreadId] = {}
        with self._lock:
            reply = self._supported("qfThreadInfo")
            while reply[:1] == b"m":
                ids = [t for t in reply[1:].decode("ascii", "replace").split(",") if t]
                new = [t for t in ids if t not in out]
                if not new:
                    raise RspException(f"qsThreadInfo brought no new thread ({reply[:60]!r}): "
                                       "the stub repeats its list")
                out.update((t, ThreadId.parse(t)) for t in new)
                if len(out) > MAX_THREADS:
                    raise RspException(f"the stub lists more than {MAX_THREADS} threads")
                reply = self._supported("qsThreadInfo")
        return list(out.values())

    def current_thread(self) -> ThreadId:
        """The stub's current thread (``qC``)."""
        reply = self._supported("qC")
        return ThreadId.parse(reply.decode("ascii")[2:])

    def add_breakpoint(self, addr: int, type: BreakpointType = BreakpointType.SOFTWARE,
                       kind: int = 1) -> None:
        """``Z``: insert a breakpoint or watchpoint (``kind`` = length for watchpoints)."""
        self._supported(f"Z{int(type)},{addr:x},{kind:x}")

    def remove_breakpoint(self, addr: int, type: BreakpointType = BreakpointType.SOFTWARE,
                          kind: int = 1) -> None:
        """``z``: remove what ``add_breakpoint`` inserted."""
        self._supported(f"z{int(type)},{addr:x},{kind:x}")

    def monitor(self, command: str, timeout: float | None = None) -> str:
        """Run a QEMU monitor command (``qRcmd``); returns the ``O`` console output."""
        console: list[bytes] = []
        payload = b"qRcmd," + command.encode().hex().encode()
        reply = self._exchange(payload, timeout, console, empty_ok=False)
        text = b"".join(_unhex(o[1:], payload) for o in console)
        if reply != b"OK":
            text += _unhex(reply, payload)
        return text.decode("utf-8", "replace")

    # -- running and stopping ---------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """True between a resume we sent and its stop reply (QMP ``cont`` is invisible)."""
        return self._running

    def stop_reason(self, timeout: float | None = None) -> StopReply:
        """``?``: why the VM is stopped. Stale stop replies are dropped first."""
        with self._lock:
            self._check_ready(b"?")
            self.drain_stops()
            self._send(b"?")
            return self.wait_stop(timeout)

    def _resume(self, payload: bytes) -> None:
        with self._lock:
            self._check_ready(payload)
            with self._cond:
                self._stops.clear()  # any stop queued now predates this resume
                self._running = True
            self._send(payload)

    def cont(self) -> None:
        """``c``: resume; the stop arrives later through wait_stop() / on_stop."""
        self._resume(b"c")

    def vcont(self, *actions: str | tuple[str, ThreadId]) -> None:
        """``vCont``, e.g. ``vcont(("s", tid), "c")`` sends ``vCont;s:p01.02;c``; no wait."""
        parts = [a if isinstance(a, str) else f"{a[0]}:{a[1]}" for a in actions]
        self._resume(("vCont;" + ";".join(parts or ["c"])).encode())

    def step(self, thread: ThreadId | None = None, timeout: float | None = None) -> StopReply:
        """Single-step (``s``, or ``vCont;s:tid`` for one thread) and return its stop."""
        with self._lock:
            self._resume(b"s" if thread is None else f"vCont;s:{thread}".encode())
            return self.wait_stop(timeout)

    def interrupt(self, timeout: float | None = None) -> StopReply:
        """Stop the VM with a raw 0x03 and return the stop reply.

        A stop already queued is returned instead: QEMU ignores 0x03 while stopped, so
        sending it then would only time out.
        """
        with self._lock:
            with self._cond:
                if self._stops:
                    return self._stops.popleft()
            self._sendall(b"\x03")
            try:
                return self.wait_stop(timeout)
            except RspTimeout as e:
                raise RspTimeout(f"{e}; QEMU ignores 0x03 while the VM is already stopped") from None

    def wait_stop(self, timeout: float | None = None) -> StopReply:
        """The next stop reply, solicited or not (one consumer at a time, please)."""
        return self._wait(self._stops, timeout, "stop reply (is the VM still running?)")

    def drain_stops(self) -> list[StopReply]:
        """Remove and return the queued stop replies, oldest first."""
        with self._cond:
            out = list(self._stops)
            self._stops.clear()
            return out

    # -- ending -----------------------------------------------------------------------------

    def detach(self) -> None:
        """``D``: QEMU resumes the guest and drops all breakpoints; then close."""
        pid = ""
        if self.features.get("multiprocess") is True:  # QEMU answers E22 to a bare D then
            pid = f";{self.current_thread().pid or 1:x}"
        try:
            self._supported(f"D{pid}")
        finally:
            self.close()

    def close(self) -> None:
        """Close the socket without ``D``: QEMU leaves the guest as it is (paused or not)."""
        self._die("the client was closed")
        if self._reader is not threading.current_thread():
            self._reader.join(timeout=1.0)

    def __enter__(self) -> RspClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
