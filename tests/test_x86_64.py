"""The page-table walker on hand-built tables.

The reference guest only uses 4-level paging with 4 KiB and 2 MiB pages, so 1 GiB pages,
5-level paging and corrupt entries are built here in a dict of physical pages: fake
data, because no guest at hand produces them. The live walk through the guest's own
tables is exercised by tests/test_inspect.py (every mmap'd virtual read)."""

from __future__ import annotations

import itertools
import struct

import pytest

from undebug.arch.x86_64 import Translation, TranslationError, is_canonical, translate

P, W, U, PS = 1, 2, 4, 0x80
NX = 1 << 63


class Phys:
    """Physical memory as sparse 4 KiB pages of zeroes."""

    def __init__(self, limit: int = 1 << 32) -> None:
        self.pages: dict[int, bytearray] = {}
        self.limit = limit

    def set(self, table: int, index: int, entry: int) -> None:
        page = self.pages.setdefault(table, bytearray(4096))
        struct.pack_into("<Q", page, index * 8, entry)

    def read(self, address: int, size: int) -> bytes:
        if address + size > self.limit:
            raise ValueError(f"{address:#x} is outside RAM")
        page = self.pages.get(address & ~0xFFF, bytearray(4096))
        return bytes(page[address & 0xFFF : (address & 0xFFF) + size])


def idx(address: int, level: int) -> int:
    return (address >> (12 + 9 * (level - 1))) & 0x1FF


def map_4k(phys: Phys, cr3: int, virtual: int, physical: int, flags: int = P | W) -> None:
    tables = [cr3, 0x10000, 0x11000, 0x12000]
    for level, table in zip((4, 3, 2), tables, strict=False):
        phys.set(table, idx(virtual, level), tables[4 - level + 1] | P | W | U)
    phys.set(0x12000, idx(virtual, 1), physical | flags)


def test_4k_page() -> None:
    phys = Phys()
    map_4k(phys, 0x1000, 0xFFFF_8000_0040_2000, 0x7_3000, P | W | NX)
    t = translate(phys.read, 0x1000, 0xFFFF_8000_0040_2ABC)
    assert t == Translation(0xFFFF_8000_0040_2ABC, 0x7_3ABC, 4096, True, False, False)
    assert t.bytes_left_in_page == 4096 - 0xABC


def test_2m_and_1g_pages() -> None:
    phys = Phys()
    phys.set(0x1000, 0, 0x2000 | P | W)
    phys.set(0x2000, 1, 0x4000_0000 | P | PS)  # 1 GiB page for 1..2 GiB
    phys.set(0x2000, 0, 0x3000 | P | W)
    phys.set(0x3000, 3, 0x20_0000 * 7 | P | PS)  # a read-only 2 MiB page
    assert translate(phys.read, 0x1000, 0x4123_4567).physical == 0x4123_4567
    assert translate(phys.read, 0x1000, 0x4123_4567).page_size == 1 << 30
    two = translate(phys.read, 0x1000, 0x60_0000 + 0x1234)
    assert (two.physical, two.page_size, two.writable) == (0xE0_0000 + 0x1234, 2 << 20, False)


def test_five_level_paging() -> None:
    phys = Phys()
    virtual = 0x00FF_0000_0000_1000  # only canonical with 57 bits
    assert not is_canonical(virtual) and is_canonical(virtual, five_level=True)
    tables = [0x1000, 0x2000, 0x3000, 0x4000, 0x5000]
    for level, (table, child) in zip((5, 4, 3, 2), itertools.pairwise(tables),
                                     strict=False):
        phys.set(table, idx(virtual, level), child | P | W)
    phys.set(0x5000, idx(virtual, 1), 0x9000 | P)
    assert translate(phys.read, 0x1000, virtual, five_level=True).physical == 0x9000
    with pytest.raises(TranslationError, match="canonical"):
        translate(phys.read, 0x1000, virtual)


def test_unmapped_and_null_page() -> None:
    phys = Phys()
    map_4k(phys, 0x1000, 0x40_0000, 0x5000)
    with pytest.raises(TranslationError, match="level 1 entry not present"):
        translate(phys.read, 0x1000, 0x40_1000)
    with pytest.raises(TranslationError, match="level 4 entry not present"):
        translate(phys.read, 0x1000, 0xFFFF_FFFF_8000_0000)


def test_corrupt_table_pointing_outside_ram_is_reported() -> None:
    phys = Phys(limit=1 << 24)
    phys.set(0x1000, 0, 0xF_FFFF_F000 | P)  # a level-3 table far beyond RAM
    with pytest.raises(TranslationError, match="unreadable"):
        translate(phys.read, 0x1000, 0x1000)


def test_self_referencing_tables_terminate() -> None:
    phys = Phys()
    for index in range(512):
        phys.set(0x1000, index, 0x1000 | P | W)  # every entry points back at the root
    t = translate(phys.read, 0x1000, 0x1234)  # fixed depth: 4 reads, then a "page"
    assert t.physical == 0x1234


def test_first_executable_kernel_page_in_the_top_2_gib() -> None:
    """As Nanos maps itself after KASLR: tables above with U set (the leaf decides), a
    non-executable heap page below the kernel, a user page, then the kernel's text."""
    from undebug.arch.x86_64 import first_executable

    phys = Phys()
    top = 0xFFFF_FFFF_8000_0000
    map_4k(phys, 0x1000, 0xFFFF_FFFF_C000_0000, 0x5_0000, P | W | NX)  # heap: NX
    phys.set(0x12000, 1, 0x5_1000 | P | U)  # 0x...c0001000: a user page, executable
    phys.set(0x12000, 7, 0x5_7000 | P)  # 0x...c0007000: the kernel's first text page
    phys.set(0x12000, 8, 0x5_8000 | P)
    assert first_executable(phys.read, 0x1000, top, 1 << 64) == 0xFFFF_FFFF_C000_7000
    assert first_executable(phys.read, 0x1000, 0xFFFF_FFFF_C000_8000, 1 << 64) == \
        0xFFFF_FFFF_C000_8000
    assert first_executable(phys.read, 0x1000, top, 0xFFFF_FFFF_C000_7000) is None
    # a hostile guest's tables: the walk reads at most max_tables of them
    assert first_executable(phys.read, 0x1000, top, 1 << 64, max_tables=2) is None
