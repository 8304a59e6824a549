"""Where a recorded trace stream comes from: a file or a live guest's recording, read as
it grows (the flight recorder in guest memory is tracers/flight.py).

A live guest's supervisor appends the virtio-serial stream to ``trace.utrace`` in the
session directory as it arrives, so following a guest is following that file.
"""

from __future__ import annotations

import bisect
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from tracers.records import Session
from undebug.errors import UsageError

if TYPE_CHECKING:
    from undebug.session.store import SessionDir

__all__ = ["FileChannel", "guest_channel", "read_anchors"]


class FileChannel:
    """A trace file read from the start, as it grows. ``read()`` returns b"" at the
    current end; ``finished()`` says whether more can come (a live guest's recording
    ends with its guest; a plain file can always grow, so only Ctrl-C ends a follow).

    Bytes read after the channel first caught up with the end arrived while we watched:
    their host receive time is kept, which anchors the wall clock of a stream header
    among them (``received_at``)."""

    def __init__(self, path: Path, session: SessionDir | None = None) -> None:
        self.path = path
        self.session = session
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        self.offset = 0
        self._caught_up = False
        self._chunks: list[tuple[int, int, int]] = []  # (start, end, wall ns) read live

    def read(self, size: int = 1 << 20) -> bytes:
        data = os.read(self._fd, size)
        if not data:
            self._caught_up = True
        elif self._caught_up:
            self._chunks.append((self.offset, self.offset + len(data), time.time_ns()))
        self.offset += len(data)
        return data

    def received_at(self, offset: int) -> int | None:
        """Wall clock (ns) when the byte at ``offset`` arrived, if it arrived live."""
        at = bisect.bisect_right(self._chunks, (offset, 1 << 62, 0)) - 1
        if at >= 0 and self._chunks[at][0] <= offset < self._chunks[at][1]:
            return self._chunks[at][2]
        return None

    def finished(self) -> bool:
        """True once nothing more can be appended (the guest's supervisor is gone)."""
        return self.session is not None and not self.session.is_alive()

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> FileChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def guest_channel(name: str) -> FileChannel:
    """The recording of a live (or ended) guest's trace stream."""
    from undebug.session.store import SessionDir

    session = SessionDir.named(name)
    session.read_record()  # "no guest named ..." when there is none
    path = session.path / "trace.utrace"
    if not path.exists():
        raise UsageError(f"guest {name!r} has no trace stream",
                         hint="it was started without the trace port (--no-trace) or attached; "
                         "try: undebug trace show --flight-recorder " + name)
    return FileChannel(path, session)


def read_anchors(path: Path, sessions: list[Session]) -> tuple[dict[int, int], list[str]]:
    """Session index -> host Unix ns its header arrived, from ``PATH.anchors``
    (FORMAT.md section 9). A missing file means no wall clock; bad lines are warnings."""
    anchors: dict[int, int] = {}
    warnings: list[str] = []
    by_offset = {s.offset: s.index for s in sessions}
    try:
        text = path.with_name(path.name + ".anchors").read_text(errors="replace")
    except OSError:
        return anchors, warnings
    for number, line in enumerate(text.splitlines()[:10_000], 1):
        try:
            entry = json.loads(line)
            offset, unix_ns = entry["offset"], entry["received_unix_ns"]
            if not (isinstance(offset, int) and isinstance(unix_ns, int)):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            warnings.append(f"{path}.anchors line {number}: not an anchor; ignored")
            continue
        if offset in by_offset:
            anchors[by_offset[offset]] = unix_ns
    return anchors, warnings
