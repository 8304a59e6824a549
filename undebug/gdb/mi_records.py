"""What a GDB/MI session hands its callers: dataclasses, made from pygdbmi's dicts here.

MI output (GDB manual, "GDB/MI Output Syntax") is a sequence of records: a result record
(``123^done,...``) answers the command with token 123; async records (``*stopped``,
``*running``, ``=thread-created``, ...) and stream records (``~`` console, ``@`` target,
``&`` log) may arrive at any time. :mod:`undebug.gdb.mi` routes them; this module only
turns one parsed record into a typed value, so no raw MI dict leaves the session except
:attr:`MiResult.payload`, the command-specific part of a reply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ExitEvent",
    "Frame",
    "GdbThread",
    "MiEvent",
    "MiResult",
    "NotifyEvent",
    "RunningEvent",
    "StopEvent",
    "StreamEvent",
    "ThreadEvent",
    "Value",
    "event_from_record",
]


@dataclass(frozen=True)
class MiResult:
    """A command's reply: ``cls`` is done, running, connected, exit (error raises)."""

    token: int | None
    cls: str
    payload: dict[str, Any] = field(default_factory=dict)
    console: tuple[str, ...] = ()  # the ~"..." stream text gdb printed for this command


@dataclass(frozen=True)
class Frame:
    """A ``frame={...}`` tuple: where a thread is."""

    addr: int | None
    function: str | None
    file: str | None
    line: int | None
    level: int = 0

    @classmethod
    def from_mi(cls, mi: Any) -> Frame | None:
        if not isinstance(mi, dict):
            return None
        return cls(addr=_int(mi.get("addr")), function=_str(mi.get("func")),
                   file=_str(mi.get("file")), line=_int(mi.get("line")),
                   level=_int(mi.get("level")) or 0)


@dataclass(frozen=True)
class StopEvent:
    """``*stopped``: the target stopped (breakpoint, signal, end of a step, ...)."""

    reason: str | None  # "breakpoint-hit", "signal-received", ...; None after a connect
    thread_id: int | None
    frame: Frame | None
    signal: str | None = None  # "SIGINT", "SIGTRAP", ...
    breakpoint: int | None = None


@dataclass(frozen=True)
class RunningEvent:
    """``*running``: ``thread_id`` is a gdb thread id or "all"."""

    thread_id: str


@dataclass(frozen=True)
class ThreadEvent:
    """``=thread-created``, ``=thread-exited``, ``=thread-selected``, ``=thread-group-*``."""

    kind: str  # the record's class without "thread-": created, exited, group-added, ...
    id: str
    group_id: str | None = None


@dataclass(frozen=True)
class NotifyEvent:
    """Any other async record (``=breakpoint-modified``, ``=library-loaded``, ``+download``)."""

    cls: str
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StreamEvent:
    """Text gdb printed: ``kind`` is console, target, log, or output (not MI at all)."""

    kind: str
    text: str


@dataclass(frozen=True)
class ExitEvent:
    """gdb has exited; ``status`` is its exit status (negative: killed by that signal)."""

    status: int | None


MiEvent = StopEvent | RunningEvent | ThreadEvent | NotifyEvent | StreamEvent | ExitEvent


@dataclass(frozen=True)
class Value:
    """A C expression evaluated by gdb, with gdb's rendering of its value and type."""

    expression: str
    value: str  # gdb's text, e.g. "6840123409045652310" or "\"main\", '\\000' <repeats 27 times>"
    type: str | None  # as `whatis` prints it, e.g. "volatile uint64_t", "char [32]"
    thread: int | None = None


_REMOTE_THREAD = re.compile(r"Thread (?:\d+\.)?(\d+)")  # "Thread 7", "Thread 1.2" (pid.tid)


@dataclass(frozen=True)
class GdbThread:
    """One row of ``-thread-info``: gdb's own thread number, and what the target calls it."""

    number: int  # gdb's (1, 2, ... in the order gdb learnt of them): -thread-select takes it
    target_id: str  # "Thread 7" from a remote stub: the stub's thread id, in decimal
    name: str | None

    @property
    def remote_id(self) -> int | None:
        """The stub's thread id (for undebug's gdbserver: the guest's thread id)."""
        match = _REMOTE_THREAD.match(self.target_id)
        return int(match.group(1)) if match else None

    @classmethod
    def from_mi(cls, mi: Any) -> GdbThread | None:
        if not isinstance(mi, dict) or _int(mi.get("id")) is None:
            return None
        return cls(_int(mi.get("id")) or 0, _str(mi.get("target-id")) or "", _str(mi.get("name")))


def event_from_record(prefix: str, record: dict[str, Any]) -> MiEvent:
    """An async or stream record (``prefix`` is its first character) as an event."""
    payload = record.get("payload")
    if record["type"] in ("console", "target", "log", "output"):
        return StreamEvent(record["type"], payload if isinstance(payload, str) else "")
    cls = str(record.get("message"))
    fields = payload if isinstance(payload, dict) else {}
    if prefix == "*" and cls == "stopped":
        return StopEvent(reason=_str(fields.get("reason")), thread_id=_int(fields.get("thread-id")),
                         frame=Frame.from_mi(fields.get("frame")),
                         signal=_str(fields.get("signal-name")), breakpoint=_int(fields.get("bkptno")))
    if prefix == "*" and cls == "running":
        return RunningEvent(str(fields.get("thread-id", "all")))
    if prefix == "=" and cls.startswith("thread-"):
        return ThreadEvent(cls.removeprefix("thread-"), str(fields.get("id", "")),
                           _str(fields.get("group-id")))
    return NotifyEvent(cls, fields)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return int(value, 0)
    except ValueError:
        return None
