"""The Target seam: where a guest's bytes and registers come from, and nothing else.

Everything above this layer (OS awareness, the unwinder, the CLI) takes a :class:`Target`
and never asks whether the guest is live or a dump (drgn's ``Program`` is the model).
:func:`open_target` turns what the user typed into one: a running guest's
:class:`~undebug.live_target.LiveTarget` or a dump bundle's
:class:`~undebug.coretarget.CoreTarget`.
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from undebug.elf import ElfFile
from undebug.errors import UndebugError, UsageError
from undebug.session.machine_map import DeviceRange
from undebug.session.replies import recorded_status
from undebug.session.store import SessionDir

__all__ = ["LinkMapEntry", "ReadError", "Target", "guest_elf", "open_target",
           "remembered_elf"]

MAX_RPC_READ = 16 << 20
MASK = (1 << 64) - 1


def open_target(spec: str, elf: Path | None = None, *, stop: bool = True,
                force: bool = False) -> Target:
    """The guest the user named, as a Target: the one place user input becomes one.

    ``spec`` is what was typed: a session name (see ``undebug ps``) or a dump bundle's
    path (:mod:`undebug.coretarget`). ``elf`` overrides the ELF the session remembers.
    """
    from undebug.coretarget import is_bundle, open_bundle
    from undebug.live_target import LiveTarget

    if is_bundle(spec):
        return open_bundle(Path(spec), elf, force=force)
    return LiveTarget(SessionDir.named(spec), elf, stop=stop, force=force)


def guest_elf(spec: str, elf: Path | None = None) -> ElfFile:
    """The ELF of the guest ``spec`` without touching the guest (for symbol look-ups):
    ``elf`` if given, else the one its session (or bundle) remembers."""
    from undebug.coretarget import bundle_elf, is_bundle, read_bundle

    if is_bundle(spec):
        return bundle_elf(read_bundle(Path(spec)), elf)
    path = elf or remembered_elf(spec)
    if path is None:
        raise UsageError(f"no ELF known for guest {spec!r}", hint="pass --elf")
    return ElfFile(path)


def remembered_elf(spec: str) -> Path | None:
    """The ELF the session of guest ``spec`` remembers (its record), if any."""
    remembered = recorded_status(SessionDir.named(spec)).elf
    return None if remembered is None else Path(remembered)


@dataclass(frozen=True)
class LinkMapEntry:
    """One ``struct link_map`` of a program's dynamic linker, as the guest has it (the OS
    awareness reads them: :mod:`undebug.os.solib`). ``name`` is raw guest text."""

    address: int
    bias: int  # l_addr
    name: str  # l_name ("" for the program itself)
    dynamic: int  # l_ld: its PT_DYNAMIC, after its code and read-only data


class ReadError(UndebugError):
    """Guest memory that cannot be read: unmapped, outside RAM, or refused by the stub."""


class Target(ABC):
    """Memory, registers and symbols of one guest, consistent for one ``run_token``."""

    def __init__(self, elf: ElfFile, load_offset: int = 0) -> None:
        self.elf = elf
        self.load_offset = load_offset  # a KASLR slide: runtime address = ELF address + this
        self.programs: list[tuple[ElfFile, int]] = []  # a kernel's programs, and their offsets
        # position-independent programs without @ADDR, at offset 0 in ``programs`` until
        # the OS awareness finds where the guest put them (``place``)
        self.unplaced: list[ElfFile] = []
        # the programs' dynamic linkers' link_map chains (the program's own entry first),
        # matched to a host ELF in ``programs`` or not
        self.link_maps: list[LinkMapEntry] = []
        self.sysroot = Path("/")  # the host directory the libraries' paths are under
        self.warnings: list[str] = []
        # what is damaged where the bytes come from (a truncated dump): a command shows
        # what it can, then exits 2
        self.problems: list[str] = []
        self.elf_mismatch: str | None = None  # why the ELF is not the guest's (--force)

    @abstractmethod
    def read(self, address: int, size: int) -> bytes:
        """``size`` bytes of guest-virtual memory (raises :class:`ReadError`)."""

    @abstractmethod
    def read_physical(self, address: int, size: int) -> bytes:
        """``size`` bytes of guest-physical memory (raises :class:`ReadError`)."""

    @abstractmethod
    def registers(self, cpu: int) -> dict[str, int]:
        """The registers of vCPU ``cpu``, by gdb's names (rip, rsp, cr3, gs_base, ...)."""

    @abstractmethod
    def cpu_count(self) -> int: ...

    def machine_map(self) -> list[DeviceRange]:
        """What backs guest-physical memory (RAM, ROM, device MMIO), as the machine names
        it; [] where nobody can tell (a warning says why)."""
        return []

    @property
    @abstractmethod
    def run_token(self) -> int:
        """Changes whenever the guest may have run: caches of guest state key on it."""

    @abstractmethod
    def close(self) -> None:
        """Let go of the guest (a live one resumes if it was running)."""

    def __enter__(self) -> Target:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    @contextlib.contextmanager
    def moment(self) -> Iterator[None]:
        """One pass of reads (a thread walk) that may reuse what it read: registers, page
        translations, the run token. A stopped guest is one moment anyway; a running one
        (:class:`LiveTarget` with ``stop=False``) then costs one register read per pass,
        not one per memory read, and is still torn (a moving picture, not a stop)."""
        yield

    def address_of(self, name: str) -> int | None:
        """The runtime address of a kernel symbol (with the load offset), or None."""
        symbol = self.elf.symbol(name)
        return None if symbol is None else symbol.address + self.load_offset

    def library_at(self, address: int) -> str | None:
        """``libc.so.6+0x1234`` for an address in a library of ``link_maps`` (between its
        ``l_addr`` and its ``l_ld``): how a frame in a library with no host ELF is named."""
        found = max((e for e in self.link_maps if e.name and e.bias <= address < e.dynamic),
                    key=lambda e: e.bias, default=None)
        if found is None:
            return None
        return f"{found.name.rsplit('/', 1)[-1]}+{address - found.bias:#x}"

    def place(self, elf: ElfFile, offset: int) -> None:
        """Put program ``elf`` (one of ``unplaced``) at ``offset``, where the OS awareness
        found the guest had loaded it."""
        self.programs = [(e, offset if e is elf else o) for e, o in self.programs]
        self.unplaced = [e for e in self.unplaced if e is not elf]

    def read_int(self, address: int, size: int = 8, signed: bool = False) -> int:
        return int.from_bytes(self.read(address, size), "little", signed=signed)

    @property
    def modules(self) -> list[tuple[ElfFile, int]]:
        """Every ELF whose code the guest runs, with its load offset: the kernel first."""
        return [(self.elf, self.load_offset), *self.programs]

    def written_ranges(self, address: int, size: int) -> list[tuple[int, int]] | None:
        """The ``(address, size)`` pieces of guest-physical ``[address, address + size)``
        that the guest may have written, in address order; the rest reads as zero without
        being read (a dump's sparse pass reads only these). None: not known here (read it
        all), or not all of it is RAM."""
        return None

    def ram_ranges(self, address: int, size: int) -> list[tuple[int, int]] | None:
        """The ``(address, size)`` pieces of guest-physical ``[address, address + size)``
        that :meth:`read_physical` reads, in address order (the rest raises ReadError),
        where the target knows without trying; None: try."""
        return None

    def copy_physical(self, address: int, size: int, fd: int) -> None:
        """Write ``size`` bytes of guest-physical memory to file descriptor ``fd`` at its
        offset (a dump's bulk path: a live guest's shared RAM goes kernel to kernel)."""
        for at in range(0, size, MAX_RPC_READ):
            data = memoryview(self.read_physical(address + at, min(MAX_RPC_READ, size - at)))
            while data:
                data = data[os.write(fd, data):]

    def module_at(self, address: int) -> tuple[ElfFile, int]:
        """The ELF whose text holds runtime ``address`` (the kernel's when none does)."""
        if not self.programs:  # a kernel alone (most guests): no search
            return self.elf, self.load_offset
        return next(((elf, offset) for elf, offset in self.modules
                     if elf.in_text((address - offset) & MASK)), (self.elf, self.load_offset))

    def symbolize(self, address: int) -> str | None:
        """``function+0xoff`` of a runtime address, in whichever ELF holds it."""
        elf, offset = self.module_at(address)
        return elf.symbolize((address - offset) & MASK)

    def line_at(self, address: int) -> tuple[str, int] | None:
        elf, offset = self.module_at(address)
        return elf.line_at((address - offset) & MASK)
