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

log = logging.getLogger("undebug.supervisor")


class TraceRecorder:
    """Writes one trace stream to every path in ``outputs`` (each created 0600), each
    kept under ``max_size`` bytes (0: no limit)."""

    def __init__(self, outputs: list[Path], max_size: int) -> None:
        self.writers = [ChunkWriter(p, max_size) for p in outputs]
        self.received = 0

    async def record(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Append the stream to disk as it arrives: nothing received is lost if QEMU or
        undebug dies later."""
        anchored = False
        try:
            while chunk := await reader.read(1 << 20):
                if not anchored:  # the stream header: tracers/FORMAT.md section 9
                    anchored = True
                    line = json.dumps({"offset": 0, "received_unix_ns": time.time_ns()}) + "\n"
                    for out in self.writers:
                        out.anchor(line)
                self.received += len(chunk)
                for out in self.writers:
                    error = out.dropped.write_error
                    out.write(chunk)
                    if out.dropped.write_error and out.dropped.write_error != error:
                        log.warning("trace recording: %s", out.dropped.write_error)
        except (ConnectionError, OSError) as exc:
            log.warning("trace stream: %s", exc)
        finally:
            writer.close()
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
