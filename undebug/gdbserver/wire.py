"""The server side of the GDB Remote Serial Protocol: one connection from a debugger.

Framing, splitting the stream into packets, escaping and checksums come from
:mod:`undebug.gdb.packets`; this module adds what a server needs on top: acks until the
client asks for no-ack mode, retransmitting on '-', the bare 0x03 byte a client sends to
interrupt a running target, and refusing any other client that connects to the listening
socket meanwhile (one debugger at a time).
The client is untrusted: garbage is skipped, an oversized packet is dropped, a corrupt
packet is asked for again (or, in no-ack mode, answered with an error).
"""

from __future__ import annotations

import logging
import select
import socket
from collections import deque

from undebug.gdb.packets import Control, Dropped, Event, Packet, PacketSplitter, frame

__all__ = ["BadPacket", "ClientGone", "GdbConnection", "to_hex_text"]

log = logging.getLogger("undebug.gdbserver")


class ClientGone(Exception):
    """The debugger closed the connection (or it broke)."""


class BadPacket(Exception):
    """A packet with a bad checksum in no-ack mode: it will not be sent again, so the
    client must be answered with an error rather than left waiting."""


def to_hex_text(text: str) -> bytes:
    """``text`` hex-encoded as UTF-8 (qThreadExtraInfo, O packets)."""
    return text.encode("utf-8", "backslashreplace").hex().encode()


class GdbConnection:
    """One debugger's connection: whole packets in, framed packets out."""

    def __init__(self, sock: socket.socket, listener: socket.socket | None = None) -> None:
        self.sock = sock
        self.listener = listener  # connections made meanwhile are refused
        self.no_ack = False
        self.interrupted = False  # a 0x03 arrived since the last take_interrupt()
        self.bad_packets = 0
        self._splitter = PacketSplitter()
        self._packets: deque[bytes | None] = deque()  # None: a corrupt packet (no-ack)
        self._last_sent = b""
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        self.sock.close()

    # ---- receiving ----------------------------------------------------------------------

    def receive(self, timeout: float | None) -> bytes | None:
        """The next packet's body (escapes not undone); None when ``timeout`` passes.
        BadPacket: the next one arrived corrupt in no-ack mode."""
        if not self._packets:
            self._pump(timeout)
        if not self._packets:
            return None
        packet = self._packets.popleft()
        if packet is None:
            raise BadPacket("a packet with a bad checksum (no-ack mode)")
        return packet

    def take_interrupt(self, timeout: float = 0.0) -> bool:
        """Whether the client sent 0x03 (Ctrl-C in gdb) since the last call."""
        if not self.interrupted:
            self._pump(timeout)
        interrupted, self.interrupted = self.interrupted, False
        return interrupted

    def _pump(self, timeout: float | None) -> None:
        """Read what has arrived within ``timeout`` and split it into packets."""
        watched = [self.sock] if self.listener is None else [self.sock, self.listener]
        ready, _, _ = select.select(watched, [], [], timeout)
        if self.listener is not None and self.listener in ready:
            self._refuse_another()
        if self.sock not in ready:
            return
        try:
            data = self.sock.recv(65536)
        except OSError as exc:
            raise ClientGone(f"connection lost: {exc}") from None
        if not data:
            raise ClientGone("the debugger closed the connection")
        for event in self._splitter.feed(data):
            self._on_event(event)

    def _refuse_another(self) -> None:
        try:
            other, peer = self.listener.accept() if self.listener else (None, None)
        except OSError:
            return
        if other is not None:
            log.warning("refused a second debugger (%s): one at a time", peer or "unix socket")
            other.close()

    def _on_event(self, event: Event) -> None:
        match event:
            case Packet(body, checksum_ok=True):
                self._ack(b"+")
                self._packets.append(body)
            case Packet():
                self.bad_packets += 1
                if self.no_ack:
                    self._packets.append(None)
                else:
                    self._ack(b"-")  # the client sends it again
            case Dropped(oversized):
                self.bad_packets += 1
                if oversized:
                    log.warning("dropping a packet longer than %d bytes", self._splitter.limit)
            case Control.INTERRUPT:
                self.interrupted = True
            case Control.NACK:  # our last packet arrived damaged
                if not self.no_ack and self._last_sent:
                    self._write(self._last_sent)
            case _:  # '+' acks
                pass

    def _ack(self, ack: bytes) -> None:
        if not self.no_ack:
            self._write(ack)

    # ---- sending ------------------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        """Send one packet ('#', '$', '}' and '*' are escaped, so binary data is fine)."""
        self._last_sent = frame(payload)
        self._write(self._last_sent)

    def _write(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise ClientGone(f"connection lost: {exc}") from None
