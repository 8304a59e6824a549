"""The page-table walker on hand-built tables.

The reference guest only uses 4-level paging with 4 KiB and 2 MiB pages, so 1 GiB pages,
5-level paging and corrupt entries are built here in a dict of physical pages: fake
data, because no guest at hand produces them. The live walk through the guest's own
tables is exercised by tests/test_inspect.py (every mmap'd virtual read)."""

from __future__ import annotations

import itertools
import struct

import pytest

from undebug.arch.x86_64 import (
    Mapping,
    Translation,
    TranslationError,
    is_canonical,
    translate,
    walk_mappings,
)

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


# ---- walk_mappings: every mapping of an address space (fake tables, as above) ----

class CountingPhys(Phys):
    """Phys that counts reads and their sizes (each table must cost one 4 KiB read)."""

    def __init__(self, limit: int = 1 << 32) -> None:
        super().__init__(limit)
        self.reads: list[int] = []

    def read(self, address: int, size: int) -> bytes:
        self.reads.append(size)
        return super().read(address, size)


def test_walk_merges_contiguous_runs_and_splits_on_permissions() -> None:
    phys = CountingPhys()
    for page in range(1, 8):  # pages 1..7 identity-mapped; page 0 (null) left out
        flags = P | (0 if page in (2, 3) else W)  # 2..3 read-only: its own run
        map_4k(phys, 0x1000, page * 4096, page * 4096, flags | (NX if page >= 6 else 0))
    map_4k(phys, 0x1000, 9 * 4096, 0x50_0000, P | W | NX)  # a hole at 8, elsewhere in RAM
    walk = walk_mappings(phys.read, 0x1000)
    assert walk.problems == [] and walk.complete
    assert walk.mappings == [
        Mapping(0x1000, 0x1000, 0x1000, 4096, True, False, True),
        Mapping(0x2000, 0x2000, 0x2000, 4096, False, False, True),
        Mapping(0x4000, 0x4000, 0x2000, 4096, True, False, True),
        Mapping(0x6000, 0x6000, 0x2000, 4096, True, False, False),
        Mapping(0x9000, 0x50_0000, 0x1000, 4096, True, False, False),
    ]
    assert walk.tables_read == 4 and set(phys.reads) == {4096}


def test_walk_physically_discontiguous_pages_are_not_merged() -> None:
    phys = Phys()
    map_4k(phys, 0x1000, 0x1000, 0x9000)
    map_4k(phys, 0x1000, 0x2000, 0x8000)  # virtually next, physically before
    walk = walk_mappings(phys.read, 0x1000)
    assert [(m.virtual, m.physical, m.size) for m in walk.mappings] == \
        [(0x1000, 0x9000, 0x1000), (0x2000, 0x8000, 0x1000)]


def test_walk_huge_pages_upper_half_and_user_bit() -> None:
    phys = Phys()
    phys.set(0x1000, 0, 0x2000 | P | W | U)
    phys.set(0x2000, 1, 0x4000_0000 | P | W | U | PS)  # 1 GiB at 1 GiB, user
    phys.set(0x2000, 0, 0x3000 | P | W | U)
    phys.set(0x3000, 0, 0x20_0000 * 3 | P | PS)  # 2 MiB supervisor (U clear on the leaf)
    phys.set(0x1000, 511, 0x5000 | P | W)  # the last 512 GiB: the kernel's half
    phys.set(0x5000, 510, 0x6000 | P | W)
    phys.set(0x6000, 0, 0x20_0000 | P | W | PS)
    walk = walk_mappings(phys.read, 0x1000)
    assert walk.mappings == [
        Mapping(0, 0x60_0000, 2 << 20, 2 << 20, False, False, True),
        Mapping(1 << 30, 1 << 30, 1 << 30, 1 << 30, True, True, True),
        Mapping(0xFFFF_FFFF_8000_0000, 0x20_0000, 2 << 20, 2 << 20, True, False, True),
    ]
    assert all(is_canonical(m.virtual) and is_canonical(m.end - 1) for m in walk.mappings)


def test_walk_five_level_sign_extends_at_bit_56() -> None:
    phys = Phys()
    tables = [0x1000, 0x2000, 0x3000, 0x4000, 0x5000]
    virtual = 0xFF00_0000_0000_0000 | 0x1000  # PML5 index 256 with 57-bit addresses
    for level, (table, child) in zip((5, 4, 3, 2), itertools.pairwise(tables), strict=False):
        phys.set(table, idx(virtual, level), child | P | W)
    phys.set(0x5000, idx(virtual, 1), 0x9000 | P)
    walk = walk_mappings(phys.read, 0x1000, five_level=True)
    assert walk.mappings == [Mapping(virtual, 0x9000, 4096, 4096, False, False, True)]
    assert is_canonical(virtual, five_level=True)


def test_walk_agrees_with_translate_on_every_page() -> None:
    phys = Phys()
    pages = [(0x40_0000 + i * 4096, 0x7_0000 + (i * 7 % 13) * 4096) for i in range(40)]
    for virtual, physical in pages:
        map_4k(phys, 0x1000, virtual, physical, P | (W if virtual % 3 else 0))
    walk = walk_mappings(phys.read, 0x1000)
    for m in walk.mappings:
        for at in range(m.virtual, m.end, 4096):
            t = translate(phys.read, 0x1000, at)
            assert (t.physical, t.writable, t.user, t.executable) == \
                (m.physical + at - m.virtual, m.writable, m.user, m.executable)
    assert sum(m.size for m in walk.mappings) == len(pages) * 4096


def test_walk_cyclic_tables_are_reported_not_followed() -> None:
    phys = CountingPhys()
    for index in range(512):
        phys.set(0x1000, index, 0x1000 | P | W)  # every entry points back at the root
    phys.set(0x2000, 0, 0x2000 | P | W)  # and a level-3 table that points at itself
    phys.set(0x1000, 3, 0x2000 | P | W)
    walk = walk_mappings(phys.read, 0x1000)
    assert walk.mappings == []
    assert walk.tables_read == 2 and len(phys.reads) == 2
    assert any("cycle" in p and "0x1000" in p for p in walk.problems)
    assert any("cycle" in p and "0x2000" in p for p in walk.problems)
    assert len(walk.problems) <= 33 and walk.problems[-1].startswith("... and ")


def test_walk_shared_tables_stop_at_the_budget() -> None:
    """Tables that all share one child (no cycle) would mean 512^3 table reads: the budget
    stops the walk, says so, and keeps what it found."""
    phys = CountingPhys()
    for index in range(512):
        phys.set(0x1000, index, 0x2000 | P | W)
        phys.set(0x2000, index, 0x3000 | P | W)
        phys.set(0x3000, index, 0x4000 | P | W)
        phys.set(0x4000, index, (index * 4096) | P)
    walk = walk_mappings(phys.read, 0x1000, max_tables=50)
    assert not walk.complete and walk.tables_read == 50 and len(phys.reads) == 50
    assert any("50 page tables" in p for p in walk.problems)
    assert walk.mappings[0] == Mapping(0, 0, 2 << 20, 4096, False, False, True)


def test_walk_mapping_budget() -> None:
    phys = Phys()
    for page in range(0, 64, 2):  # 32 separate one-page runs
        map_4k(phys, 0x1000, page * 4096, page * 4096)
    walk = walk_mappings(phys.read, 0x1000, max_mappings=10)
    assert len(walk.mappings) == 10 and not walk.complete
    assert any("10 mappings" in p for p in walk.problems)


def test_walk_unreadable_table_and_reserved_bit_are_reported_and_skipped() -> None:
    phys = Phys(limit=1 << 24)
    phys.set(0x1000, 0, 0xF_FFFF_F000 | P)  # a level-3 table far beyond RAM
    phys.set(0x1000, 1, 0x2000 | P | PS)  # PS at level 4 is reserved
    phys.set(0x1000, 2, 0x3000 | P | W)
    phys.set(0x3000, 0, 0x4000 | P | W)
    phys.set(0x4000, 0, 0x60_0000 | P | W | PS)  # a good 2 MiB page after the bad ones
    walk = walk_mappings(phys.read, 0x1000)
    assert walk.mappings == [Mapping(2 << 39, 0x60_0000, 2 << 20,
                                     2 << 20, True, False, True)]
    assert len(walk.problems) == 2 and "unreadable" in walk.problems[0]
    assert "reserved" in walk.problems[1]
    assert walk.complete  # nothing was cut short by a budget


def test_walk_unreadable_root() -> None:
    walk = walk_mappings(Phys(limit=1 << 20).read, 0x20_0000)
    assert walk.mappings == [] and "unreadable" in walk.problems[0]


def test_walk_full_last_level_tables_fast_and_entry_by_entry_agree() -> None:
    """A last-level table of 512 contiguous pages is taken whole; one that differs in a
    single entry is read entry by entry: both give what translate gives page by page."""
    phys = Phys()
    phys.set(0x1000, 0, 0x2000 | P | W)
    phys.set(0x2000, 0, 0x3000 | P | W)
    for page in range(1024):  # 4 MiB from 2 MiB: two full last-level tables
        flags = P | (0 if page == 512 + 100 else W) | NX  # one read-only page in the second
        phys.set(0x3000, 1 + page // 512, (0x10000 + (page // 512) * 4096) | P | W)
        phys.set(0x10000 + (page // 512) * 4096, page % 512, (0x80_0000 + page * 4096) | flags)
    walk = walk_mappings(phys.read, 0x1000)
    assert walk.mappings == [
        Mapping(0x20_0000, 0x80_0000, (512 + 100) * 4096, 4096, True, False, False),
        Mapping(0x20_0000 + 612 * 4096, 0x80_0000 + 612 * 4096, 4096, 4096, False, False, False),
        Mapping(0x20_0000 + 613 * 4096, 0x80_0000 + 613 * 4096, 411 * 4096, 4096, True, False,
                False),
    ]
    for m in walk.mappings:
        for at in range(m.virtual, m.end, 4096):
            t = translate(phys.read, 0x1000, at)
            assert (t.physical, t.writable) == (m.physical + at - m.virtual, m.writable)
