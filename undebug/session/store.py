"""Where sessions live on disk: a 0700 per-user runtime dir with one directory per guest.

A session directory holds the supervisor's control socket, QEMU's QMP and gdbstub
sockets, the console log and ``session.json``, the record the supervisor keeps current
(run state, outcome) so ``ps`` and ``logs`` work even after the guest has ended.

Many ``undebug run`` may start at once, so a directory is claimed, never checked for and
then made: names are taken under one lock (``.lock`` in the runtime dir), and a session's
``lock`` file is held (``flock``) for as long as its guest lives, by the command that
created it and then by its supervisor, which inherits the same open file. A session whose
lock nobody holds has ended, even when its supervisor died by ``kill -9``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import select
import shutil
import socket
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from undebug.errors import EnvironmentMissing, SessionError, UsageError
from undebug.vm.qemu import QemuFiles

__all__ = [
    "SessionClaim",
    "SessionDir",
    "claim_default_name",
    "has_ended",
    "keep_log",
    "log_path",
    "private_dir",
    "runtime_dir",
    "sessions",
    "validate_name",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the NUL
KEEP_LOGS = 20


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
    try:
        if info.st_mode & 0o077:
            base.chmod(0o700)
    except OSError as exc:
        raise EnvironmentMissing(f"cannot make {base} private (mode {stat.S_IMODE(info.st_mode):04o}): "
                                 f"{exc.strerror}") from None
    if not os.access(base, os.R_OK | os.W_OK | os.X_OK):
        raise EnvironmentMissing(
            f"{base} is not writable (mode {stat.S_IMODE(info.st_mode):04o}, or a read-only "
            "file system)",
            hint=f"chmod 700 {base}, or set UNDEBUG_RUNTIME_DIR to a private directory",
        )
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
        """The session of an existing guest's ``name`` (a path there is a dump bundle
        given to a command that needs a live guest)."""
        if "/" in name:  # a path: likely a dump bundle, which inspection commands take
            raise UsageError(
                f"{name!r} is a path, not a running guest: a dump bundle can be inspected "
                "(threads, bt, regs, mem, sym, trace show --flight-recorder) but never "
                "run, stopped, stepped or given breakpoints",
                hint="name a live guest (see undebug ps)",
            )
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
    def qemu_files(self) -> QemuFiles:
        """QEMU's sockets (QMP, gdbstub, the trace port) and console, in this directory."""
        return QemuFiles(qmp_socket=self.path / "qmp.sock", gdb_socket=self.path / "gdb.sock",
                         trace_socket=self.path / "trace.sock", console_log=self.console_log)

    @property
    def trace_file(self) -> Path:
        """The guest's trace stream as received (tracers/FORMAT.md), appended live."""
        return self.path / "trace.utrace"

    @property
    def export_state(self) -> Path:
        """``trace export NAME --follow``'s counts, rewritten as it sends (ps shows them)."""
        return self.path / "export.json"

    @property
    def export_log(self) -> Path:
        """The output of the live export ``run --otlp`` started."""
        return self.path / "export.log"

    @property
    def supervisor_log(self) -> Path:
        return self.path / "supervisor.log"

    @property
    def lock_file(self) -> Path:
        """Held (flock) while the guest lives: see the module docstring."""
        return self.path / "lock"

    def claim(self) -> SessionClaim:
        """Make this session's directory and hold it, replacing an ended session of the
        same name; a guest of that name that is running (or starting) is refused."""
        with _names_lock():
            try:
                return self._claim_new()
            except FileExistsError:
                pass
            if self._is_held():
                raise UsageError(
                    f"a guest named {self.name!r} is already running",
                    hint=f"pick another --name, or end it with: undebug kill {self.name}",
                ) from None
            self._move_aside()
            claim = self._claim_new()
        _delete_aside()
        return claim

    def _claim_new(self) -> SessionClaim:
        """mkdir (FileExistsError if the name is taken), then hold its lock; called with
        the names lock held, so no one sees the directory before its lock is held."""
        if len(os.fsencode(self.control_socket)) > UNIX_PATH_MAX:
            raise EnvironmentMissing(
                f"session path {self.control_socket} is too long for a unix socket",
                hint="set UNDEBUG_RUNTIME_DIR to a shorter directory",
            )
        self.path.mkdir(mode=0o700)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return SessionClaim(self, fd)

    def _is_held(self) -> bool:
        """Whether a live command or supervisor holds the session (names lock held)."""
        try:
            fd = os.open(self.lock_file, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def _move_aside(self) -> Path:
        """Rename the directory out of the way (atomic; names lock held) and return where
        it went, to be deleted without the lock. Hidden names are never sessions."""
        aside = self.path.with_name(f".ended-{self.name}-{secrets.token_hex(4)}")
        self.path.rename(aside)
        return aside

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
        sock = self.watch()
        if sock is not None:
            sock.close()
        return sock is not None

    def watch(self) -> socket.socket | None:
        """A connection to the supervisor to keep while waiting for its end, which
        :func:`has_ended` then sees without waking it (a connect per look would); None
        when none answers."""
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(2.0)
        try:
            sock.connect(str(self.control_socket))
        except OSError:
            sock.close()
            return None
        return sock

    def remove_ended(self, wait: float = 0.0) -> bool:
        """Delete the session once its guest has ended (waiting up to ``wait`` seconds
        for its supervisor and the command that started it to go); one that is running,
        or that a new guest of the same name holds by now, stays. True if deleted."""
        deadline = time.monotonic() + wait
        while True:
            with _names_lock():
                if not self.path.exists():
                    return False
                if not self._is_held():
                    aside = self._move_aside()
                    break
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        shutil.rmtree(aside, ignore_errors=True)
        return True


@dataclass
class SessionClaim:
    """A session directory this process made and holds until :meth:`release`. The
    supervisor it starts inherits ``fd`` and with it the hold."""

    session: SessionDir
    fd: int
    _open: bool = field(default=True, repr=False)

    def release(self) -> None:
        if self._open:
            self._open = False
            os.close(self.fd)

    def remove(self, wait: float = 10.0) -> None:
        """Let go of the session and delete it once its supervisor, too, has gone (at
        most ``wait`` seconds), so that no process of it outlives the caller."""
        self.release()
        self.session.remove_ended(wait)


@contextlib.contextmanager
def _names_lock() -> Iterator[None]:
    """One creator or remover of session directories at a time, across processes."""
    fd = os.open(runtime_dir() / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def claim_default_name(stem: str) -> SessionClaim:
    """The first of ``stem``, ``stem-2``, ... that no session, running or ended, has. A
    directory whose guest never started (the command that made it died first: no lock
    held, no record) does not count."""
    with _names_lock():
        for n in range(1, 1000):
            session = SessionDir.named(stem if n == 1 else f"{stem}-{n}")
            try:
                return session._claim_new()
            except FileExistsError:
                if session.record_file.exists() or session._is_held():
                    continue
            session._move_aside()
            claim = session._claim_new()
            break
        else:
            raise UsageError(f"no free name for {stem}: end old guests (undebug ps) or pass "
                             "--name")
    _delete_aside()
    return claim


def _delete_aside() -> None:
    """Delete the directories moved aside (``.ended-*``): the mover deletes its own at
    once, so these are what a killed one left, or what it is deleting right now, which
    two can do together."""
    for path in runtime_dir().iterdir():
        if path.name.startswith(".ended-"):
            shutil.rmtree(path, ignore_errors=True)


def keep_log(path: Path, label: str) -> Path | None:
    """Move ``path`` into the runtime dir's ``logs/`` (the newest few are kept), to name
    it in an error after its session directory is gone; None if there is no such file."""
    kept = log_path(label)
    try:
        path.rename(kept)
    except OSError:
        return None
    return kept


def log_path(label: str) -> Path:
    """A new file name in the runtime dir's ``logs/`` for a log worth keeping (a failed
    start, an internal error); older ones beyond the newest :data:`KEEP_LOGS` go."""
    directory = private_dir(runtime_dir() / "logs")
    logs = []
    for path in directory.iterdir():
        with contextlib.suppress(OSError):  # another undebug may be pruning too
            logs.append((path.stat().st_mtime, path))
    for _, stale in sorted(logs)[: max(0, len(logs) - KEEP_LOGS + 1)]:
        with contextlib.suppress(OSError):
            stale.unlink()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return directory / f"{stamp}-{label}-{os.getpid()}.log"


def sessions() -> Iterator[SessionDir]:
    """Every session directory, alive or ended, by name."""
    for path in sorted(runtime_dir().iterdir()):
        if _NAME.match(path.name) and path.is_dir() and (path / "session.json").exists():
            yield SessionDir(path)


def has_ended(watch: socket.socket) -> bool:
    """Whether the supervisor behind a :meth:`SessionDir.watch` connection has gone (it
    closed the connection): a look at this process's own socket, no request."""
    ready, _, _ = select.select([watch], [], [], 0)
    if not ready:
        return False
    try:
        return not watch.recv(1, socket.MSG_PEEK)
    except OSError:
        return True
