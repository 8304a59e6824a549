"""A recording on disk as chunk files, capped and rotated keep-newest (FORMAT.md section 10).

It exists so that a trace recording cannot fill the disk (``run --trace-max-size``): the
writer starts a new chunk when the current one is full and deletes the oldest chunks
past the cap, as LTTng does with ``tracefile-size``/``tracefile-count``; every reader
takes the chunks oldest first as one stream. Names: the recording ``F`` is always the
chunk being written; full chunks are renamed ``F.1``, ``F.2``, ... (numbers only grow).
Each chunk starts with a copy of the stream header in effect (flag ``CONTINUED``) and
its own ``.anchors``, so it decodes alone; a reader joining a chunk to the one before it
drops that copy. ``F.chunks`` (JSON) says what was dropped.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

from tracers.format import HEADER_SIZE, MAGIC_BYTES, SLOT, SYNC_PATTERN, StreamHeader

__all__ = ["CHUNK_COUNT", "CONTINUED", "DEFAULT_MAX_SIZE", "ChunkWriter", "Dropped",
           "chunk_paths", "read_dropped"]

DEFAULT_MAX_SIZE = 256 << 20  # run --trace-max-size: 256 MiB per recording
CHUNK_COUNT = 4  # chunks kept: the cap is split in this many
MIN_CHUNK = 64 << 10
CONTINUED = 1 << 2  # stream header flag: a copy at the start of a chunk
_FLAGS = struct.Struct("<I")  # the header's flags, at offset 12


@dataclass
class Dropped:
    """What rotation (and a full disk) took out of a recording."""

    max_size: int = 0
    chunk_size: int = 0
    dropped_chunks: int = 0
    dropped_bytes: int = 0  # in deleted chunks
    unwritten_bytes: int = 0  # received but not written: the disk was full
    write_error: str | None = None  # the last one, if it has not cleared


def chunk_paths(path: Path) -> list[tuple[int, Path]]:
    """The chunks of recording ``path``, oldest first: (number, path); ``path`` itself,
    the chunk being written, gets the number after the newest full one."""
    pattern = re.compile(re.escape(path.name) + r"\.([0-9]{1,9})")
    numbered: list[tuple[int, Path]] = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            m = pattern.fullmatch(entry.name)
            if m and entry.is_file():
                numbered.append((int(m[1]), Path(entry.path)))
    numbered.sort()
    last = numbered[-1][0] if numbered else 0
    return numbered + ([(last + 1, path)] if path.exists() else [])


def read_dropped(path: Path) -> Dropped | None:
    """``F.chunks`` of a recording, or None for a recording that never rotated."""
    try:
        doc = json.loads(path.with_name(path.name + ".chunks").read_text())
        fields = {k: doc[k] for k in Dropped.__dataclass_fields__ if k in doc}
        return Dropped(**fields)
    except (OSError, ValueError, TypeError):
        return None


class ChunkWriter:
    """Writes one stream into ``path`` as chunks of about ``max_size / CHUNK_COUNT``
    bytes, deleting the oldest full chunks while they and a new chunk would exceed
    ``max_size`` (``max_size`` 0: one file, unbounded). The newest full chunk stays.

    A chunk is cut at a record boundary found cheaply: the start of the first SYNC record
    past its size (the stub sends one at least every 4096 records per CPU, so a chunk
    overshoots by at most that much); with none in twice the chunk size it is cut where
    the data happens to end (a chunk read alone then starts with damage). A write error
    (ENOSPC) is kept in ``dropped`` and never raised: data is discarded (and counted)
    until a new chunk can be written."""

    def __init__(self, path: Path, max_size: int) -> None:
        self.path = path
        self.dropped = Dropped(max_size, max(max_size // CHUNK_COUNT, MIN_CHUNK)
                               if max_size else 0)
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                                       | os.O_CLOEXEC, 0o600)
        for _, old in chunk_paths(path)[:-1]:  # a previous recording's chunks
            _unlink(old)
        _unlink(self._sidecar(".chunks"))
        self.size = 0  # bytes in the current chunk
        self.number = 1  # the current chunk's number once it is full
        self._header: bytes | None = None  # the stream header in effect
        self._anchor: str | None = None  # its .anchors line
        self._tail = b""  # the end of the previous write (a header may straddle writes)
        self._failed = False

    def anchor(self, line: str) -> None:
        """The ``.anchors`` line of the stream header that starts the stream."""
        self._anchor = line
        self._write_file(self._sidecar(".anchors"), line)

    def write(self, data: bytes) -> None:
        """Append ``data`` (any piece of the stream), rotating where a chunk is full."""
        while (cut := self._cut(data)) is not None:  # a large write may fill several
            self._note_headers(data[:cut])
            self._append(data[:cut])
            self._rotate()
            data = data[cut:]
            if self._failed:  # no new chunk: the rest waits for the next write's SYNC
                self.dropped.unwritten_bytes += len(data)
                self._note_headers(data)
                return
        self._note_headers(data)
        self._append(data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # ---- where and how to cut ----------------------------------------------------------

    def _cut(self, data: bytes) -> int | None:
        limit = self.dropped.chunk_size
        if not limit:
            return None
        if self._failed:  # resume on a fresh chunk at the first SYNC
            at = data.find(SYNC_PATTERN, SLOT)
            return at - SLOT if at >= 0 else None
        if self.size + len(data) < limit:
            return None
        start = max(limit - self.size, 0) + SLOT
        at = data.find(SYNC_PATTERN, start)
        if at >= 0:
            return at - SLOT
        return len(data) if self.size + len(data) >= 2 * limit else None

    def _note_headers(self, data: bytes) -> None:
        """Keep the newest valid stream header in ``data`` (a new one starts with each
        reconnect of the guest's port; it may straddle two writes)."""
        buf = self._tail + data
        at = buf.rfind(MAGIC_BYTES)
        while at >= 0:
            header = StreamHeader.parse(buf[at : at + HEADER_SIZE]) \
                if len(buf) - at >= HEADER_SIZE else "short"
            if not isinstance(header, str) and len(buf) - at >= header.header_size:
                self._header = buf[at : at + header.header_size]
                break
            at = buf.rfind(MAGIC_BYTES, 0, at)
        self._tail = buf[-4096:]

    def _rotate(self) -> None:
        """The current chunk becomes ``F.N``; a new one starts with the header copy."""
        fresh = self._sidecar(".next")
        self._tail = b""
        try:
            fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            head = b""
            if self._header is not None:
                flags = _FLAGS.unpack_from(self._header, 12)[0] | CONTINUED
                head = self._header[:12] + _FLAGS.pack(flags) + self._header[16:]
                _write_all(fd, head)
        except OSError as exc:
            _unlink(fresh)
            self._fail(exc)
            return
        self.close()
        done = self.path.with_name(f"{self.path.name}.{self.number}")
        os.replace(self.path, done)
        anchors = self._sidecar(".anchors")
        if anchors.exists():
            os.replace(anchors, done.with_name(done.name + ".anchors"))
        os.replace(fresh, self.path)
        self._fd, self.size, self.number = fd, len(head), self.number + 1
        self._failed = False
        self.dropped.write_error = None
        if self._anchor is not None:
            self._write_file(anchors, self._anchor)
        chunks = [(p, _size(p)) for _, p in chunk_paths(self.path)[:-1]]  # the full ones
        total = sum(size for _, size in chunks)
        room = self.dropped.max_size - self.dropped.chunk_size  # the new one's share
        while len(chunks) > 1 and total > room:  # the newest full one stays
            old, size = chunks.pop(0)
            total -= size
            self.dropped.dropped_bytes += size
            self.dropped.dropped_chunks += 1
            _unlink(old)
            _unlink(old.with_name(old.name + ".anchors"))
        self._write_file(self._sidecar(".chunks"), json.dumps(asdict(self.dropped)) + "\n")

    # ---- I/O ---------------------------------------------------------------------------

    def _append(self, data: bytes) -> None:
        if self._fd is None or self._failed:
            self.dropped.unwritten_bytes += len(data)
            return
        view, written = memoryview(data), 0
        try:
            while written < len(data):
                written += os.write(self._fd, view[written:])
        except OSError as exc:
            self.dropped.unwritten_bytes += len(data) - written
            self._fail(exc)
            if not self.dropped.chunk_size:
                self._failed = False  # one file: write what comes next where it can
        else:
            if not self.dropped.chunk_size:
                self.dropped.write_error = None
        finally:
            self.size += written

    def _fail(self, exc: OSError) -> None:
        self._failed = True
        reason = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror
        self.dropped.write_error = f"cannot write {self.path}: {reason}"

    def _sidecar(self, suffix: str) -> Path:
        return self.path.with_name(self.path.name + suffix)

    def _write_file(self, path: Path, text: str) -> None:
        """A small file beside the chunks, replaced whole; a failure is only noted."""
        tmp = path.with_name(path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                _write_all(fd, text.encode())
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as exc:
            _unlink(tmp)
            self.dropped.write_error = f"cannot write {path}: {exc.strerror}"


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
