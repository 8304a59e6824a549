"""A GDB/MI session: gdb for what it does best (C expressions, types), driven from Python.

pygdbmi's parser (``gdbmiparser.parse_response``) turns one MI line into a dict; the I/O
is ours, because pygdbmi's ``write()`` reads until a timeout rather than until the reply
(0.2 s per command by default) and does not match replies to commands (its issues #33,
#89, #104). Here:

- every command carries a token (``7-data-evaluate-expression "x"``); one reader thread
  routes the ``7^done``/``^error``/``^running``/``^connected``/``^exit`` result to the
  caller waiting on token 7, and the command ends at the ``(gdb)`` prompt after it;
- async records (``*stopped``, ``*running``, ``=thread-*``, ``=breakpoint-modified``) and
  stream records (``~`` console, ``@`` target, ``&`` log) go to an event queue; console
  text printed while a command runs is also kept with its reply (``whatis`` answers so);
- every wait has a timeout, and gdb dying fails every waiter at once with its stderr;
- ``-gdb-set mi-async on`` is sent before any target connection: without it gdb cannot
  take ``-exec-interrupt`` while the target runs and the command hangs.

Bulk data never goes through MI (16 MiB of ``-data-read-memory-bytes`` took 9.2 s here,
raw RSP 0.48 s): read memory with :mod:`undebug.gdb.rsp` or a ``Target``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pygdbmi.gdbmiparser import parse_response

from undebug.errors import EnvironmentMissing, UndebugError, UsageError
from undebug.gdb.mi_records import (
    ExitEvent,
    GdbThread,
    MiEvent,
    MiResult,
    NotifyEvent,
    RunningEvent,
    StopEvent,
    StreamEvent,
    Value,
    event_from_record,
)

__all__ = ["GdbExited", "MiError", "MiSession", "MiTimeout", "c_string", "gdb_path"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
MAX_LINE = 64 << 20  # one MI line; bulk data has no business here
MAX_EVENTS = 10_000  # queued events kept; older ones are dropped (and counted)

# Settings gdb takes before it reads anything: no init files (-nx), no banner (-q), no
# network look-ups for debug info, no terminal styling inside MI strings.
_GDB_ARGS = ["--interpreter=mi3", "-nx", "-q",
             "-iex", "set debuginfod enabled off", "-iex", "set style enabled off"]
_TOKEN_RESULT = re.compile(r"^(\d*)\^")
_PROMPT = "(gdb)"


class MiError(UndebugError):
    """gdb answered ``^error``: ``message`` is gdb's own ``msg``."""

    def __init__(self, message: str, hint: str | None = None, command: str | None = None) -> None:
        super().__init__(message, hint)
        self.command = command


class MiTimeout(MiError):
    """gdb did not answer in time."""


class GdbExited(MiError):
    """gdb is gone (it crashed, was killed, or exited); nothing more can be asked."""


def gdb_path() -> str:
    """The gdb to run; :class:`EnvironmentMissing` (exit 3) if there is none."""
    path = shutil.which("gdb")
    if path is None:
        raise EnvironmentMissing("gdb is not installed",
                                 hint="install it with: sudo apt-get install gdb")
    return path


def c_string(text: str) -> str:
    """``text`` as an MI c-string argument. Control characters are refused: a newline
    would end the command and start another one."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise UsageError(f"{text!r} contains a control character",
                         hint="expressions and paths given to gdb must be one line of text")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class _Pending:
    """One command in flight: its reply, and the console text printed before it."""

    token: int
    text: str
    done: threading.Event = field(default_factory=threading.Event)
    result: MiResult | None = None
    error: MiError | None = None
    console: list[str] = field(default_factory=list)


class MiSession:
    """One gdb process speaking MI on a pipe. Use :meth:`start`; close it (or use
    ``with``) to end gdb: no gdb process outlives the session."""

    def __init__(self, argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT,
                 transcript: IO[str] | None = None) -> None:
        """Run ``argv`` (gdb with MI arguments, or a stand-in) and start reading it.
        ``transcript``, if given, receives ``> command`` lines and gdb's raw output."""
        self.timeout = timeout
        self._transcript = transcript
        # a file, not a pipe: it never fills up and blocks gdb; closed in close()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                start_new_session=True)  # Ctrl-C at the terminal is ours to handle, not gdb's
        except OSError as exc:
            self._stderr.close()
            raise EnvironmentMissing(f"cannot run {argv[0]}: {exc.strerror}",
                                     hint="install gdb with: sudo apt-get install gdb") from None
        self._transcript_lock = threading.Lock()
        self._tokens = itertools.count(1)
        self._write_lock = threading.Lock()
        self._lock = threading.Lock()  # guards everything below, shared with the reader
        self._pending: dict[int, _Pending] = {}
        self._executing: deque[_Pending] = deque()  # sent, no result yet (gdb's order)
        self._answered: deque[_Pending] = deque()  # result seen, waiting for the prompt
        self._events: deque[MiEvent] = deque(maxlen=MAX_EVENTS)
        self._event_ready = threading.Condition(self._lock)
        self.dropped_events = 0
        self._stops = 0  # *stopped records seen: a new stop is a change of this count
        self._last_stop: StopEvent | None = None
        self._running = False
        self._dead: GdbExited | None = None
        self.mi_async = False
        self._reader = threading.Thread(target=self._read_loop, name="gdb-mi-reader", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, elf: Path | str | None = None, *, gdb: Sequence[str] | None = None,
              timeout: float = DEFAULT_TIMEOUT, transcript: IO[str] | None = None) -> MiSession:
        """Start gdb (``gdb``: the command to run instead of ``gdb --interpreter=mi3 ...``),
        turn on mi-async, and load ``elf``'s symbols if given."""
        if gdb is None:
            gdb = [gdb_path(), *_GDB_ARGS]
        session = cls(gdb, timeout=timeout, transcript=transcript)
        try:
            session.command("-gdb-set mi-async on")
            session.mi_async = True
            if elf is not None:
                session.command(f"-file-exec-and-symbols {c_string(str(elf))}")
        except BaseException:
            session.close()
            raise
        return session

    def __enter__(self) -> MiSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- commands ------------------------------------------------------------------

    def send(self, text: str) -> _Pending:
        """Send one command with a fresh token; wait for it with :meth:`wait`."""
        if "\n" in text or "\r" in text:
            raise UsageError("an MI command must be one line", hint=repr(text))
        with self._lock:
            if self._dead is not None:
                raise GdbExited(self._dead.message, command=text)
            pending = _Pending(next(self._tokens), text)
            self._pending[pending.token] = pending
            self._executing.append(pending)
        line = f"{pending.token}{text}"
        with self._write_lock:
            self._record(f"> {line}")
            try:
                assert self._proc.stdin is not None
                self._proc.stdin.write(line.encode() + b"\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                self._reader.join(timeout=1.0)  # gdb has gone; let the reader say how
                with self._lock:
                    self._forget(pending)
                raise self._dead or GdbExited("gdb exited", command=text) from None
        return pending

    def wait(self, pending: _Pending, timeout: float | None = None) -> MiResult:
        """The result of ``pending``; raises :class:`MiError` on ``^error``."""
        timeout = self.timeout if timeout is None else timeout
        if not pending.done.wait(timeout):
            with self._lock:
                self._forget(pending)  # a late reply to this token is dropped
            raise MiTimeout(f"gdb did not answer {pending.text.split()[0]} within {timeout:g} s",
                            hint="the target may be unreachable or running; see the gdb log",
                            command=pending.text)
        if pending.error is not None:
            raise pending.error
        assert pending.result is not None
        return pending.result

    def command(self, text: str, timeout: float | None = None) -> MiResult:
        """Send an MI (or CLI) command and wait for its result."""
        return self.wait(self.send(text), timeout)

    def console(self, text: str, timeout: float | None = None) -> str:
        """A CLI command through ``-interpreter-exec console``; returns what it printed."""
        result = self.command(f"-interpreter-exec console {c_string(text)}", timeout)
        return "".join(result.console)

    # ---- target --------------------------------------------------------------------

    def connect(self, address: str, *, extended: bool = False,
                timeout: float | None = None) -> MiResult:
        """``target remote`` (or ``extended-remote``) to ``HOST:PORT`` or a unix socket path."""
        if not self.mi_async:  # without it -exec-interrupt hangs (FACTS.md)
            self.command("-gdb-set mi-async on")
            self.mi_async = True
        if not address or any(c.isspace() or c in "\"'\\" for c in address):
            raise UsageError(f"cannot hand {address!r} to gdb as a target address",
                             hint="use HOST:PORT or a unix socket path without spaces or quotes")
        kind = "extended-remote" if extended else "remote"
        return self.command(f"-target-select {kind} {address}", timeout)

    def detach(self, timeout: float | None = None) -> None:
        """``-target-detach``: the target runs on (gdb's detach resumes it)."""
        self.command("-target-detach", timeout)

    def disconnect(self, timeout: float | None = None) -> None:
        """``-target-disconnect``: drop the connection without detaching, so a stub that
        keeps state (our proxy) leaves the target as it is, stopped if it is."""
        self.command("-target-disconnect", timeout)

    def select_thread(self, thread: int) -> None:
        """Select gdb's thread number ``thread`` (see :meth:`thread_number`)."""
        self.command(f"-thread-select {int(thread)}")

    def threads(self) -> list[GdbThread]:
        """gdb's threads (``-thread-info``), with the target's id for each."""
        rows = self.command("-thread-info").payload.get("threads")
        found = [GdbThread.from_mi(row) for row in rows] if isinstance(rows, list) else []
        return [t for t in found if t is not None]

    def thread_number(self, remote_id: int) -> int:
        """gdb's number for the thread the stub calls ``remote_id``: gdb numbers threads
        in the order it learns of them, which need not be the stub's ids."""
        for thread in self.threads():
            if thread.remote_id == remote_id:
                return thread.number
        raise MiError(f"gdb has no thread the target calls {remote_id}")

    def evaluate(self, expression: str, thread: int | None = None) -> Value:
        """``expression``'s value (``-data-evaluate-expression``) and type (``whatis``),
        in ``thread`` if given (a gdb thread id)."""
        quoted = c_string(expression)
        if thread is not None:
            self.select_thread(thread)
        value = self.command(f"-data-evaluate-expression {quoted}").payload.get("value", "")
        type_ = None
        for line in self.console(f"whatis {expression}").splitlines():
            if line.startswith("type = "):
                type_ = line.removeprefix("type = ")
        return Value(expression, str(value), type_, thread)

    def cont(self, timeout: float | None = None) -> MiResult:
        """``-exec-continue``: returns at ``^running``; the target runs on."""
        return self.command("-exec-continue", timeout)

    def interrupt(self, timeout: float | None = None) -> StopEvent:
        """Stop a running target (``-exec-interrupt``) and return the stop."""
        with self._lock:
            seen = self._stops
        self.command("-exec-interrupt", timeout)
        return self.wait_stopped(timeout, after=seen)

    def wait_stopped(self, timeout: float | None = None, *, after: int | None = None) -> StopEvent:
        """The target's stop: the last one if it is stopped now (or the first stop after
        ``after`` stops were counted). Raises :class:`MiTimeout` if it runs on."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                if self._dead is not None:
                    raise self._dead
                new = self._stops > after if after is not None else not self._running
                if new and self._last_stop is not None:
                    return self._last_stop
                left = deadline - time.monotonic()
                if left <= 0:
                    raise MiTimeout(f"the target did not stop within {timeout:g} s")
                self._event_ready.wait(left)

    @property
    def running(self) -> bool:
        with self._lock:
            return self._running

    # ---- events --------------------------------------------------------------------

    def events(self, timeout: float = 0.0) -> list[MiEvent]:
        """Every queued event (oldest first), waiting up to ``timeout`` for the first."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self._events and self._dead is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._event_ready.wait(left)
            events = list(self._events)
            self._events.clear()
            return events

    # ---- end -----------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._proc.pid

    def close(self, timeout: float = 3.0) -> None:
        """End gdb: ``-gdb-exit`` (gdb detaches from a remote target: a stopped one first,
        since gdb cannot detach while it runs), then SIGKILL if it does not go within
        ``timeout``. Safe to call more than once."""
        if self._proc.poll() is None and self._dead is None:
            if self.running:
                with contextlib.suppress(MiError, UsageError):
                    self.interrupt(timeout=timeout)
            with contextlib.suppress(MiError, UsageError):
                self.command("-gdb-exit", timeout=timeout)
        try:
            self._proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()  # this process only
            self._proc.wait()
        self._reader.join(timeout=timeout)
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._stderr.close()

    # ---- the reader thread -----------------------------------------------------------

    def _read_loop(self) -> None:
        assert self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        buffer = b""
        try:
            while True:
                data = os.read(fd, 1 << 16)
                if not data:
                    break
                *lines, buffer = (buffer + data).split(b"\n")
                for raw in lines:
                    self._line(raw.decode("utf-8", errors="replace").rstrip("\r"))
                if len(buffer) > MAX_LINE:
                    log.error("gdb sent a line longer than %d bytes; giving up on it", MAX_LINE)
                    self._proc.kill()
                    break
        except OSError as exc:
            log.debug("reading gdb: %s", exc)
        except Exception:  # a bug here must not leave callers waiting forever
            log.exception("gdb MI reader failed")
            self._proc.kill()
        self._gdb_gone()

    def _line(self, line: str) -> None:
        self._record(line)
        if line.rstrip() == _PROMPT:
            with self._lock:
                if self._answered:
                    self._finish(self._answered.popleft())
            return
        if not line:
            return
        match = _TOKEN_RESULT.match(line)
        if match:
            self._result(line, int(match.group(1)) if match.group(1) else None)
            return
        prefix = line.lstrip("0123456789")[:1]
        if prefix == "+":  # status async (download progress): not parsed by pygdbmi
            event: MiEvent = NotifyEvent(line[1:].split(",", 1)[0])
        else:
            event = event_from_record(prefix, parse_response(line))
        with self._lock:
            if isinstance(event, StreamEvent) and event.kind == "console" and self._executing:
                self._executing[0].console.append(event.text)
            elif isinstance(event, StopEvent):
                self._stops += 1
                self._last_stop = event
                self._running = False
            elif isinstance(event, RunningEvent):
                self._running = True
            self._post(event)

    def _result(self, line: str, token: int | None) -> None:
        record = parse_response(line)
        cls = str(record.get("message"))
        payload = record.get("payload")
        payload = payload if isinstance(payload, dict) else {}
        with self._lock:
            if token is None:  # no token: gdb answers in order, so the oldest command
                pending = self._executing[0] if self._executing else None
            else:
                pending = self._pending.get(token)
            if pending is None:
                log.debug("dropping a reply nobody waits for: %s", line[:200])
                return
            with contextlib.suppress(ValueError):
                self._executing.remove(pending)
            if cls == "error":
                message = str(payload.get("msg", "gdb reported an error"))
                pending.error = MiError(message, command=pending.text)
            else:
                pending.result = MiResult(token, cls, payload, tuple(pending.console))
            if cls == "exit":  # gdb prints no prompt after ^exit
                self._finish(pending)
            else:
                self._answered.append(pending)

    def _record(self, line: str) -> None:
        if self._transcript is not None:
            with self._transcript_lock:
                self._transcript.write(line + "\n")

    def _finish(self, pending: _Pending) -> None:
        self._pending.pop(pending.token, None)
        pending.done.set()

    def _forget(self, pending: _Pending) -> None:
        self._pending.pop(pending.token, None)
        for queue in (self._executing, self._answered):
            with contextlib.suppress(ValueError):
                queue.remove(pending)

    def _post(self, event: MiEvent) -> None:
        if len(self._events) == self._events.maxlen:
            self.dropped_events += 1
        self._events.append(event)
        self._event_ready.notify_all()

    def _gdb_gone(self) -> None:
        status = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            status = self._proc.wait(timeout=1.0)
        try:
            self._stderr.seek(0)
            lines = self._stderr.read()[-4000:].decode("utf-8", "replace").strip().splitlines()
        except (OSError, ValueError):
            lines = []
        why = f"status {status}" if status is not None else "its output closed"
        detail = f": {lines[-1]}" if lines else ""
        error = GdbExited(f"gdb exited ({why}){detail}",
                          hint="\n".join(lines[-5:]) if len(lines) > 1 else None)
        with self._lock:
            self._dead = error
            waiting = [p for p in self._pending.values() if not p.done.is_set()]
            for pending in waiting:  # an answer only missing its prompt stands
                if pending.result is None and pending.error is None:
                    pending.error = GdbExited(error.message, error.hint, pending.text)
                self._finish(pending)
            self._executing.clear()
            self._answered.clear()
            self._post(ExitEvent(status))

