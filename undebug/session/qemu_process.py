"""A QEMU process the supervisor starts: its command line run with guest RAM shared, tied
to the supervisor's life, watched until it exits.

QEMU gets ``PR_SET_PDEATHSIG`` so it never outlives its supervisor, even on ``kill -9``;
its guest RAM is a memfd (session/ram.py) so nothing of it is left behind either.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import os
import signal
import time
from pathlib import Path

from undebug.errors import UndebugError
from undebug.session.ram import guest_ram, read_only
from undebug.text import escape
from undebug.vm.qemu import QemuConfig, find_qemu

__all__ = ["QemuProcess"]

log = logging.getLogger("undebug.supervisor")

PR_SET_PDEATHSIG = 1
START_TIMEOUT = 10.0


def _die_with_parent() -> None:
    """In QEMU's child process: get SIGKILL when the supervisor dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class QemuProcess:
    """One QEMU child. ``ram_fd`` is a read-only descriptor of its guest RAM (None when
    it could not be shared); the supervisor hands it to clients."""

    def __init__(self, stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self.process: asyncio.subprocess.Process | None = None
        self.ram_fd: int | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, config: QemuConfig) -> None:
        """Run QEMU (it starts with ``-S``: no guest instruction yet)."""
        ram = guest_ram(config.memory_mb << 20)
        command = dataclasses.replace(config, ram_fd=ram).command_line(find_qemu())
        log.info("starting %s", " ".join(command))
        stderr = self.stderr_path.open("wb")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr, preexec_fn=_die_with_parent, pass_fds=() if ram is None else (ram,))
        finally:
            stderr.close()
            if ram is not None:  # QEMU has its own; clients get a read-only one
                self.ram_fd = read_only(ram)
                os.close(ram)

    async def wait_for_sockets(self, *paths: Path) -> None:
        """Until QEMU listens on its sockets, or say why it does not. The file appears at
        bind(), a moment before listen(): a connect in between is refused."""
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(paths):
            if not self.running:
                raise UndebugError(f"QEMU failed to start: {self.error() or 'no message'}")
            if time.monotonic() > deadline:
                raise UndebugError(f"QEMU did not open its sockets within {START_TIMEOUT:g} s")
            await asyncio.sleep(0.01)

    async def wait(self) -> int:
        """QEMU's exit status (negative: the signal that killed it)."""
        assert self.process is not None
        status = await self.process.wait()
        log.info("QEMU exited with status %s", status)
        return status

    async def failed(self, within: float = 1.0) -> str | None:
        """Why QEMU ended, if it ends within ``within`` seconds (a start that failed
        after it made its sockets); None while it runs."""
        assert self.process is not None
        try:
            await asyncio.wait_for(asyncio.shield(self.process.wait()), within)
        except TimeoutError:
            return None
        return f"QEMU failed to start: {self.error() or 'no message'}"

    def kill(self) -> None:
        if self.running:
            assert self.process is not None
            self.process.kill()

    def error(self) -> str | None:
        """QEMU's last line on stderr (escaped), the reason when it failed."""
        try:
            text = self.stderr_path.read_bytes()[-2000:]
        except OSError:
            return None
        lines = [escape(line) for line in text.decode(errors="replace").splitlines() if line]
        return lines[-1] if lines else None

    def close(self) -> None:
        if self.ram_fd is not None:
            os.close(self.ram_fd)
            self.ram_fd = None


_SO_ACCEPTCON = 0x10000  # the Flags bit of a listening socket in /proc/net/unix


def _listening(paths: tuple[Path, ...]) -> bool:
    """Whether a unix socket listens at every one of ``paths`` (/proc/net/unix; where
    that cannot be read, whether the socket files exist)."""
    try:
        with open("/proc/net/unix") as table:
            rows = table.read().splitlines()[1:]
    except OSError:
        return all(path.exists() for path in paths)
    listening = set()
    for row in rows:
        fields = row.split(maxsplit=7)
        if len(fields) == 8 and int(fields[3], 16) & _SO_ACCEPTCON:
            listening.add(fields[7])
    return all(str(path) in listening for path in paths)
