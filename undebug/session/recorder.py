"""The supervisor's trace recorder: the guest's trace stream, appended to disk as it arrives.

It exists apart from the guest (``guest.py``) because recording is its own concern: the
stream comes from the virtio-serial port's socket, goes to ``trace.utrace`` in the
session directory (and a ``run --trace-file`` copy), and the host clock of the stream
header is written beside every copy (tracers/FORMAT.md section 9).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path

__all__ = ["TraceRecorder"]

log = logging.getLogger("undebug.supervisor")


class TraceRecorder:
    """Writes one trace stream to every path in ``outputs`` (each created 0600)."""

    def __init__(self, outputs: list[Path]) -> None:
        self.outputs = outputs
        self._fds = [os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                     for p in outputs]

    async def record(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Append the stream to disk as it arrives: nothing received is lost if QEMU or
        undebug dies later."""
        anchored = False
        try:
            while chunk := await reader.read(1 << 20):
                if not anchored:  # the stream header: tracers/FORMAT.md section 9
                    anchored = True
                    self._write_anchor(time.time_ns())
                for fd in self._fds:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
        except (ConnectionError, OSError) as exc:
            log.warning("trace stream: %s", exc)
        finally:
            writer.close()
            for fd in self._fds:
                os.close(fd)

    def _write_anchor(self, unix_ns: int) -> None:
        """When the stream header arrived, by the host's clock: it pins the guest's TSC
        to wall-clock time (FORMAT.md section 9), next to every copy of the stream."""
        line = json.dumps({"offset": 0, "received_unix_ns": unix_ns}) + "\n"
        for output in self.outputs:
            path = output.with_name(output.name + ".anchors")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(line)
