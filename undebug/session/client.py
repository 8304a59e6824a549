"""The front ends' side of the supervisor protocol: a small blocking client.

Any number of clients may talk to one supervisor at once; a client that goes away
(even killed) leaves the guest exactly as it was, unless it took ownership with ``own``.
Its typed methods return the dataclasses of :mod:`undebug.session.replies`, parsed here
once; :meth:`SupervisorClient.call` is the raw request they are built on.
"""

from __future__ import annotations

import array
import base64
import dataclasses
import itertools
import os
import socket
from typing import Any

from undebug.errors import SessionError, UsageError
from undebug.session.breakpoints import Breakpoint, Owner, Watch
from undebug.session.machine_map import DeviceRange
from undebug.session.outcome import Outcome, from_supervisor_death
from undebug.session.protocol import MAX_LINE, ErrorCode, ProtocolError, decode, encode
from undebug.session.replies import (
    CpuRegisters,
    GuestStatus,
    MalformedReply,
    ProcessRam,
    Reply,
    Stop,
    SupervisorEvent,
    parse_breakpoint,
    parse_event,
    parse_outcome,
    parse_process_ram,
    parse_ram_layout,
    parse_registers,
    parse_status,
    parse_stop,
    recorded_status,
)
from undebug.session.store import SessionDir

__all__ = ["SupervisorClient", "hold_live_trace", "live_status"]


class SupervisorClient:
    """One connection to a guest's supervisor."""

    def __init__(self, session: SessionDir, timeout: float = 60.0) -> None:
        self.session = session
        self._timeout = timeout
        self._pending_events: list[object] = []
        self._fds: list[int] = []  # file descriptors received with replies (SCM_RIGHTS)
        self._sock = socket.socket(socket.AF_UNIX)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(session.control_socket))
        except OSError:
            self._sock.close()
            session.read_record()  # raises "no guest named ..." when there is none
            raise SessionError(
                f"guest {session.name!r} has ended (its supervisor is gone)",
                hint=f"see undebug logs {session.name}; remove it with undebug kill {session.name}",
            ) from None
        self._buffer = bytearray()
        self._ids = itertools.count(1)

    def __enter__(self) -> SupervisorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()
        self._sock.close()

    def _call_with_fd(self, op: str, **args: Any) -> tuple[dict[str, Any], int]:
        """A request whose reply carries a file descriptor; the caller owns the fd."""
        result = self.call(op, **args)
        if not self._fds:
            raise SessionError(f"guest {self.session.name!r}: {op} sent no file descriptor")
        return result, self._fds.pop(0)

    def _read(self, timeout: float | None = -1.0) -> dict[str, Any] | None:
        """The next message; None when ``timeout`` (seconds, -1 = the default) passes."""
        if timeout != -1.0:
            self._sock.settimeout(timeout)
        try:
            while (end := self._buffer.find(b"\n")) < 0:
                if len(self._buffer) > MAX_LINE:
                    raise SessionError(f"guest {self.session.name!r}: reply too long")
                chunk, ancillary, _, _ = self._sock.recvmsg(1 << 20, socket.CMSG_SPACE(16))
                for level, kind, payload in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds = array.array("i")
                        fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                        self._fds.extend(fds)
                if not chunk:
                    raise SessionError(
                        f"guest {self.session.name!r}: the supervisor closed the connection")
                self._buffer += chunk
        except TimeoutError:
            if timeout != -1.0:
                return None
            raise SessionError(f"guest {self.session.name!r}: supervisor did not answer") from None
        except OSError as exc:
            raise SessionError(f"guest {self.session.name!r}: connection lost: {exc}") from None
        finally:
            if timeout != -1.0:
                self._sock.settimeout(self._timeout)
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        try:
            return decode(line)
        except ProtocolError as exc:
            raise SessionError(f"guest {self.session.name!r}: bad reply: {exc}") from None

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request and return its result, raising on an error response."""
        request_id = next(self._ids)
        try:
            self._sock.sendall(encode({"id": request_id, "op": op, "args": args}))
        except OSError as exc:
            raise SessionError(f"guest {self.session.name!r}: connection lost: {exc}") from None
        while True:
            message = self._read()
            if message is None:
                continue
            if "event" in message:
                self._pending_events.append(message["event"])
            elif message.get("id") == request_id:
                break
        if message.get("ok"):
            result = message.get("result", {})
            if not isinstance(result, dict):
                raise MalformedReply(f"guest {self.session.name!r}: the {op} reply is "
                                     "malformed: its result is not an object")
            return result
        error = message.get("error")
        error = error if isinstance(error, dict) else {}
        code, text = error.get("code"), str(error.get("message", "unknown error"))
        if code == ErrorCode.BAD_REQUEST:
            raise UsageError(text)
        raise SessionError(f"guest {self.session.name!r}: {text}")

    def _reply(self, op: str, **args: Any) -> Reply:
        return Reply(self.call(op, **args), f"guest {self.session.name!r}: the {op} reply")

    # ---- typed requests (docs/protocol.md, "Ops") ---------------------------------------

    def status(self) -> GuestStatus:
        """The guest's status, with QEMU's own run state (``qemu_state``)."""
        return parse_status(self._reply("status"))

    def pause(self) -> GuestStatus:
        return parse_status(self._reply("pause"))

    def resume(self) -> GuestStatus:
        return parse_status(self._reply("resume"))

    def kill(self) -> Outcome | None:
        """End the guest; its outcome once QEMU has ended (or been detached from)."""
        outcome = self._reply("kill").opt_object("outcome")
        return parse_outcome(outcome) if outcome else None

    def own(self) -> None:
        """The guest ends when this connection closes."""
        self.call("own")

    def subscribe(self) -> None:
        """Events on this connection from now on: see :meth:`next_event`."""
        self.call("subscribe")

    def trace_live(self) -> None:
        """Ask for live trace flushing, held until this connection closes (docs/protocol.md)."""
        self.call("trace_live")

    def freeze(self) -> int:
        """Hold the guest still until :meth:`thaw` or the connection closes; the run token."""
        return self._reply("freeze").integer("run_token")

    def thaw(self) -> None:
        self.call("thaw")

    def read_registers(self) -> list[CpuRegisters]:
        """Every vCPU's registers."""
        return parse_registers(self._reply("read_registers"))

    def write_registers(self, cpu: int, registers: dict[str, int]) -> None:
        self.call("write_registers", cpu=cpu, registers=registers)

    def read_memory(self, address: int, size: int, *, physical: bool = False) -> bytes:
        """Guest-virtual (or guest-physical) memory, at most 16 MiB a request."""
        op = "read_physical" if physical else "read_memory"
        return self._reply(op, address=address, size=size).base64_bytes("data")

    def write_memory(self, address: int, data: bytes) -> None:
        self.call("write_memory", address=address, data=base64.b64encode(data).decode())

    def machine_map(self) -> list[DeviceRange]:
        """Guest-physical RAM, ROM and device ranges as QEMU names them (SessionError when
        there is no QMP connection)."""
        raw = self.call("machine_map").get("ranges")
        try:
            return [DeviceRange.from_json(r) for r in raw] if isinstance(raw, list) else []
        except (KeyError, TypeError, ValueError):
            raise SessionError(f"guest {self.session.name!r}: a malformed machine_map reply") \
                from None

    def net_host(self) -> dict[str, Any]:
        """The NIC as QEMU sees it: ``rx_filters``, ``network`` and ``usernet`` (raw)."""
        return self.call("net_host")

    def capture_start(self, file: str, netdev: str = "net0") -> None:
        """QEMU writes the NIC's packets to ``file`` (pcap) until :meth:`capture_stop`."""
        self.call("capture_start", file=file, netdev=netdev)

    def capture_stop(self) -> None:
        self.call("capture_stop")

    def qemu_core(self, file: str) -> dict[str, Any]:
        """QEMU's own ELF core (``dump-guest-memory``, paging off) written to ``file``;
        its progress at the end: ``completed``/``total`` bytes, ``seconds``."""
        return self.call("qemu_core", file=file)

    def memory_fd(self) -> tuple[list[tuple[int, int, int]], int]:
        """Guest RAM's layout and a read-only descriptor of it (the caller closes it);
        SessionError when RAM is not shared."""
        result, fd = self._call_with_fd("memory_fd")
        try:
            return parse_ram_layout(Reply(result, f"guest {self.session.name!r}: the memory_fd "
                                                  "reply")), fd
        except SessionError:
            os.close(fd)
            raise

    def process_ram(self) -> ProcessRam:
        """Where an adopted QEMU holds guest RAM, to read in place; SessionError (with the
        reason) when it cannot be."""
        return parse_process_ram(self._reply("process_ram"))

    def insert_breakpoint(self, address: int, hardware: bool, location: str,
                          owner: Owner = "cli", when: tuple[str, int] | None = None,
                          watch: Watch | None = None, length: int = 1,
                          when_memory: tuple[int, tuple[int, ...]] | None = None) -> Breakpoint:
        """A ``gdb`` breakpoint belongs to this connection and goes when it closes; a
        ``crash`` one stops the guest as crashed (if register ``when[0]`` is ``when[1]``;
        with ``when_memory`` (offset, values): if the u32 at that register + offset is
        ``when[1]`` or one of values). With ``watch``: a watchpoint on ``length`` bytes."""
        condition: dict[str, Any] = {"when_register": when[0], "when_value": when[1]} \
            if when else {}
        if when and when_memory:
            condition |= {"when_offset": when_memory[0], "when_values": list(when_memory[1])}
        if watch is not None:
            condition |= {"watch": watch, "length": length}
        return parse_breakpoint(self._reply("break_insert", address=address, hardware=hardware,
                                            location=location, owner=owner, **condition))

    def delete_breakpoint(self, bp_id: int) -> Breakpoint:
        return parse_breakpoint(self._reply("break_delete", id=bp_id))

    def step(self, cpu: int | None = None) -> Stop:
        """One instruction on ``cpu`` (default: the vCPU that stopped last)."""
        return parse_stop(self._reply("step", cpu=cpu))

    def target_xml(self) -> dict[str, str]:
        """QEMU's target description: annex to XML text."""
        return self._reply("target_xml").text_map("files")

    def next_event(self, timeout: float | None) -> SupervisorEvent | None:
        """The next event after ``subscribe`` (None after ``timeout`` seconds)."""
        if self._pending_events:
            return self._event(self._pending_events.pop(0))
        while True:
            message = self._read(timeout)
            if message is None:
                return None
            if "event" in message:
                return self._event(message["event"])

    def _event(self, event: object) -> SupervisorEvent:
        return parse_event(Reply(event, f"guest {self.session.name!r}: an event"))


def hold_live_trace(session: SessionDir) -> SupervisorClient | None:
    """A live reader's lease on the guest's live flushing (a connection to keep open and
    close when done), or None when there is none to hold: the guest has ended, or its
    supervisor predates ``trace_live`` or records no trace. The reader follows the
    recording either way; without a lease its events arrive a rest interval late."""
    try:
        client = SupervisorClient(session, timeout=5.0)
    except (SessionError, UsageError):
        return None
    try:
        client.trace_live()
    except (SessionError, UsageError):
        client.close()
        return None
    return client


def live_status(session: SessionDir) -> GuestStatus:
    """The supervisor's answer if it is alive, else the last record it left (``ps``)."""
    try:
        with SupervisorClient(session, timeout=5.0) as client:
            return client.status()
    except MalformedReply:
        raise  # it is alive: its record would say "ended"
    except SessionError:
        record = recorded_status(session)
        return dataclasses.replace(record, state="ended", outcome=record.outcome or
                                   from_supervisor_death(record.supervisor_pid))
