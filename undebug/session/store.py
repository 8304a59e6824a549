"""Where sessions live on disk: a 0700 per-user runtime dir with one directory per guest.

A session directory holds the supervisor's control socket, QEMU's QMP and gdbstub
sockets, the console log and ``session.json``, the record the supervisor keeps current
(run state, outcome) so ``ps`` and ``logs`` work even after the guest has ended.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from undebug.errors import EnvironmentMissing, SessionError, UsageError

__all__ = [
    "SessionDir",
    "private_dir",
    "runtime_dir",
    "sessions",
    "shared_memory_dir",
    "validate_name",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the NUL


def runtime_dir() -> Path:
    """The per-user directory holding all sessions, created 0700 and checked to be ours.

    ``$UNDEBUG_RUNTIME_DIR`` overrides it (tests use that to isolate themselves).
    """
    override = os.environ.get("UNDEBUG_RUNTIME_DIR")
    if override:
        return private_dir(Path(override))
    if os.environ.get("XDG_RUNTIME_DIR"):
        return private_dir(Path(os.environ["XDG_RUNTIME_DIR"]) / "undebug")
    return private_dir(Path(f"/tmp/undebug-{os.getuid()}"))


def shared_memory_dir() -> Path | None:
    """A private directory in tmpfs for guest RAM files, or None where there is none."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK | os.X_OK):
        return None
    try:
        return private_dir(shm / f"undebug-{os.getuid()}")
    except EnvironmentMissing:
        return None


def private_dir(base: Path) -> Path:
    """``base`` created 0700, refused unless it is a real directory owned by this user
    (a shared /tmp or /dev/shm could hold someone else's directory or symlink there)."""
    try:
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = base.lstat()
    except OSError as exc:
        raise EnvironmentMissing(f"cannot create directory {base}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise EnvironmentMissing(
            f"{base} is not a directory owned by you",
            hint="remove it or set UNDEBUG_RUNTIME_DIR to a private directory",
        )
    if info.st_mode & 0o077:
        base.chmod(0o700)
    return base


def validate_name(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(
            f"bad session name {name!r}",
            hint="use 1-48 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


@dataclass(frozen=True)
class SessionDir:
    """The files of one session; the supervisor writes them, front ends read them."""

    path: Path

    @classmethod
    def named(cls, name: str) -> SessionDir:
        return cls(runtime_dir() / validate_name(name))

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def control_socket(self) -> Path:
        return self.path / "control.sock"

    @property
    def record_file(self) -> Path:
        return self.path / "session.json"

    @property
    def console_log(self) -> Path:
        return self.path / "console.log"

    @property
    def trace_file(self) -> Path:
        """The guest's trace stream as received (tracers/FORMAT.md), appended live."""
        return self.path / "trace.utrace"

    @property
    def supervisor_log(self) -> Path:
        return self.path / "supervisor.log"

    def create(self) -> None:
        """Make a fresh directory, replacing an ended session of the same name."""
        if self.path.exists():
            if self.is_alive():
                raise UsageError(
                    f"a guest named {self.name!r} is already running",
                    hint=f"pick another --name, or end it with: undebug kill {self.name}",
                )
            shutil.rmtree(self.path)
        longest = self.path / "control.sock"
        if len(os.fsencode(longest)) > UNIX_PATH_MAX:
            raise EnvironmentMissing(
                f"session path {longest} is too long for a unix socket",
                hint="set UNDEBUG_RUNTIME_DIR to a shorter directory",
            )
        self.path.mkdir(mode=0o700)

    def read_record(self) -> dict[str, Any]:
        try:
            record = json.loads(self.record_file.read_text())
        except FileNotFoundError:
            raise SessionError(f"no guest named {self.name!r}",
                               hint="list guests with: undebug ps") from None
        except (OSError, ValueError) as exc:
            raise SessionError(f"session record of {self.name!r} is unreadable: {exc}") from None
        if not isinstance(record, dict):
            raise SessionError(f"session record of {self.name!r} is corrupt")
        return record

    def write_record(self, record: dict[str, Any]) -> None:
        """Replace session.json atomically so a reader never sees half a record."""
        tmp = self.record_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, indent=2)
            tmp.replace(self.record_file)
        except OSError:
            tmp.unlink(missing_ok=True)  # a full disk leaves no half-written copy
            raise

    def is_alive(self) -> bool:
        """Whether a supervisor answers on the control socket."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2.0)
            try:
                sock.connect(str(self.control_socket))
            except OSError:
                return False
        return True

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def sessions() -> Iterator[SessionDir]:
    """Every session directory, alive or ended, by name."""
    for path in sorted(runtime_dir().iterdir()):
        if path.is_dir() and (path / "session.json").exists():
            yield SessionDir(path)
