"""The front ends' side of the supervisor protocol: a small blocking client.

Any number of clients may talk to one supervisor at once; a client that goes away
(even killed) leaves the guest exactly as it was, unless it took ownership with ``own``.
"""

from __future__ import annotations

import array
import itertools
import os
import socket
from typing import Any

from undebug.errors import SessionError, UsageError
from undebug.session.protocol import MAX_LINE, ErrorCode, ProtocolError, decode, encode
from undebug.session.store import SessionDir

__all__ = ["SupervisorClient"]


class SupervisorClient:
    """One connection to a guest's supervisor."""

    def __init__(self, session: SessionDir, timeout: float = 60.0) -> None:
        self.session = session
        self._timeout = timeout
        self._pending_events: list[dict[str, Any]] = []
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

    def call_with_fd(self, op: str, **args: Any) -> tuple[dict[str, Any], int]:
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
            return result if isinstance(result, dict) else {}
        error = message.get("error") or {}
        code, text = error.get("code"), str(error.get("message", "unknown error"))
        if code == ErrorCode.BAD_REQUEST:
            raise UsageError(text)
        raise SessionError(f"guest {self.session.name!r}: {text}")

    def next_event(self, timeout: float | None) -> dict[str, Any] | None:
        """The next event after ``subscribe`` (None after ``timeout`` seconds)."""
        if self._pending_events:
            return self._pending_events.pop(0)
        while True:
            message = self._read(timeout)
            if message is None or "event" in message:
                return message["event"] if message else None
