"""The supervisor's trace recorder: the guest's trace stream, appended to disk as it arrives.

It exists apart from the guest (``guest.py``) because recording is its own concern: the
stream comes from the virtio-serial port's socket, goes to ``trace.utrace`` in the
session directory (and a ``run --trace-file`` copy), capped by ``--trace-max-size`` in
rotated chunks (tracers/chunks.py), with the host clock of the stream header beside
every copy (tracers/FORMAT.md section 9). A full disk loses trace data, counted and
reported in the session record, and nothing else: run control goes on. The same socket
carries the host's few control messages to the guest (:meth:`TraceRecorder.send`,
live_trace.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tracers.chunks import ChunkWriter

__all__ = ["TraceRecorder"]

READ_SIZE = 1 << 20  # the socket is read in batches of up to this (the loop's own reads)

log = logging.getLogger("undebug.supervisor")


class TraceRecorder:
    """Writes one trace stream to every path in ``outputs`` (each created 0600), each
    kept under ``max_size`` bytes (0: no limit)."""

    def __init__(self, outputs: list[Path], max_size: int) -> None:
        self.writers = [ChunkWriter(p, max_size) for p in outputs]
        self.received = 0
        self._sock: socket.socket | None = None  # connected, until the recording ends

    async def record(self, socket_path: str) -> None:
        """Append the stream to disk as it arrives: nothing received is lost if QEMU or
        undebug dies later. The socket is read by a thread of its own in blocking
        ``recv_into`` calls, not by the event loop: at rest a supervisor's cost is its
        wake-ups, and a wake-up of this loop (one ``recv_into``, one ``write`` per
        recording) cost ~90 µs here against ~140 µs for a round of the event loop
        (bench/README.md, at_rest)."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, socket_path)
            sock.setblocking(True)
        except OSError:
            sock.close()
            self._close()
            raise
        self._sock = sock
        pump = asyncio.ensure_future(asyncio.to_thread(self._pump, sock))
        try:
            await asyncio.shield(pump)
        finally:
            self._sock = None
            if not pump.done():  # cancelled (the supervisor ends): wake the blocked read
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                await asyncio.wait([pump])
            sock.close()
            self._close()

    def _pump(self, sock: socket.socket) -> None:
        """Read batches into one buffer until QEMU closes the port (or the socket is
        shut down, which ends the read)."""
        buffer = bytearray(READ_SIZE)
        view = memoryview(buffer)
        while True:
            try:
                nbytes = sock.recv_into(view)
            except OSError as exc:
                log.warning("trace stream: %s", exc)
                return
            if not nbytes:
                return
            self.append(bytes(view[:nbytes]))

    def send(self, data: bytes) -> bool:
        """Write a control message to the guest (host -> guest on the same port), from
        the event loop while the pump thread is blocked in its read (a socket allows
        that). Never waits: a guest that takes no input (an older stub) leaves QEMU's
        side unread, and a full socket then refuses the message (False)."""
        sock = self._sock
        if sock is None:
            return False
        try:
            return sock.send(data, socket.MSG_DONTWAIT) == len(data)
        except OSError as exc:
            log.warning("trace port: cannot send to the guest: %s", exc)
            return False

    def append(self, chunk: bytes) -> None:
        """One batch of the stream, to every recording (the first with its anchor)."""
        if not self.received:  # the stream header: tracers/FORMAT.md section 9
            line = json.dumps({"offset": 0, "received_unix_ns": time.time_ns()}) + "\n"
            for out in self.writers:
                out.anchor(line)
        self.received += len(chunk)
        for out in self.writers:
            error = out.dropped.write_error
            out.write(chunk)
            if out.dropped.write_error and out.dropped.write_error != error:
                log.warning("trace recording: %s", out.dropped.write_error)

    def _close(self) -> None:
        for out in self.writers:
            out.close()

    def status(self) -> dict[str, Any]:
        """For the session record (``ps``): what each recording kept and dropped."""
        return {"received_bytes": self.received,
                "recordings": [{"file": str(w.path), **asdict(w.dropped)} for w in self.writers]}

    def warnings(self) -> list[str]:
        out = []
        for w in self.writers:
            d = w.dropped
            if d.write_error:
                out.append(f"trace recording: {d.write_error}")
            if d.unwritten_bytes:
                out.append(f"trace recording {w.path}: {d.unwritten_bytes} bytes received "
                           "were not written (disk full or unwritable)")
        return out
