"""A dump bundle: one directory that opens offline with every inspection command.

The front end writes it (``undebug dump``, ``run --ci`` on a failure) through Target and
the OS awareness while the supervisor holds the guest paused. It is written in a
temporary directory beside the destination and renamed into place, so a reader never sees
half a bundle; every file is 0600. When dumping fails midway the bundle is still renamed,
with an ``INCOMPLETE`` file that says what failed: never silently partial.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from undebug.coretarget import (
    BUNDLE_SCHEMA,
    CONSOLE_FILE,
    CORE_FILE,
    ELF_DIR,
    FLIGHT_FILE,
    INCOMPLETE_FILE,
    QEMU_CORE_FILE,
    SUMMARY_FILE,
    TARGET_XML_FILE,
    TRACE_TAIL_FILE,
)
from undebug.errors import UndebugError, UsageError
from undebug.text import escape

if TYPE_CHECKING:
    from undebug.os.crash import Crash
    from undebug.os.provider import ThreadProvider
    from undebug.session.replies import GuestStatus
    from undebug.target import Target

__all__ = ["BundleRequest", "BundleResult", "write_bundle"]

CONSOLE_MAX = 4 << 20  # the console log's last bytes kept
TRACE_TAIL_MAX = 8 << 20
CONSOLE_TAIL_LINES = 20
SAME_SECOND = 100  # bundles of one guest named after one second, at most


@dataclass(frozen=True)
class BundleRequest:
    session: str  # the guest's name
    parent: Path  # the bundle is a new directory in here
    sparse: bool = False
    include_elf: bool = False
    qemu_core: bool = False  # also QEMU's own dump-guest-memory ELF (qemu-core.elf)
    reason: dict[str, Any] | None = None  # the outcome the caller saw (run --ci), if any
    dir_name: str | None = None  # default <session>-<UTC time>


@dataclass
class BundleResult:
    path: Path
    complete: bool
    summary: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def _version() -> str:
    """The installed undebug's version (``undebug.__version__`` sits above this layer)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("undebug")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _utc_stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


@contextlib.contextmanager
def _private(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """A new file, 0600 from its creation (no window where it is readable by others)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, mode) as f:
        yield f


def _copy_tail(source: Path, dest: Path, limit: int) -> int:
    """The last ``limit`` bytes of ``source`` into a new 0600 ``dest``; bytes copied."""
    with source.open("rb") as f, _private(dest) as out:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - limit))
        shutil.copyfileobj(f, out)
        return out.tell()


def _qemu_command_line(pid: int | None) -> list[str] | None:
    if pid is None:
        return None
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [escape(a) for a in raw.decode("utf-8", "backslashreplace").split("\0") if a]


class _Dump:
    """The steps of one dump; each failure after the directory exists is recorded."""

    def __init__(self, request: BundleRequest, work: Path) -> None:
        self.request = request
        self.work = work
        self.warnings: list[str] = []
        self.summary: dict[str, Any] = {"schema": BUNDLE_SCHEMA, "complete": False,
                                        "undebug_version": _version()}
        self.cleanup = contextlib.ExitStack()  # what run() leaves behind if it fails

    def run(self) -> None:
        with self.cleanup:
            self._run()

    def _run(self) -> None:
        from undebug.session.client import live_status
        from undebug.session.store import SessionDir

        session = SessionDir.named(self.request.session)
        status = live_status(session)
        s = self.summary
        s.update(guest=self.request.session, time=time.time(),
                 time_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 image=status.image, qemu_command_line=_qemu_command_line(status.qemu_pid),
                 smp=status.smp, memory_mb=status.memory_mb, append=status.append,
                 outcome=None if status.outcome is None else status.outcome.to_json())
        s["maps"] = s["heap"] = s["net"] = None  # the guest's memory says (_guest_state)
        s["qemu_core"] = None  # requested only (_qemu_core)
        if status.state == "ended":  # exited (run --ci: an unexpected code): no memory
            from undebug.elf import ElfFile

            s["elfs"] = [self._elf(Path(status.elf), ElfFile(status.elf).build_id)] \
                if status.elf else []
            s["reason"] = self._reason(None, status)
            s["core"] = s["crash"] = s["signature"] = None
            self.warnings.append("the guest had ended: no memory, registers or threads "
                                 "to dump")
            if self.request.qemu_core:
                self._no_qemu_core("the guest had ended: no QEMU to dump it")
        else:
            self._memory(session.name, status)
        s["console_tail"] = self._console(session.console_log)
        s["trace_tail"] = self._trace_tail(session.trace_file)

    def _memory(self, name: str, status: GuestStatus) -> None:
        """core.elf and what the paused guest's memory says (threads, crash, flight)."""
        from undebug.dump.core import write_core
        from undebug.dump.summary import all_threads, backtraces, crash_json, crash_signature
        from undebug.gdbserver.threads import ThreadView
        from undebug.os import provider_for
        from undebug.target import open_target

        s = self.summary
        with open_target(name, force=True) as target:
            self.warnings += target.warnings
            provider = provider_for(target)
            crashed = status.outcome is not None and not status.outcome.ok
            crash = provider.crash() if crashed else None
            s["elfs"] = [self._elf(target.elf.path, target.elf.build_id)]
            s["vcpus"] = [{"cpu": cpu, "registers": target.registers(cpu)}
                          for cpu in range(target.cpu_count())]
            flight = self._flight(target)  # decoded while the rest is written
            threads, warnings = all_threads(target, provider)
            self.warnings += warnings
            traces = backtraces(target, provider, threads, 64, self.warnings)
            s["threads"] = traces
            s["crash"] = crash_json(crash)
            s["reason"] = self._reason(crash, status)
            s["signature"] = crash_signature(crash, s["reason"]["kind"], traces)
            view = ThreadView.from_target(target, lambda t: provider.threads())
            first = crash.cpu if crash is not None and crash.cpu is not None else 0
            ordered = sorted(view.threads, key=lambda t: t.cpu != first)  # gdb's current
            started = time.perf_counter()
            with _private(self.work / CORE_FILE) as out:
                stats = write_core(target, ordered, out, sparse=self.request.sparse,
                                   info={"build_id": target.elf.build_id,
                                         "guest": self.request.session})
            self.warnings += stats.warnings
            s["core"] = {"file": CORE_FILE, "sparse": self.request.sparse,
                         "segments": stats.segments, "mapped_bytes": stats.mapped_bytes,
                         "written_bytes": stats.written_bytes,
                         "zero_pages_skipped": stats.zero_pages_skipped,
                         "tested_bytes": stats.tested_bytes,
                         "untouched_bytes": stats.untouched_bytes,
                         "threads": stats.threads,
                         "seconds": round(time.perf_counter() - started, 3)}
            self._guest_state(target, provider)
            self._target_xml(target)
            s["flight_recorder"] = flight()
            if self.request.qemu_core:
                self._qemu_core(target)

    def _guest_state(self, target: Target, provider: ThreadProvider) -> None:
        """``maps``, ``heap`` and ``net`` as their commands' ``--json`` give them (the
        network: the guest's lwIP only; QEMU's view of the NIC goes with QEMU). One that
        cannot be read stays null, with a warning; the others are still written."""
        from undebug.os.lwip import guest_network
        from undebug.os.memmap import memory_map

        def network() -> dict[str, Any]:
            snapshot = guest_network(target)
            self.warnings.extend(f"net: {w}" for w in snapshot.warnings)
            return {"lwip": snapshot.lwip,
                    "interfaces": [asdict(i) for i in snapshot.interfaces],
                    "sockets": [s.to_json() for s in snapshot.sockets]}

        readers: dict[str, Callable[[], Any]] = {
            "maps": lambda: memory_map(target, provider).to_json(),
            "heap": lambda: {"heaps": [r.to_json() for r in provider.heaps()]},
            "net": network}
        for key, read in readers.items():
            try:
                self.summary[key] = read()
            except UndebugError as exc:
                self.warnings.append(f"{key}: {exc.message}")

    def _target_xml(self, target: Target) -> None:
        """QEMU's register layout (``target.xml`` and its includes), which ``undebug
        gdbserver BUNDLE`` serves as the live guest's was."""
        from undebug.live_target import LiveTarget

        if not isinstance(target, LiveTarget):
            return
        try:
            files = target.client.target_xml()
        except UndebugError as exc:
            self.warnings.append(f"no register layout for undebug gdbserver: {exc.message}")
            return
        with _private(self.work / TARGET_XML_FILE, "w") as out:
            json.dump(files, out)

    def _no_qemu_core(self, why: str) -> None:
        self.summary["qemu_core"] = {"file": None, "error": why}
        self.warnings.append(f"{QEMU_CORE_FILE} is missing: {why}")

    def _qemu_core(self, target: Target) -> None:
        """QEMU's ``dump-guest-memory`` (paging off) of the still-paused guest, through
        the supervisor. The file is made 0600 first (QEMU truncates it, keeping the
        mode), its mode checked after; any failure leaves a warning, not a bundle marked
        incomplete: undebug's own core.elf is the bundle's."""
        from undebug.live_target import LiveTarget

        if not isinstance(target, LiveTarget):
            self._no_qemu_core("not a live guest")
            return
        path = self.work / QEMU_CORE_FILE
        with _private(path):
            pass
        try:
            progress = target.client.qemu_core(str(path.resolve()))
            st = os.stat(path, follow_symlinks=False)
        except (UndebugError, OSError) as exc:
            with contextlib.suppress(OSError):
                path.unlink()
            self._no_qemu_core(exc.message if isinstance(exc, UndebugError)
                               else f"{exc.strerror}")
            return
        mode = st.st_mode & 0o7777
        if not stat.S_ISREG(st.st_mode):
            self._no_qemu_core("not a regular file after QEMU wrote it")
            return
        if mode != 0o600:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
            self.warnings.append(f"QEMU left {QEMU_CORE_FILE} mode {mode:o}: made 0600")
        self.summary["qemu_core"] = {"file": QEMU_CORE_FILE, "bytes": st.st_size,
                                     "seconds": progress.get("seconds"), "error": None}

    def _elf(self, path: Path, build_id: str | None) -> dict[str, Any]:
        entry: dict[str, Any] = {"path": str(path.resolve()), "build_id": build_id, "copy": None}
        if self.request.include_elf:
            (self.work / ELF_DIR).mkdir(mode=0o700)
            copy = self.work / ELF_DIR / path.name
            _copy_tail(path, copy, 1 << 62)
            entry["copy"] = f"{ELF_DIR}/{path.name}"
        return entry

    def _reason(self, crash: Crash | None, status: GuestStatus) -> dict[str, Any]:
        outcome = status.outcome
        if crash is not None:
            return {"kind": outcome.kind if outcome else "crash", "text": crash.reason,
                    "source": "os"}
        if self.request.reason is not None:
            return self.request.reason
        if outcome is not None:
            return {"kind": outcome.kind, "text": outcome.reason, "source": "qemu"}
        stop = status.last_stop
        where = f" (stopped: {stop.reason})" if stop is not None else ""
        return {"kind": "request", "text": f"dumped on request{where}", "source": "user"}

    def _flight(self, target: Target) -> Callable[[], dict[str, Any] | None]:
        """The flight recorder copied out now; its tail decoded beside the rest of the
        dump (:class:`Beside`): call the result for summary.json's entry."""
        from tracers.flight import HEADER_SYMBOL, read_flight_recorder
        from undebug.dump.beside import Beside
        from undebug.dump.summary import flight_tail

        if target.elf.symbol(HEADER_SYMBOL) is None:
            return lambda: None
        try:
            recording = read_flight_recorder(target)
        except UndebugError as exc:
            self.warnings.append(f"flight recorder: {exc.message}")
            return lambda: None
        with _private(self.work / FLIGHT_FILE) as out:
            out.write(recording.data)
        tail = Beside(flight_tail, recording.data, target.elf.path)
        self.cleanup.callback(tail.close)  # a dump failing before finish() ends the child

        def finish() -> dict[str, Any]:
            events, warnings = tail.result()
            self.warnings.extend(recording.warnings + warnings)
            return {"file": FLIGHT_FILE, "bytes": len(recording.data), "tail": events}
        return finish

    def _console(self, log: Path) -> list[str]:
        from undebug.console import tail_lines

        if not log.exists():
            self.warnings.append("no console log")
            return []
        _copy_tail(log, self.work / CONSOLE_FILE, CONSOLE_MAX)
        return [escape(line) for line in tail_lines(log, CONSOLE_TAIL_LINES)]

    def _trace_tail(self, recording: Path) -> dict[str, Any] | None:
        if not recording.exists():
            return None
        copied = _copy_tail(recording, self.work / TRACE_TAIL_FILE, TRACE_TAIL_MAX)
        return {"file": TRACE_TAIL_FILE, "bytes": copied,
                "whole": copied == recording.stat().st_size}


def _place(work: Path, final: Path, numbered: bool) -> Path:
    """Rename the finished ``work`` to ``final``; a default name already taken (two
    failures dumped in one second: a dump takes well under one) gets ``-2``, ``-3``..."""
    for n in range(1, SAME_SECOND + 1):
        path = final if n == 1 else final.with_name(f"{final.name}-{n}")
        if n > 1 and not numbered:
            break
        if path.exists():  # rename(2) would replace an empty directory
            continue
        try:
            os.rename(work, path)
            return path
        except OSError as exc:  # another dump took it meanwhile
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    raise UsageError(f"{final} exists (and {SAME_SECOND - 1} numbered after it): the bundle "
                     f"is left in {work}", hint="choose another -o, or remove them")


def write_bundle(request: BundleRequest) -> BundleResult:
    """Dump guest ``request.session`` into a new bundle directory; raises UsageError for a
    bad destination (before dumping; after, only if every name was taken), else returns
    it, maybe incomplete."""
    now = time.time()
    name = request.dir_name or f"{request.session}-{_utc_stamp(now)}"
    final = request.parent / name
    try:
        request.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if final.exists() and request.dir_name is not None:
            raise UsageError(f"{final} exists", hint="choose another -o, or remove it")
        work = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial",
                                     dir=request.parent))
    except OSError as exc:
        raise UsageError(f"cannot write a bundle in {request.parent}: {exc.strerror}") \
            from None
    dump = _Dump(request, work)
    failure: str | None = None
    interrupted: BaseException | None = None
    try:
        dump.run()
    except UndebugError as exc:
        failure = exc.message
    except OSError as exc:
        failure = f"{exc.filename or 'writing'}: {exc.strerror}"
    except Exception as exc:  # a bug on hostile guest memory: the bundle still says so
        failure = f"undebug failed while dumping: {type(exc).__name__}: {escape(str(exc))}"
    except BaseException as exc:  # Ctrl-C: what was written is kept, marked, then stop
        failure, interrupted = "interrupted", exc
    dump.summary["complete"] = failure is None
    dump.summary["warnings"] = dump.warnings
    if failure is not None:
        dump.summary["failure"] = failure
        with _private(work / INCOMPLETE_FILE, "w") as f:
            f.write(f"this bundle is incomplete: {failure}\n")
    with _private(work / SUMMARY_FILE, "w") as f:
        f.write(json.dumps(dump.summary) + "\n")  # no indent: the C encoder, 10x faster
    final = _place(work, final, numbered=request.dir_name is None)
    if interrupted is not None:
        raise interrupted
    return BundleResult(final, failure is None, dump.summary, dump.warnings)
