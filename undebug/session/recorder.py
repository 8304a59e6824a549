"""The supervisor's trace recorder: the guest's trace stream, appended to disk as it arrives.

It exists apart from the guest (``guest.py``) because recording is its own concern: the
stream comes from the virtio-serial port's socket, goes to ``trace.utrace`` in the
session directory (and a ``run --trace-file`` copy), capped by ``--trace-max-size`` in
rotated chunks (tracers/chunks.py), with the host clock of the stream header beside
every copy (tracers/FORMAT.md section 9). A full disk loses trace data, counted and
reported in the session record, and nothing else: run control goes on.
"""

from __future__ import annotations

import asyncio
import json
import logging
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

    async def record(self, socket_path: str) -> None:
        """Append the stream to disk as it arrives: nothing received is lost if QEMU or
        undebug dies later. A protocol, not a StreamReader: each batch the guest sends
        is written in the loop's own callback, one wake-up, no task switch (at rest the
        cost of a supervisor is its wake-ups)."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        try:
            transport, _ = await loop.create_unix_connection(
                lambda: _StreamProtocol(self, ended), socket_path)
        except OSError:
            self._close()
            raise
        try:
            await ended
        finally:
            transport.close()
            self._close()

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


class _StreamProtocol(asyncio.BufferedProtocol):
    """The trace socket's protocol: reads straight into one buffer, hands each batch to
    the recorder, and ends ``ended`` when QEMU closes the port."""

    def __init__(self, recorder: TraceRecorder, ended: asyncio.Future[None]) -> None:
        self.recorder = recorder
        self.ended = ended
        self.buffer = bytearray(READ_SIZE)

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        self.recorder.append(bytes(self.buffer[:nbytes]))

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.warning("trace stream: %s", exc)
        if not self.ended.done():
            self.ended.set_result(None)
