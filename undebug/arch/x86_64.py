"""x86-64 virtual → physical translation by walking the guest's own page tables.

QEMU's gdbstub reads virtual memory through the vCPU's current page tables, one small
packet at a time; with guest RAM mapped directly, undebug translates itself. The tables
live in guest memory and may be corrupt or hostile: the walk has a fixed depth, every
entry is range-checked by the reader, and failures are reported, never followed blindly.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["PAGE_SIZE", "Translation", "TranslationError", "is_canonical", "translate"]

PAGE_SIZE = 4096
_PRESENT = 1 << 0
_WRITABLE = 1 << 1
_USER = 1 << 2
_HUGE = 1 << 7  # PS: a 1 GiB page at level 3, a 2 MiB page at level 2
_NX = 1 << 63
_ADDR = 0x000F_FFFF_FFFF_F000
CR4_LA57 = 1 << 12

ReadPhys = Callable[[int, int], bytes]


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


def first_executable(read_phys: ReadPhys, cr3: int, start: int, end: int,
                     max_tables: int = 1100) -> int | None:
    """The lowest address in ``[start, end)`` mapped executable by supervisor-only entries
    (4-level paging), or None. Walks only the tables that cover the range, in address
    order, and reads at most ``max_tables`` of them (a hostile guest's tables are bounded);
    an unreadable table is skipped."""
    budget = [max_tables]

    def walk(table: int, level: int, base: int) -> int | None:
        if budget[0] <= 0:
            return None
        budget[0] -= 1
        try:
            raw = read_phys(table & _ADDR, PAGE_SIZE)
        except Exception:  # outside RAM: nothing mapped through it that we can read
            return None
        if len(raw) != PAGE_SIZE:
            return None
        shift = 12 + 9 * (level - 1)
        for index, entry in enumerate(struct.unpack("<512Q", raw)):
            low = base + (index << shift)
            virtual = low | (0xFFFF << 48) if low & (1 << 47) else low
            if virtual + (1 << shift) <= start or virtual >= end:
                continue
            if not entry & _PRESENT or entry & _NX:
                continue
            if level == 1 or (level in (2, 3) and entry & _HUGE):
                if entry & _USER:  # a user page (tables above may set U for all)
                    continue
                return max(virtual, start)
            found = walk(entry, level - 1, low)
            if found is not None:
                return found
        return None

    return walk(cr3, 4, 0)
