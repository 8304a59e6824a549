"""The Python API: ``undebug.attach(name)`` gives the operations of the CLI as objects.

>>> import undebug
>>> with undebug.attach("web") as guest:
...     for thread in guest.threads():
...         print(thread.id, thread.name, guest.backtrace(thread.id).frames[0].function)

Text that comes from the guest or its ELF (thread names, states, function and file
names) is a :class:`GuestText`: it compares as the text itself, but prints escaped, so
the example above is safe on a terminal whatever the guest put in its memory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from undebug.console import ConsoleFollower, tail_lines
from undebug.disasm import Instruction, disassemble
from undebug.elf import Symbol
from undebug.errors import UndebugError, UsageError
from undebug.evaluate import Evaluation, evaluate_in
from undebug.live_target import LiveTarget
from undebug.os import provider_for
from undebug.os.locate import guest_location, locate
from undebug.os.provider import GuestThread, ThreadProvider
from undebug.session.breakpoints import Breakpoint
from undebug.session.client import SupervisorClient, live_status
from undebug.session.replies import GuestStatus, Stop
from undebug.session.store import SessionDir, sessions
from undebug.target import Target, guest_elf, open_target
from undebug.text import escape
from undebug.unwind import Backtrace, Frame, unwind

__all__ = ["Backtrace", "Breakpoint", "Console", "Dump", "Evaluation", "Frame", "GuestStatus",
           "GuestText", "GuestThread", "Instruction", "Network", "Session", "Stop",
           "ThreadsView", "attach", "break_at", "dump",
           "evaluate", "guests", "pause", "resume", "source_path", "status", "step"]

_D = TypeVar("_D")

if TYPE_CHECKING:  # imported when used: maps and heap are not every session's
    from undebug.os.heap import HeapReport
    from undebug.os.lwip import Interface, Socket
    from undebug.os.memmap import MemoryMap
    from undebug.session.host_net import HostNetwork


class GuestText(str):
    """Untrusted text: equal to (and hashed as) what the guest wrote, but ``str()``,
    ``print`` and f-strings give it escaped (undebug.text.escape). ``.raw`` is the text
    as it is, for a program that means to handle it itself."""

    __slots__ = ()

    @property
    def raw(self) -> str:
        return str.__str__(self)

    def __str__(self) -> str:
        return escape(self.raw)

    def __format__(self, spec: str) -> str:
        return format(escape(self.raw), spec)


def _safe(record: _D) -> _D:
    """``record`` (a dataclass) with each of its text fields made a :class:`GuestText`."""
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(record):  # type: ignore[arg-type]
        if type(value := getattr(record, f.name)) is str:
            changes[f.name] = GuestText(value)
    return dataclasses.replace(record, **changes)  # type: ignore[type-var]


@dataclass(frozen=True)
class ThreadsView:
    """Every guest thread at one moment, with the function each one is in. Equal
    ``run_token``: the same stop, the same data (front ends cache by it); ``live``: read
    while the guest ran, so it may be torn (a moving picture, not a stop)."""

    run_token: int
    live: bool
    threads: list[GuestThread]
    where: dict[int, GuestText]  # thread id -> its function, or its pc in hex
    vcpus: dict[int, int | None]  # vCPU index -> id of the thread it runs
    warnings: list[str]

    def on_cpu(self, cpu: int) -> GuestThread | None:
        """The thread vCPU ``cpu`` runs (None: none, or a thread the walk did not find)."""
        thread_id = self.vcpus.get(cpu)
        return next((t for t in self.threads if t.id == thread_id), None)


@dataclass(frozen=True)
class Network:
    """The guest's network at one moment, as ``undebug net`` shows it: lwIP's interfaces
    and sockets (``lwip`` False: the guest has no lwIP), and QEMU's view of the NIC and
    of the user-mode NAT kept apart in ``host`` (None: no QEMU to ask). ``run_token`` and
    ``live`` as in :class:`ThreadsView`."""

    run_token: int
    live: bool
    lwip: bool
    interfaces: list[Interface]
    sockets: list[Socket]
    host: HostNetwork | None
    warnings: list[str]


class Session:
    """One guest, held still while the session is open (unless ``stop=False``)."""

    def __init__(self, target: Target, *, live: bool = False) -> None:
        self.target = target
        self.live = live  # opened with stop=False: reads see a running guest
        self._provider: ThreadProvider | None = None

    @property
    def provider(self) -> ThreadProvider:
        if self._provider is None:
            self._provider = provider_for(self.target)
        return self._provider

    @property
    def warnings(self) -> list[str]:
        """What looked wrong in the guest so far (bounded walks, torn reads, ...)."""
        return self.target.warnings

    def threads(self) -> list[GuestThread]:
        snapshot = self.provider.threads()
        self.target.warnings.extend(w for w in snapshot.warnings if w not in self.target.warnings)
        return [_safe(thread) for thread in snapshot.threads]

    def view(self) -> ThreadsView:
        """:meth:`threads` with where each one is, the vCPU map and the run token, read
        in one pass (of a running guest too: see :meth:`Target.moment`)."""
        with self.target.moment():
            token = self.target.run_token
            threads = self.threads()
            vcpus = dict(self.provider.threads().vcpus)
        symbolize = self.target.symbolize
        where = {t.id: GuestText(symbolize(pc) or f"{pc:#x}")
                 for t in threads for pc in (t.registers.get("rip", 0),)}
        return ThreadsView(token, self.live, threads, where, vcpus, list(self.warnings))

    def thread(self, thread_id: int) -> GuestThread:
        return _safe(self.provider.threads().find(thread_id))

    def backtrace(self, thread_id: int, max_frames: int = 64) -> Backtrace:
        thread = self.thread(thread_id)
        trace = unwind(self.target.elf, self.target.read, thread.registers, thread.stack,
                       max_frames=max_frames, trap_frames=self.provider.trap_frame,
                       resumes_after_call=thread.resumes_after_call,
                       load_offset=self.target.load_offset, programs=self.target.programs)
        return dataclasses.replace(trace, frames=[_safe(frame) for frame in trace.frames])

    def registers(self, cpu: int = 0) -> dict[str, int]:
        return self.target.registers(cpu)

    def read(self, address: int, size: int) -> bytes:
        return self.target.read(address, size)

    def read_physical(self, address: int, size: int) -> bytes:
        return self.target.read_physical(address, size)

    def memory_map(self) -> MemoryMap:
        """The guest's memory map, as ``undebug maps`` shows it (:mod:`undebug.os.memmap`);
        each region's ``names`` made :class:`GuestText` (they hold thread names)."""
        from undebug.os.memmap import memory_map

        with self.target.moment():
            found = memory_map(self.target, self.provider)
        found.regions = [dataclasses.replace(r, names=tuple(GuestText(n) for n in r.names))
                         for r in found.regions]
        return found

    def heaps(self) -> list[HeapReport]:
        """The guest's allocators, as ``undebug heap`` shows them (:mod:`undebug.os.heap`)."""
        with self.target.moment():
            return self.provider.heaps()

    def network(self) -> Network:
        """The guest's network (:func:`undebug.os.lwip.guest_network`, then QEMU's view
        through the supervisor), as ``undebug net`` reads it; guest text made GuestText."""
        from undebug.os.lwip import guest_network
        from undebug.session.host_net import host_network

        with self.target.moment():
            token = self.target.run_token
            snapshot = guest_network(self.target)
        host = host_network(self.target.client.net_host()) \
            if isinstance(self.target, LiveTarget) else None
        return Network(token, self.live, snapshot.lwip, [_safe(i) for i in snapshot.interfaces],
                       [_safe(s) for s in snapshot.sockets], host,
                       [*self.warnings, *snapshot.warnings])

    def symbol(self, name: str) -> Symbol | None:
        symbol = self.target.elf.symbol(name)
        return _safe(symbol) if symbol is not None else None

    def address(self, text: str) -> int:
        """The address ``text`` names: a number (``0x...``, decimal) or a symbol, as
        ``undebug mem`` reads its ADDR|SYMBOL."""
        if text[:1].isdigit():
            try:
                return int(text, 0)
            except ValueError:
                raise UsageError(f"bad address {text!r}", hint="write a number such as "
                                 "0x1000, or a symbol") from None
        return locate(self.target, text).address

    def disassemble(self, pc: int, before: int = 8, after: int = 16) -> list[Instruction]:
        """The instructions around ``pc`` (undebug/disasm.py), read from the guest."""
        found = disassemble(self.target.elf, self.target.read, pc, before=before, after=after,
                            load_offset=self.target.load_offset)
        return [_safe(instruction) for instruction in found]

    def close(self) -> None:
        self.target.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def attach(name: str, elf: str | Path | None = None, *, stop: bool = True,
           force: bool = False) -> Session:
    """Open the guest ``name`` (see ``undebug ps``) for inspection."""
    target = open_target(name, Path(elf) if elf else None, stop=stop, force=force)
    return Session(target, live=not stop)


# ---- the guests and their run state, without opening their memory --------------------

def guests() -> tuple[list[GuestStatus], list[str]]:
    """Every guest as ``undebug ps`` lists it, and why any could not be asked."""
    found, problems = [], []
    for session in sessions():
        try:
            found.append(live_status(session))
        except UndebugError as exc:
            problems.append(exc.message)
    return found, problems


def status(name: str) -> GuestStatus:
    """The guest's state, accelerator, uptime and run token, from its supervisor; of a
    dump bundle, state ``dumped`` at run token 0 (one moment, forever)."""
    found = dump(name)
    if found is not None:
        return found.status
    return live_status(SessionDir.named(name))


@dataclass(frozen=True)
class Dump:
    """A dump bundle as a front end presents it (docs/bundle.md): where it is, when it
    was dumped and why, and the thread that crashed (the summary's crash reading, else
    vCPU 0's). ``status`` is what :func:`status` gives for it."""

    path: str
    guest: GuestText
    time_utc: str
    reason: GuestText
    crash_thread: int | None  # None: no crash reading; select vCPU 0's thread
    status: GuestStatus
    problems: list[str]


def dump(spec: str) -> Dump | None:
    """The bundle ``spec`` names (a path, as every inspection command takes one), or
    None when it names a session."""
    from undebug.coretarget import CONSOLE_FILE, is_bundle, read_bundle

    if not is_bundle(spec):
        return None
    bundle = read_bundle(Path(spec))
    summary = bundle.summary

    def text(value: object) -> str:
        return value if isinstance(value, str) else ""

    def number(value: object) -> int | None:
        return value if type(value) is int else None

    def table(value: object) -> dict[str, object]:
        return value if isinstance(value, dict) else {}

    reason, crash = table(summary.get("reason")), table(summary.get("crash"))
    elfs = summary.get("elfs")
    elf = elfs[0].get("path") if isinstance(elfs, list) and elfs and \
        isinstance(elfs[0], dict) else None
    when = summary.get("time")
    guest = text(summary.get("guest")) or Path(spec).name
    state = GuestStatus(
        name=guest, state="dumped", user_paused=False, mode="launch",
        image=text(summary.get("image")) or None, elf=text(elf) or None, accel=None,
        accel_reason=None, smp=number(summary.get("smp")),
        memory_mb=number(summary.get("memory_mb")), append=text(summary.get("append")) or None,
        forwards=(), supervisor_pid=None, qemu_pid=None,
        started=float(when) if isinstance(when, (int, float)) else 0.0, uptime_s=0.0,
        outcome=None, console=str(Path(spec) / CONSOLE_FILE), run_token=0, last_stop=None,
        breakpoints=(), frozen=False, shared_ram=False, warnings=tuple(bundle.problems))
    why = text(reason.get("text")) or text(reason.get("kind")) or "no reason recorded"
    return Dump(spec, GuestText(guest), text(summary.get("time_utc")) or "unknown time",
                GuestText(why), number(crash.get("thread_id")), state, list(bundle.problems))


def pause(name: str) -> GuestStatus:
    """Stop the guest until :func:`resume` (``undebug stop``)."""
    with SupervisorClient(SessionDir.named(name)) as client:
        return client.pause()


def resume(name: str) -> GuestStatus:
    """Let a paused guest run again (``undebug cont``)."""
    with SupervisorClient(SessionDir.named(name)) as client:
        return client.resume()


def step(name: str, cpu: int | None = None) -> Stop:
    """One instruction on vCPU ``cpu`` (None: the one that stopped last) (``undebug step``)."""
    with SupervisorClient(SessionDir.named(name)) as client:
        return client.step(cpu)


def source_path(name: str, file: str) -> Path | None:
    """Where the source ``file`` of a frame of guest ``name`` is on this machine (found
    through its ELF's compilation directories), or None when it is not here."""
    return guest_elf(name).source_path(file)


def break_at(name: str, location: str, hardware: bool = False) -> Breakpoint:
    """A breakpoint the supervisor keeps at a function, FILE:LINE or an address, as
    ``undebug break NAME LOCATION`` sets it (owner "cli": it stays until deleted)."""
    address = guest_location(name, location)[0].address
    with SupervisorClient(SessionDir.named(name)) as client:
        return client.insert_breakpoint(address, hardware, location)


class Console:
    """A guest's serial console: the last lines at first, then what it prints as it runs.
    Each line is a :class:`GuestText` (the guest wrote it)."""

    def __init__(self, name: str, tail: int = 200) -> None:
        found = dump(name)  # a bundle: its console log, which no longer grows
        path = Path(found.status.console) if found else SessionDir.named(name).console_log
        self._first = [_line(raw) for raw in tail_lines(path, tail)]
        self._follower = ConsoleFollower(path, start_at_end=True)

    def poll(self) -> list[GuestText]:
        """The lines printed since the last call (the tail, the first time)."""
        first, self._first = self._first, []
        return first + [_line(raw) for raw in self._follower.poll()]


def _line(raw: bytes) -> GuestText:
    return GuestText(raw.decode("utf-8", "surrogateescape"))


def evaluate(name: str, expressions: list[str], thread: int | None = None) \
        -> tuple[list[Evaluation], list[str]]:
    """Each C expression's value (``undebug eval NAME EXPR``), all through one gdb, and
    gdb's warnings. Values carry guest strings: they are :class:`GuestText`."""
    warnings: list[str] = []
    found = evaluate_in(name, expressions, thread, warnings)
    return [_safe(e) for e in found], warnings
