"""What the workers post back to the screens: one dataclass message per result, so that
widgets are only ever changed on the app's thread (Textual's rule). Textual's Message
initialises itself in ``__post_init__``, so a dataclass message needs no ``__init__``."""

from __future__ import annotations

from dataclasses import dataclass

from textual.message import Message

from undebug.api import Backtrace, GuestStatus, ThreadsView


@dataclass
class ViewRead(Message):
    """The guest's status and, when it changed (a new stop, or a live tick), its threads;
    with a new stop also the backtrace of the thread to select, read at that stop."""

    status: GuestStatus
    view: ThreadsView | None  # None: the same stop as the view already shown
    backtrace: tuple[int, Backtrace] | None = None  # (thread id, its backtrace)


@dataclass
class GuestGone(Message):
    """The guest's session is no more (``undebug kill``): nothing left to read."""

    reason: str


@dataclass
class BacktraceRead(Message):
    thread_id: int
    run_token: int
    backtrace: Backtrace


@dataclass
class GuestsRead(Message):
    guests: list[GuestStatus]
    problems: list[str]


@dataclass
class Notice(Message):
    """One line for the user: what a request did, or why it failed (then the TUI goes on)."""

    text: str
    error: bool = True
