"""What the gdbserver serves: a :class:`Backend` (the guest behind the server) and a
:data:`ThreadProvider` (its threads), both given to it by the command that starts it.

The server never asks where the guest is. A live session (:mod:`undebug.gdbserver.live`)
has reads, run control, breakpoints and writes; a dump has reads only, and answers run
control and writes with :class:`~undebug.errors.SessionError` (gdb then reports the
refusal and stays where it is). Reads go through a :class:`~undebug.target.Target` held
still from :meth:`Backend.target` until :meth:`Backend.release`, so caches and the
thread view key on one stop.

Threads come from an injected callable (the command layer passes the OS awareness), so
this package imports nothing from :mod:`undebug.os`: it only needs the fields below.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from undebug.target import Target

__all__ = ["SIGABRT", "SIGINT", "SIGKILL", "SIGSEGV", "SIGTRAP", "Backend", "Event",
           "GuestState", "ServedBreakpoint", "Snapshot", "Stop", "ThreadInfo",
           "ThreadProvider"]

SIGINT, SIGTRAP, SIGABRT, SIGKILL, SIGSEGV = 2, 5, 6, 9, 11  # gdb's signal numbers


@dataclass(frozen=True)
class Stop:
    """A stop to report: ``signal`` on the guest thread of vCPU ``cpu``, or the end."""

    signal: int
    cpu: int | None = None
    breakpoint: int | None = None  # the backend's breakpoint id
    message: str | None = None  # for the debugger's console (escaped)
    exit_reply: bytes | None = None  # W/X: the guest has ended
    watch: tuple[str, int] | None = None  # a watchpoint hit: ("watch"|"rwatch"|"awatch", address)


@dataclass(frozen=True)
class GuestState:
    """The guest now: running, stopped (``stop`` says why, if known), crashed, ended."""

    running: bool
    ended: bool
    crashed: bool  # stopped for good: it cannot run on
    user_paused: bool  # stopped by someone, to stay stopped (undebug stop, a breakpoint)
    stop: Stop | None


@dataclass(frozen=True)
class Event:
    """Something that happened while the guest ran. For ``crashed``, :meth:`Backend.state`
    may know more a moment later (the vCPU that faulted)."""

    kind: Literal["stopped", "crashed", "ended"]
    time: float  # when (time.time()); stops before a resume are stale
    stop: Stop


@dataclass(frozen=True)
class ServedBreakpoint:
    id: int
    address: int
    hardware: bool
    watch: str | None = None  # a watchpoint: "write", "read" or "access"
    length: int = 1


class Backend(Protocol):
    """The guest behind the server. Run control and writes may raise SessionError."""

    @property
    def ended(self) -> bool:
        """The guest has gone: the server stops serving."""
        ...

    def target(self) -> Target:
        """The guest for reads, held still until :meth:`release` (one stop)."""
        ...

    def release(self) -> None:
        """Let go of the Target before the guest runs or changes (its caches go stale)."""
        ...

    def close(self) -> None: ...

    def warn_once(self, message: str) -> None:
        """Tell the user (once) what the debugger cannot show them."""
        ...

    def target_xml(self) -> dict[str, str]:
        """The register layout's files (``target.xml`` and what it includes)."""
        ...

    def state(self) -> GuestState: ...

    def pause(self) -> None: ...

    def resume(self) -> None: ...

    def step(self, cpu: int) -> Stop:
        """One instruction on vCPU ``cpu``."""
        ...

    def next_event(self, timeout: float) -> Event | None: ...

    def drain_events(self) -> None:
        """Drop what has happened so far (an end is remembered in :attr:`ended`)."""
        ...

    def insert_breakpoint(self, address: int, hardware: bool, location: str) -> ServedBreakpoint:
        """A breakpoint that lives as long as this backend's connection (UsageError: one is
        there already)."""
        ...

    def insert_watchpoint(self, address: int, length: int, watch: str,
                          location: str) -> ServedBreakpoint:
        """A watchpoint (``watch``: "write", "read" or "access") on ``length`` bytes,
        for this connection's life like a breakpoint; deleted with
        :meth:`delete_breakpoint` (UsageError: one is there already)."""
        ...

    def delete_breakpoint(self, bp_id: int) -> None: ...

    def breakpoints(self) -> list[ServedBreakpoint]: ...

    def write_registers(self, cpu: int, values: dict[str, int]) -> None: ...

    def write_memory(self, address: int, data: bytes) -> None: ...


class ThreadInfo(Protocol):
    """One guest thread, as the OS awareness reads it (``name``: raw guest text)."""

    @property
    def id(self) -> int: ...

    @property
    def name(self) -> str: ...

    @property
    def state(self) -> str: ...

    @property
    def cpu(self) -> int | None: ...

    @property
    def registers(self) -> Mapping[str, int]: ...

    @property
    def wait_reason(self) -> str | None: ...


class Snapshot(Protocol):
    """The guest's threads at one stop, with what looked wrong while reading them."""

    @property
    def threads(self) -> Sequence[ThreadInfo]: ...

    @property
    def warnings(self) -> Sequence[str]: ...


ThreadProvider = Callable[[Target], Snapshot]
