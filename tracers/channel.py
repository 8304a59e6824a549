"""Where a recorded trace stream comes from: a file or a live guest's recording, read
oldest chunk first and as it grows (the flight recorder is tracers/flight.py).

A live guest's supervisor appends the virtio-serial stream to ``trace.utrace`` in the
session directory as it arrives (rotated in chunks, tracers/chunks.py), so following a
guest is following that recording.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING

from tracers.chunks import CONTINUED, Dropped, chunk_paths, read_dropped
from tracers.format import HEADER_SIZE, StreamHeader
from tracers.records import Session
from undebug.errors import UsageError

if TYPE_CHECKING:
    from undebug.session.store import SessionDir

__all__ = ["FileChannel", "guest_channel", "session_anchors"]


class FileChannel:
    """A recording read from its oldest chunk on, as it grows (tracers/chunks.py).
    ``read()`` returns b"" at the current end; ``finished()`` says whether more can come
    (a live guest's recording ends with its guest; a plain file can always grow, so only
    Ctrl-C ends a follow).

    The chunks are one stream: a chunk that follows the one read before it loses its
    copy of the stream header; when the writer rotates the chunk being read, reading
    goes on in the next. ``offset`` counts bytes of that stream; ``skipped_chunks``
    those deleted by rotation before this reader got to them."""

    def __init__(self, path: Path, session: SessionDir | None = None) -> None:
        self.path = path
        self.session = session
        self._watch: socket.socket | None = None  # kept open to the supervisor (finished)
        self.offset = 0
        self.skipped_chunks = 0
        self._anchors: dict[int, int] = {}  # stream offset -> host ns its header arrived
        chunks = chunk_paths(path)
        if not chunks:
            chunks = [(1, path)]  # not a file: let open() say why
        number, first = chunks[0]
        self._fd = self._open(first)
        self._number, self._live = number, first == path
        self._start, self._skip = 0, 0  # stream offset of this chunk, header bytes dropped
        self._note_anchors()

    def _open(self, path: Path) -> int:
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None

    def read(self, size: int = 1 << 20) -> bytes:
        buf = bytearray(size)
        return bytes(buf[: self.readinto(memoryview(buf))])

    def readinto(self, buf: memoryview) -> int:
        """Fill ``buf`` with the next bytes (fewer at the current end); 0 at the end."""
        while True:
            n = os.readv(self._fd, [buf])
            if n:
                self.offset += n
                return n
            if not self._next_chunk():
                return 0

    def skip_to_tail(self, keep: int) -> int:
        """Skip what was recorded up to ``keep`` bytes before the current end (older chunks
        too): a live view shows what happens now, not the history. The bytes skipped are
        counted in ``offset`` as if read; a decoder fed across the jump resynchronises at
        the next record (so feed it the stream header first). Returns the bytes skipped."""
        skipped = 0
        while True:
            at = os.lseek(self._fd, 0, os.SEEK_CUR)
            end = os.fstat(self._fd).st_size
            later = not self._live or not self._next_chunk_absent()
            to = end if later else max(at, end - keep)
            os.lseek(self._fd, to, os.SEEK_SET)
            skipped += to - at
            self.offset += to - at
            if not later or not self._next_chunk():
                return skipped

    def _next_chunk_absent(self) -> bool:
        """The live chunk being read is still the live one (not rotated under us)."""
        try:
            return os.stat(self.path).st_ino == os.fstat(self._fd).st_ino
        except OSError:
            return True

    def _next_chunk(self) -> bool:
        """At the end of the chunk being read: go on in the next one if there is one."""
        if self._live:
            try:
                rotated = os.stat(self.path).st_ino != os.fstat(self._fd).st_ino
            except FileNotFoundError:
                rotated = True  # between the writer's two renames
            except OSError:
                return False
            if not rotated:
                return False
            ours = os.fstat(self._fd).st_ino
            for number, path in chunk_paths(self.path):
                with contextlib.suppress(OSError):
                    if path != self.path and path.stat().st_ino == ours:
                        self._number, self._live = number, False
                        return True  # read what came before the rename, then move on
            if not self.path.exists():
                return False  # between the writer's two renames
            # renamed and already deleted (this reader fell behind): what was appended
            # before the rename is still readable here, then the oldest chunk left
            self._live = False
            return True
        later = [(n, p) for n, p in chunk_paths(self.path) if n > self._number]
        if not later:
            return False
        number, path = later[0]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        os.close(self._fd)
        contiguous = number == self._number + 1
        self.skipped_chunks += number - self._number - 1
        self._fd, self._number, self._live = fd, number, path == self.path
        self._start, self._skip = self.offset, 0
        head = os.pread(fd, HEADER_SIZE, 0)
        header = StreamHeader.parse(head) if len(head) == HEADER_SIZE else None
        if contiguous and isinstance(header, StreamHeader) and header.flags & CONTINUED:
            self._skip = header.header_size  # the copy of the header already in effect
            os.lseek(fd, self._skip, os.SEEK_SET)
        self._note_anchors()
        return True

    def _note_anchors(self) -> None:
        name = self.path.name if self._live else f"{self.path.name}.{self._number}"
        for offset, unix_ns in _anchor_lines(self.path.with_name(name + ".anchors")):
            if offset >= self._skip:
                self._anchors[self._start + offset - self._skip] = unix_ns

    def anchors(self) -> dict[int, int]:
        """Stream offset of a stream header -> host Unix ns it arrived (FORMAT.md 9), from
        the ``.anchors`` files of the chunks read so far (a live one's is read again)."""
        self._note_anchors()
        return dict(self._anchors)

    def dropped(self) -> Dropped | None:
        """What rotation took from this recording (None: it never rotated)."""
        return read_dropped(self.path)

    def finished(self) -> bool:
        """True once nothing more can be appended (the guest's supervisor is gone): seen
        on one connection to it kept open, not a connect per look, which would wake the
        supervisor at every poll of a follower (bench/README.md, at_rest)."""
        from undebug.session.store import has_ended

        if self.session is None:
            return False
        if self._watch is None:
            self._watch = self.session.watch()
            if self._watch is None:
                return True
        return has_ended(self._watch)

    def close(self) -> None:
        os.close(self._fd)
        if self._watch is not None:
            self._watch.close()

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


def _anchor_lines(path: Path) -> list[tuple[int, int]]:
    """(offset, received_unix_ns) of an ``.anchors`` file; bad lines are skipped."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines()[:10_000]:
        try:
            entry = json.loads(line)
            offset, unix_ns = entry["offset"], entry["received_unix_ns"]
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(offset, int) and isinstance(unix_ns, int):
            out.append((offset, unix_ns))
    return out


def session_anchors(anchors: dict[int, int], sessions: list[Session]) -> dict[int, int]:
    """Session index -> host Unix ns its header arrived, for sessions with an anchor."""
    return {s.index: anchors[s.offset] for s in sessions if s.offset in anchors}
