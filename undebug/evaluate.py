"""C expressions evaluated by gdb, through undebug's gdbserver for the guest.

gdb knows C expressions and DWARF types better than anything we would write, so an
evaluation starts our gdbserver proxy for the guest (``undebug gdbserver``, which serves
guest threads as gdb threads), connects gdb to it over GDB/MI (:mod:`undebug.gdb.mi`),
evaluates, and ends both again, also on Ctrl-C. ``undebug eval`` evaluates one
expression; the TUI's watch pane evaluates its list at each stop through one connection
(:func:`evaluate_all`).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

from undebug.errors import EXIT_ENVIRONMENT, EnvironmentMissing, SessionError, UndebugError, UsageError

if TYPE_CHECKING:  # the real import is lazy, for start-up time
    from undebug.gdb.mi import MiSession

__all__ = ["Evaluation", "Gdbserver", "evaluate_all", "evaluate_at", "evaluate_in", "evaluate_with"]

PROXY_START_TIMEOUT = 20.0  # the proxy imports, asks the supervisor, and listens
_TARGET_IN_LINE = re.compile(r"target (?:extended-)?remote (\S+?)\)?\s*$")
_LISTENING = re.compile(r"listening on (\S+)")


class Gdbserver:
    """``undebug gdbserver TARGET`` as a child process on a unix socket in the guest's
    session directory (0700: only we can connect); ended with SIGINT (its clean Ctrl-C
    path), then harder if need be. If we are killed (even by SIGKILL) it ends too: it
    gets SIGTERM when its parent dies (``--parent-pid``), and nothing named is left
    behind but its socket, which it removes. It starts in the background:
    :meth:`listening` waits until gdb can connect."""

    def __init__(self, target: str, session_dir: Path, *, elf: Path | None = None,
                 force: bool = False) -> None:
        import subprocess  # here, not at the top: every command's start-up imports this module
        import tempfile

        self.address = str(session_dir / f"eval-{os.getpid()}.sock")
        argv = [sys.executable, "-m", "undebug.cli", "gdbserver", target, "--listen", self.address,
                "--parent-pid", str(os.getpid())]
        if elf is not None:
            argv += ["--elf", str(elf)]
        if force:
            argv.append("--force")
        # Unnamed files, not pipes: nobody has to drain them while gdb works, and nothing
        # is left on disk whoever dies first.
        self._stdout: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._stdout,
                                      stderr=self._stderr, start_new_session=True)
        self._listening = False

    def listening(self, timeout: float = PROXY_START_TIMEOUT) -> str:
        """The address gdb connects to, once the proxy has printed it; its error if it
        exited instead."""
        deadline = time.monotonic() + timeout
        while not self._listening:
            first = os.pread(self._stdout.fileno(), 4096, 0).split(b"\n", 1)
            if len(first) == 2:
                line = first[0].decode("utf-8", "replace")
                found = _TARGET_IN_LINE.search(line) or _LISTENING.search(line)
                if found:
                    self.address = found.group(1)
                self._listening = True
                break
            if self._proc.poll() is not None:
                raise self._failure()
            if time.monotonic() > deadline:
                raise SessionError(f"undebug gdbserver did not listen within {timeout:g} s",
                                   hint="is the guest's supervisor busy? see undebug ps")
            time.sleep(0.01)
        return self.address

    def _failure(self) -> UndebugError:
        """The proxy's own error (it follows docs/cli.md), with its exit code."""
        message, hint = f"undebug gdbserver exited with status {self._proc.returncode}", None
        for line in self.stderr_lines():
            if line.startswith("undebug: error: "):
                message = line.removeprefix("undebug: error: ")
            elif line.strip().startswith("hint: "):
                hint = line.strip().removeprefix("hint: ")
        error: UndebugError = (EnvironmentMissing if self._proc.returncode == EXIT_ENVIRONMENT
                               else UsageError)(message, hint)
        return error

    def stderr_lines(self) -> list[str]:
        with contextlib.suppress(OSError, ValueError):
            size = os.fstat(self._stderr.fileno()).st_size
            tail = os.pread(self._stderr.fileno(), 16_000, max(0, size - 16_000))
            return tail.decode("utf-8", "replace").splitlines()
        return []

    def close(self, timeout: float = 5.0) -> None:
        import signal
        import subprocess

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if self._proc.poll() is not None:
                break
            self._proc.send_signal(sig)  # this PID only
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=timeout)
        self._proc.wait()
        self._stdout.close()
        self._stderr.close()
        with contextlib.suppress(OSError):  # if it was killed before it could
            os.unlink(self.address)

    def __enter__(self) -> Gdbserver:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@dataclass(frozen=True)
class Evaluation:
    """One expression's value and type as gdb gives them, or gdb's error (then ``hint``
    says what to do)."""

    expression: str
    value: str = ""
    type: str | None = None
    error: str | None = None
    hint: str | None = None


def evaluate_with(mi: MiSession, address: str, expression: str, thread: int | None = None,
                  warnings: list[str] | None = None, *, resume: bool = True) -> tuple[str, str | None]:
    """:func:`evaluate_all` of one expression: its value and type; gdb's error is a usage
    error."""
    [result] = evaluate_all(mi, address, [expression], thread, warnings, resume=resume)
    if result.error is not None:
        raise UsageError(result.error, hint=result.hint)
    return result.value, result.type


def evaluate_all(mi: MiSession, address: str, expressions: list[str], thread: int | None = None,
                 warnings: list[str] | None = None, *, resume: bool = True) -> list[Evaluation]:
    """Connect ``mi``'s gdb to the gdbserver at ``address`` and evaluate each expression
    (in the thread the server calls ``thread``: for undebug's gdbserver a guest thread id,
    which need not be gdb's own thread number). A thread gdb does not know is a usage
    error; an expression gdb refuses is that expression's ``error``. Then gdb detaches
    (the target runs on) if ``resume``, else it disconnects and leaves the target
    stopped. gdb's warnings are added to ``warnings``."""
    from undebug.gdb.mi import GdbExited, MiError, MiTimeout
    from undebug.gdb.mi_records import StreamEvent

    results = []
    try:
        mi.connect(address)
        if thread is not None:
            try:
                mi.select_thread(mi.thread_number(thread))
            except MiError as exc:
                if isinstance(exc, (MiTimeout, GdbExited)):
                    raise
                raise UsageError(f"no thread {thread}: {exc.message}",
                                 hint="see undebug threads for the guest's thread ids") from None
        for expression in expressions:
            try:
                value = mi.evaluate(expression)
            except MiError as exc:
                if isinstance(exc, (MiTimeout, GdbExited)):
                    raise
                results.append(Evaluation(expression, error=exc.message, hint="the expression "
                                          "is C, with the ELF's symbols and types; gdb's own "
                                          "message is above"))
            else:
                results.append(Evaluation(expression, value.value, value.type))
    finally:  # also on Ctrl-C, even in the middle of connect
        if not resume:  # else close() quits gdb, which detaches
            with contextlib.suppress(MiError):
                mi.disconnect()
        if warnings is not None:
            warnings += [e.text.strip().removeprefix("warning: ") for e in mi.events()
                         if isinstance(e, StreamEvent) and e.kind == "log"
                         and e.text.startswith("warning: ")]
    return results


def evaluate_in(name: str, expressions: list[str], thread: int | None = None,
                warnings: list[str] | None = None, *, elf: Path | None = None,
                force: bool = False) -> list[Evaluation]:
    """Evaluate ``expressions`` in the guest ``name`` (``undebug eval NAME EXPR``), through
    one gdbserver and one gdb. A running guest is paused for the evaluation and resumed
    after; a stopped one stays stopped. An expression that is not one line of text is
    that expression's error."""
    from undebug.gdb.mi import MiSession, c_string, gdb_path
    from undebug.session.client import SupervisorClient
    from undebug.session.store import SessionDir

    gdb_path()  # before anything starts: no gdb is exit 3
    results: dict[int, Evaluation] = {}
    for i, expression in enumerate(expressions):
        try:
            c_string(expression)
        except UsageError as exc:
            results[i] = Evaluation(expression, error=exc.message, hint=exc.hint)
    asked = [e for i, e in enumerate(expressions) if i not in results]
    from undebug.coretarget import is_bundle

    if is_bundle(name):
        if asked:
            found = iter(_evaluate_bundle(name, asked, thread, warnings, elf, force))
            for i in range(len(expressions)):
                if i not in results:
                    results[i] = next(found)
        return [results[i] for i in range(len(expressions))]
    session = SessionDir.named(name)
    with SupervisorClient(session) as client:
        status = client.status()
    elf_path = elf or (Path(status.elf) if status.elf else None)
    if elf_path is None:
        raise UsageError(f"no ELF known for guest {name!r}",
                         hint="pass --elf with the guest's ELF (symbols and DWARF)")
    if asked:
        # Connecting stops the guest; gdb's detach would resume it even if it was stopped
        # before (paused, at a breakpoint): then gdb disconnects instead and it stays stopped.
        # gdb starts (and reads the ELF) while the proxy starts: they do not need each other yet
        programs = _program_files(name, elf, force)
        with Gdbserver(name, session.path, elf=elf, force=force) as proxy, \
                MiSession.start(elf_path) as mi:
            for path, offset in programs:  # their symbols where the guest runs them
                mi.console(f"add-symbol-file {path} -o {offset:#x}")
            found = iter(evaluate_all(mi, proxy.listening(), asked, thread, warnings,
                                      resume=status.running))
            if warnings is not None:
                warnings += [line.removeprefix("gdbserver: warning: ")
                             for line in proxy.stderr_lines()
                             if line.startswith("gdbserver: warning: ")]
        for i in range(len(expressions)):
            if i not in results:
                results[i] = next(found)
    return [results[i] for i in range(len(expressions))]


def _program_files(name: str, elf: Path | None, force: bool) -> list[tuple[Path, int]]:
    """The guest's programs and their libraries (``run --debug-elf``, the dynamic
    linker's ``link_map``) at their load offsets, as every other command finds their
    symbols (:func:`undebug.os.locate.locate`): gdb is handed them with
    ``add-symbol-file -o``. A file gdb's command line could not take whole is left out."""
    from undebug.os import provider_for
    from undebug.target import open_target

    with open_target(name, elf, force=force) as target:
        if not target.programs:
            return []
        provider_for(target)  # places the PIEs, finds the libraries
        return [(e.code_path, o) for e, o in target.programs
                if not any(c.isspace() or c in "\"'\\" for c in str(e.code_path))]


def _evaluate_bundle(bundle: str, asked: list[str], thread: int | None,
                     warnings: list[str] | None, elf: Path | None,
                     force: bool) -> list[Evaluation]:
    """A dump bundle's values: gdb on ``undebug gdbserver BUNDLE`` (it serves the dump
    read-only), its socket in a private 0700 directory, gdb disconnected after."""
    import shutil
    import tempfile

    from undebug.gdb.mi import MiSession
    from undebug.target import guest_elf

    elf_path = elf or guest_elf(bundle).path
    private = Path(tempfile.mkdtemp(prefix="undebug-eval-"))
    try:
        with Gdbserver(bundle, private, elf=elf, force=force) as proxy, \
                MiSession.start(elf_path) as mi:
            return evaluate_all(mi, proxy.listening(), asked, thread, warnings, resume=False)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def evaluate_at(address: str, elf: Path | None, expression: str, thread: int | None = None,
                warnings: list[str] | None = None, *, resume: bool = True) -> tuple[str, str | None]:
    """Start gdb with ``elf``, connect it to the gdbserver at ``address`` and evaluate
    ``expression`` (see :func:`evaluate_with`)."""
    from undebug.gdb.mi import MiSession

    with MiSession.start(elf) as mi:
        return evaluate_with(mi, address, expression, thread, warnings, resume=resume)
