"""x86-64 virtual → physical translation, and every mapping of an address space, by
walking the guest's own page tables.

QEMU's gdbstub reads virtual memory through the vCPU's current page tables, one small
packet at a time; with guest RAM mapped directly, undebug translates itself. The tables
live in guest memory and may be corrupt or hostile: the walk has a fixed depth, every
entry is range-checked by the reader, and failures are reported, never followed blindly.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["PAGE_SIZE", "Mapping", "PageWalk", "Translation", "TranslationError",
           "is_canonical", "translate", "walk_mappings"]

PAGE_SIZE = 4096
_PRESENT = 1 << 0
_WRITABLE = 1 << 1
_USER = 1 << 2
_HUGE = 1 << 7  # PS: a 1 GiB page at level 3, a 2 MiB page at level 2
_NX = 1 << 63
_ADDR = 0x000F_FFFF_FFFF_F000
CR4_LA57 = 1 << 12

ReadPhys = Callable[[int, int], bytes]
MAX_TABLES = 8192  # 32 MiB of tables: 16 GiB mapped in 4 KiB pages
MAX_MAPPINGS = 1 << 16
MAX_PROBLEMS = 32


class TranslationError(Exception):
    """``address`` is not mapped (or its page tables are unreadable) in this address space."""

    def __init__(self, address: int, reason: str) -> None:
        super().__init__(f"{address:#x}: {reason}")
        self.address = address
        self.reason = reason


@dataclass(frozen=True)
class Translation:
    virtual: int
    physical: int
    page_size: int  # 4 KiB, 2 MiB or 1 GiB
    writable: bool
    user: bool
    executable: bool

    @property
    def bytes_left_in_page(self) -> int:
        return self.page_size - (self.virtual & (self.page_size - 1))


def is_canonical(address: int, five_level: bool = False) -> bool:
    bits = 57 if five_level else 48
    top = address >> (bits - 1)
    return top == 0 or top == (1 << (64 - bits + 1)) - 1


def translate(read_phys: ReadPhys, cr3: int, address: int, five_level: bool = False) -> Translation:
    """Translate ``address`` with the tables rooted at ``cr3`` (4- or 5-level paging).

    ``read_phys(addr, size)`` reads guest-physical memory and raises on addresses outside
    RAM. Raises :class:`TranslationError` for unmapped, non-canonical or unreadable.
    """
    if not 0 <= address < 1 << 64 or not is_canonical(address, five_level):
        raise TranslationError(address, "not a canonical address")
    levels = 5 if five_level else 4
    table = cr3 & _ADDR
    writable = user = True
    executable = True
    for level in range(levels, 0, -1):
        shift = 12 + 9 * (level - 1)
        index = (address >> shift) & 0x1FF
        try:
            raw = read_phys(table + index * 8, 8)
        except Exception as exc:  # the reader's own error: outside RAM, stub gone, ...
            raise TranslationError(
                address, f"page table at {table:#x} (level {level}) unreadable: {exc}") from None
        if len(raw) != 8:
            raise TranslationError(address, f"short read of page table at {table:#x}")
        entry: int = struct.unpack("<Q", raw)[0]
        if not entry & _PRESENT:
            raise TranslationError(address, f"not mapped (level {level} entry not present)")
        writable &= bool(entry & _WRITABLE)
        user &= bool(entry & _USER)
        executable &= not entry & _NX
        if level == 1 or (level in (2, 3) and entry & _HUGE):
            page_size = 1 << shift
            base = entry & _ADDR & ~(page_size - 1)
            return Translation(address, base | (address & (page_size - 1)), page_size,
                               writable, user, executable)
        table = entry & _ADDR
    raise AssertionError("unreachable: level 1 always returns")


@dataclass(frozen=True)
class Mapping:
    """A run of virtual memory mapped onto contiguous physical memory with one set of
    permissions and one page size (adjacent page-table entries merged)."""

    virtual: int
    physical: int
    size: int
    page_size: int  # 4 KiB, 2 MiB or 1 GiB
    writable: bool
    user: bool
    executable: bool

    @property
    def end(self) -> int:
        return self.virtual + self.size


@dataclass
class PageWalk:
    """Every mapping of one address space, in virtual order, and what was wrong with its
    tables (unreadable, cyclic, reserved bits, the budget hit): the walk goes on past a
    bad entry, so ``mappings`` is what could be read."""

    mappings: list[Mapping] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    tables_read: int = 0
    complete: bool = True  # False when a budget stopped the walk early


class _Walker:
    """One walk's state: the pending merged run, budgets, problems (capped)."""

    def __init__(self, read_phys: ReadPhys, levels: int, max_tables: int,
                 max_mappings: int) -> None:
        self.read_phys = read_phys
        self.levels = levels
        self.max_tables = max_tables
        self.max_mappings = max_mappings
        self.walk = PageWalk()
        self.dropped_problems = 0
        self.stopped = False
        # the run being merged: virtual, physical, size, page size, w, u, x
        self.run: tuple[int, int, int, int, bool, bool, bool] | None = None

    def problem(self, text: str) -> None:
        if len(self.walk.problems) < MAX_PROBLEMS:
            self.walk.problems.append(text)
        else:
            self.dropped_problems += 1

    def stop(self, text: str) -> None:
        self.problem(text)
        self.walk.complete = False
        self.stopped = True

    def leaf(self, virtual: int, physical: int, size: int, page_size: int, writable: bool,
             user: bool, executable: bool) -> None:
        """``size`` bytes mapped in pages of ``page_size`` from ``virtual`` to ``physical``."""
        run = self.run
        if run is not None and run[0] + run[2] == virtual and run[1] + run[2] == physical \
                and run[3:] == (page_size, writable, user, executable):
            self.run = (run[0], run[1], run[2] + size, *run[3:])
            return
        self.flush()
        if len(self.walk.mappings) >= self.max_mappings:
            self.stop(f"stopped after {self.max_mappings} mappings (the budget): "
                      "the map is incomplete")
            return
        self.run = (virtual, physical, size, page_size, writable, user, executable)

    def flush(self) -> None:
        if self.run is not None:
            self.walk.mappings.append(Mapping(*self.run))
            self.run = None

    def table(self, address: int, level: int, base: int, path: tuple[int, ...],
              writable: bool, user: bool, executable: bool) -> None:
        """Walk the level-``level`` table at physical ``address`` mapping from ``base``."""
        if self.walk.tables_read >= self.max_tables:
            self.stop(f"stopped after {self.max_tables} page tables (the budget): "
                      "the map is incomplete")
            return
        self.walk.tables_read += 1
        try:
            data = self.read_phys(address, PAGE_SIZE)
        except Exception as exc:  # the reader's own error: outside RAM, stub gone, ...
            self.problem(f"level-{level} page table at {address:#x} (mapping from "
                         f"{base:#x}) unreadable: {exc}")
            return
        if len(data) != PAGE_SIZE:
            self.problem(f"short read of the level-{level} page table at {address:#x}")
            return
        shift = 12 + 9 * (level - 1)
        span = 1 << shift
        top_bit = 1 << (12 + 9 * self.levels - 1)
        entries = struct.unpack("<512Q", data)
        first = entries[0]
        if level == 1 and first & _PRESENT and (first & _ADDR) + 511 * PAGE_SIZE <= _ADDR \
                and entries == tuple(range(first, first + 512 * PAGE_SIZE, PAGE_SIZE)):
            # the common last-level table: 512 pages, contiguous, one set of flags
            self.leaf(base, first & _ADDR, 512 * PAGE_SIZE, PAGE_SIZE,
                      writable and bool(first & _WRITABLE), user and bool(first & _USER),
                      executable and not first & _NX)
            return
        for index, entry in enumerate(entries):
            if not entry & _PRESENT:
                continue
            if self.stopped:
                return
            virtual = base + index * span
            if virtual & top_bit:  # sign-extend into the upper canonical half
                virtual |= (1 << 64) - top_bit
            w = writable and bool(entry & _WRITABLE)
            u = user and bool(entry & _USER)
            x = executable and not entry & _NX
            if level == 1 or (level in (2, 3) and entry & _HUGE):
                self.leaf(virtual, entry & _ADDR & ~(span - 1), span, span, w, u, x)
            elif entry & _HUGE:
                self.problem(f"level-{level} entry {index} of the table at {address:#x} "
                             "sets the page-size bit (reserved there): skipped")
            elif (child := entry & _ADDR) in path:
                self.problem(f"level-{level} entry {index} of the table at {address:#x} "
                             f"points back at the table at {child:#x} (a cycle): not followed")
            else:
                self.table(child, level - 1, virtual, (*path, child), w, u, x)


def walk_mappings(read_phys: ReadPhys, cr3: int, five_level: bool = False, *,
                  max_tables: int = MAX_TABLES, max_mappings: int = MAX_MAPPINGS) -> PageWalk:
    """Every mapping of the address space rooted at ``cr3``, merged into runs.

    Each table is read whole (one 4 KiB ``read_phys``) and read at most ``max_tables``
    times in all; a table that points back at one of its ancestors is reported and not
    followed, so hostile tables cost a bounded walk, never an endless one. Virtual
    addresses are sign-extended (the upper half is canonical by construction).
    """
    levels = 5 if five_level else 4
    walker = _Walker(read_phys, levels, max_tables, max_mappings)
    root = cr3 & _ADDR
    walker.table(root, levels, 0, (root,), True, True, True)
    walker.flush()
    if walker.dropped_problems:
        walker.walk.problems.append(f"... and {walker.dropped_problems} more problems")
    return walker.walk
