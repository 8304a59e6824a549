"""The Python API: ``undebug.attach(name)`` gives the operations of the CLI as objects.

>>> import undebug
>>> with undebug.attach("web") as guest:
...     for thread in guest.threads():
...         print(thread.id, thread.name, guest.backtrace(thread.id).frames[0].function)
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

from undebug.elf import Symbol
from undebug.os import provider_for
from undebug.os.provider import GuestThread, ThreadProvider
from undebug.target import Target, open_target
from undebug.unwind import Backtrace, unwind

__all__ = ["Session", "attach"]


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
        return snapshot.threads

    def thread(self, thread_id: int) -> GuestThread:
        return self.provider.threads().find(thread_id)

    def backtrace(self, thread_id: int, max_frames: int = 64) -> Backtrace:
        thread = self.thread(thread_id)
        return unwind(self.target.elf, self.target.read, thread.registers, thread.stack,
                      max_frames=max_frames)

    def registers(self, cpu: int = 0) -> dict[str, int]:
        return self.target.registers(cpu)

    def read(self, address: int, size: int) -> bytes:
        return self.target.read(address, size)

    def read_physical(self, address: int, size: int) -> bytes:
        return self.target.read_physical(address, size)

    def symbol(self, name: str) -> Symbol | None:
        return self.target.elf.symbol(name)

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
