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
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from undebug.elf import Symbol
from undebug.os import provider_for
from undebug.os.provider import GuestThread, ThreadProvider
from undebug.target import Target, open_target
from undebug.text import escape
from undebug.unwind import Backtrace, unwind

__all__ = ["GuestText", "Session", "attach"]

_D = TypeVar("_D")


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


class Session:
    """One guest, held still while the session is open (unless ``stop=False``)."""

    def __init__(self, target: Target) -> None:
        self.target = target
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

    def thread(self, thread_id: int) -> GuestThread:
        return _safe(self.provider.threads().find(thread_id))

    def backtrace(self, thread_id: int, max_frames: int = 64) -> Backtrace:
        thread = self.thread(thread_id)
        trace = unwind(self.target.elf, self.target.read, thread.registers, thread.stack,
                       max_frames=max_frames, trap_frames=self.provider.trap_frame,
                       resumes_after_call=thread.resumes_after_call)
        return dataclasses.replace(trace, frames=[_safe(frame) for frame in trace.frames])

    def registers(self, cpu: int = 0) -> dict[str, int]:
        return self.target.registers(cpu)

    def read(self, address: int, size: int) -> bytes:
        return self.target.read(address, size)

    def read_physical(self, address: int, size: int) -> bytes:
        return self.target.read_physical(address, size)

    def symbol(self, name: str) -> Symbol | None:
        symbol = self.target.elf.symbol(name)
        return _safe(symbol) if symbol is not None else None

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
    return Session(target)
