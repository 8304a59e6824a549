"""A CPU-bound step of a dump computed in a forked child while the dump goes on.

Decoding the flight recorder (~0.3 s of numpy and Python for the reference guest's rings)
does not need the guest, only bytes already read: a child process decodes them on the
other core while the parent walks threads and writes the core. A thread would not help
(the GIL). Fork only where it is safe: a process with other threads (the gdbserver's
``monitor dump``) may fork while one of them holds a lock the child would need, so there
the step runs inline, as it does when fork fails or the child does not answer.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Beside"]

T = TypeVar("T")


class Beside(Generic[T]):
    """``fn(*args)``, started now, its value from :meth:`result` (picklable values only)."""

    def __init__(self, fn: Callable[..., T], *args: object) -> None:
        self._fn, self._args = fn, args
        self._pid: int | None = None
        self._fd = -1
        if threading.active_count() == 1:
            self._fork()

    def _fork(self) -> None:
        read, write = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read)
            os.close(write)
            return
        if pid == 0:  # the child: compute, send, and leave without the parent's exit path
            code = 1
            try:
                os.close(read)
                data = memoryview(pickle.dumps(self._fn(*self._args)))
                while data:
                    data = data[os.write(write, data):]
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        self._pid, self._fd = pid, read

    def close(self) -> None:
        """End a child whose value is no longer wanted (the dump failed before it)."""
        if self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)
            os.close(self._fd)
            self._pid = None

    def result(self) -> T:
        """The value; where the child failed (or none was forked), computed here."""
        if self._pid is None:
            return self._fn(*self._args)
        chunks = []
        try:
            while chunk := os.read(self._fd, 1 << 20):
                chunks.append(chunk)
        finally:
            os.close(self._fd)
            _, status = os.waitpid(self._pid, 0)
            self._pid = None
        if os.waitstatus_to_exitcode(status) != 0 or not chunks:
            return self._fn(*self._args)  # the child raised or was killed: say it here
        value: T = pickle.loads(b"".join(chunks))  # our own child's bytes
        return value
