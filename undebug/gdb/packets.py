"""The GDB Remote Serial Protocol's wire format and the values it carries, without any I/O.

Kept apart from the client so that framing, splitting a byte stream into packets, escaping,
run-length decoding and the parsing of stop replies, thread ids and qSupported answers can
be read and tested on their own, and shared by the client (``undebug.gdb.rsp``) and the
server (``undebug.gdbserver.wire``), which each add only their own policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Literal

__all__ = [  # noqa: RUF022 (grouped by role, not sorted)
    "MAX_PACKET", "QEMU_MAX_READ",
    "RspException", "RspError", "RspTimeout", "RspDisconnected",
    "Control", "Packet", "Dropped", "Event", "PacketSplitter",
    "BreakpointType", "ThreadId", "StopReply",
    "checksum", "escape", "frame", "decode", "parse_features",
]

MAX_PACKET = 1 << 20  # a packet this long without '#' is garbage, not data to buffer
QEMU_MAX_READ = 2048  # QEMU 7.2 answers E22 to `m` above MAX_PACKET_LENGTH / 2
_NEEDS_ESCAPE = re.compile(rb"[#$}*]")
_FRAMING = re.compile(rb"[$#]")
_CONTROL = re.compile(rb"[+\-\x03]")
_CHECKSUM = re.compile(rb"[0-9a-fA-F]{2}")


class RspException(Exception):
    """Base of every error the RSP modules raise."""


class RspError(RspException):
    """The stub answered ``E nn`` (``code``) or empty (unsupported, ``code`` None)."""

    def __init__(self, command: bytes, code: int | None) -> None:
        self.command = command
        self.code = code
        what = f"error E{code:02x}" if code is not None else "empty (command unsupported)"
        super().__init__(f"gdbstub answered {what} to {command[:60]!r}")


class RspTimeout(RspException):
    """No reply in time: the stub is busy, or the VM runs (QEMU answers only when stopped)."""


class RspDisconnected(RspException):
    """The stub went away (QEMU exited or the socket broke); the client is unusable."""


class BreakpointType(IntEnum):
    """``Z``/``z`` types; for watchpoints ``kind`` is the watched length."""

    SOFTWARE = 0
    HARDWARE = 1
    WRITE_WATCH = 2
    READ_WATCH = 3
    ACCESS_WATCH = 4


def checksum(body: bytes) -> int:
    """The packet checksum: the sum of the (escaped) body bytes modulo 256."""
    return sum(body) & 0xFF


def escape(payload: bytes) -> bytes:
    """Escape '#', '$', '}', '*' as 0x7d, byte ^ 0x20, so binary data can be sent."""
    return _NEEDS_ESCAPE.sub(_escaped, payload)


def _escaped(match: re.Match[bytes]) -> bytes:
    return bytes((0x7D, match.group()[0] ^ 0x20))


def frame(payload: bytes) -> bytes:
    """``$payload#cs``, with '#', '$', '}', '*' escaped (0x7d, byte ^ 0x20) for binary data."""
    body = escape(payload)
    return b"$%b#%02x" % (body, checksum(body))


def decode(body: bytes) -> bytes:
    """Undo run-length encoding (``x*n``: n - 29 more x) and binary escapes of a packet body."""
    if b"*" not in body and b"}" not in body:
        return body
    out = bytearray()
    i = 0
    while i < len(body):
        b = body[i]
        if b == 0x7D and i + 1 < len(body):
            out.append(body[i + 1] ^ 0x20)
            i += 2
        elif b == 0x2A and out and i + 1 < len(body):
            out += out[-1:] * (body[i + 1] - 29)
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


class Control(Enum):
    """A byte outside packets that means something: the others there are noise."""

    ACK = 0x2B  # '+': the peer received our packet intact
    NACK = 0x2D  # '-': it arrived damaged; send it again (ack mode only)
    INTERRUPT = 0x03  # a debugger's Ctrl-C: only a server acts on it


@dataclass(frozen=True)
class Packet:
    """One ``$body#cc``; ``body`` as sent: escapes and run-length encoding not undone."""

    body: bytes
    checksum_ok: bool


@dataclass(frozen=True)
class Dropped:
    """A packet that never ended: cut short by the next ``$``, or ``oversized`` (more than
    the splitter's limit before its ``#``; the rest of it, up to ``#cc``, is skipped)."""

    oversized: bool


Event = Packet | Control | Dropped


class PacketSplitter:
    """Splits an RSP byte stream, fed in pieces as they arrive, into :data:`Event` s.

    The peer is untrusted: the buffer never holds more than ``limit`` body bytes, noise
    between packets is skipped, and ``feed`` never raises. Each byte is looked at once, so a
    packet that arrives a byte at a time costs no more than one that arrives whole.
    """

    def __init__(self, limit: int = MAX_PACKET) -> None:
        self.limit = limit
        self._body: bytearray | None = None  # inside a packet: its body so far
        self._oversized = False  # inside a packet that was dropped: skip up to its end
        self._checksum: bytearray | None = None  # after its '#': the checksum digits so far

    def feed(self, data: bytes) -> list[Event]:
        """The events that ``data`` completes, in stream order."""
        events: list[Event] = []
        at = 0
        while at < len(data):
            if self._checksum is not None:
                at = self._take_checksum(data, at, events)
            elif self._body is not None or self._oversized:
                at = self._take_body(data, at, events)
            else:
                start = data.find(b"$", at)
                end = len(data) if start < 0 else start
                events += (Control(b[0]) for b in _CONTROL.findall(data, at, end))
                if start < 0:
                    break
                self._body, at = bytearray(), start + 1
        return events

    def _take_body(self, data: bytes, at: int, events: list[Event]) -> int:
        match = _FRAMING.search(data, at)
        end = len(data) if match is None else match.start()
        if self._body is not None:
            if len(self._body) + end - at > self.limit:
                events.append(Dropped(oversized=True))
                self._body, self._oversized = None, True
            else:
                self._body += data[at:end]
        if match is None:
            return end
        if match.group() == b"$":  # the next packet cut this one short
            if self._body is not None:
                events.append(Dropped(oversized=False))
            self._body, self._oversized = bytearray(), False
        else:
            self._checksum = bytearray()
        return end + 1

    def _take_checksum(self, data: bytes, at: int, events: list[Event]) -> int:
        assert self._checksum is not None
        take = data[at : at + 2 - len(self._checksum)]
        self._checksum += take
        if len(self._checksum) == 2:
            if self._body is not None:
                body, sent = bytes(self._body), bytes(self._checksum)
                ok = _CHECKSUM.fullmatch(sent) is not None and int(sent, 16) == checksum(body)
                events.append(Packet(body, ok))
            self._body, self._oversized, self._checksum = None, False, None
        return at + len(take)


def _thread_num(text: str) -> int:
    if text == "-1":
        return -1
    if (value := int(text, 16)) < 0:
        raise ValueError(f"negative thread number {text!r}")
    return value


@dataclass(frozen=True)
class ThreadId:
    """A thread as the stub (a vCPU in QEMU) or the debugger names it; ``raw`` is what to
    send back."""

    raw: str
    pid: int | None
    tid: int  # -1 means all threads, 0 any thread

    @classmethod
    def parse(cls, raw: str) -> ThreadId:
        """Parse ``p01.02`` (multiprocess), ``p01`` (all threads of a process) or ``02``."""
        try:
            if raw.startswith("p"):
                pid, _, tid = raw[1:].partition(".")
                return cls(raw, _thread_num(pid), _thread_num(tid or "-1"))
            return cls(raw, None, _thread_num(raw))
        except ValueError as e:
            raise RspException(f"malformed thread id {raw!r}") from e

    def __str__(self) -> str:
        return self.raw


@dataclass(frozen=True)
class StopReply:
    """Why the VM stopped: ``kind`` signal (S/T), exited (W) or terminated (X)."""

    kind: Literal["signal", "exited", "terminated"]
    signal: int | None  # None when exited
    thread: ThreadId | None
    raw: bytes
    exit_status: int | None = None
    info: dict[str, str] = field(default_factory=dict)  # T pairs: thread, watch, swbreak...

    @classmethod
    def parse(cls, raw: bytes) -> StopReply:
        """Parse ``S05``, ``T05thread:p01.01;...``, ``W00;process:1`` or ``X09``."""
        text = raw.decode("ascii", "replace")
        try:
            code = int(text[1:3], 16)
        except ValueError as e:
            raise RspException(f"malformed stop reply {raw[:60]!r}") from e
        rest = text[3:].lstrip(";")
        info = dict(p.partition(":")[::2] for p in rest.split(";") if p)
        thread = ThreadId.parse(info["thread"]) if "thread" in info else None
        if text[0] == "W":
            return cls("exited", None, thread, raw, code, info)
        kind: Literal["signal", "terminated"] = "terminated" if text[0] == "X" else "signal"
        return cls(kind, code, thread, raw, None, info)


def parse_features(reply: bytes) -> dict[str, str | bool]:
    """Parse a qSupported answer: ``name=value``, ``name+``, ``name-``, ``name?``."""
    out: dict[str, str | bool] = {}
    for item in reply.decode("ascii", "replace").split(";"):
        name, eq, value = item.partition("=")
        if eq:
            out[name] = value
        elif item[-1:] in ("+", "-", "?") and len(item) > 1:
            out[item[:-1]] = item[-1] == "+"
    return out
