"""Where a recording came from: ``F.origin`` beside a recording ``F`` (FORMAT.md section 12).

``run --trace-file F`` and ``trace record -o F`` write it, so that later commands on the
file find the ELF (tracepoint names) and the guest's identity without ``--elf``: the ELF
with the tracepoints (the debug ELF when the session has one), the image booted, its
build-id, the session's name, the host it ran on (name, machine) and the guest's OS as
undebug's OS providers named it (the commands that launch or record add it: this layer
does not pick providers). The file is untrusted input like the recording: bad or missing
fields are None.
"""

from __future__ import annotations

import json
import os
import platform
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Origin", "note_os", "origin_path", "read_origin", "write_origin"]

_LIMIT = 64 << 10


@dataclass(frozen=True)
class Origin:
    elf: str | None
    image: str | None
    build_id: str | None
    session: str | None
    host: str | None
    traceparent: str | None = None  # run --traceparent: the parent of the guest's spans
    host_arch: str | None = None  # the host's machine (platform.machine())
    os_name: str | None = None  # the OS provider's name (refguest, unikraft, nanos), if known


def origin_path(recording: Path) -> Path:
    return recording.with_name(recording.name + ".origin")


def write_origin(recording: Path, *, elf: Path | None, image: Path | None,
                 session: str | None, traceparent: str | None = None,
                 os_name: str | None = None) -> None:
    """Write ``F.origin`` (0600, replaced whole). The build-id is read from the ELF."""
    from undebug.elf import ElfFile
    from undebug.errors import UndebugError

    build_id = None
    if elf is not None:
        try:
            build_id = ElfFile(elf).build_id
        except (UndebugError, OSError):
            build_id = None
    origin = Origin(str(elf.resolve()) if elf else None,
                    str(image.resolve()) if image else None, build_id, session,
                    socket.gethostname(), traceparent, platform.machine() or None, os_name)
    _write(recording, asdict(origin))


def note_os(recording: Path, os_name: str) -> bool:
    """Add the guest's OS to an existing ``F.origin`` (written by a layer that does not
    know it); False when there is none to add it to."""
    origin = read_origin(recording)
    if origin is None:
        return False
    _write(recording, {**asdict(origin), "os_name": os_name})
    return True


def _write(recording: Path, doc: dict[str, str | None]) -> None:
    """``F.origin`` replaced whole, 0600."""
    path = origin_path(recording)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(doc) + "\n")
    os.replace(tmp, path)


def read_origin(recording: Path) -> Origin | None:
    """The recording's origin, or None when it has no (readable) ``.origin``."""
    try:
        with open(origin_path(recording), "rb") as f:
            doc = json.loads(f.read(_LIMIT))
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict):
        return None

    def text(key: str) -> str | None:
        value = doc.get(key)
        return value if isinstance(value, str) else None

    return Origin(text("elf"), text("image"), text("build_id"), text("session"), text("host"),
                  text("traceparent"), text("host_arch"), text("os_name"))
