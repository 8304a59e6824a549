"""The memory map of the real reference guest in real QEMU, from its own page tables.

Expected values come from the guest's README (planted layout: RAM identity-mapped in 4 KiB
pages, page 0 unmapped, LAPIC/IOAPIC 2 MiB pages, every thread's guard page unmapped)
and from the guest's own variables (``ram_top``, ``kernel_cr3``, each ``struct thread``'s
``guard_page``), read independently of the walk.
"""

from __future__ import annotations

from pathlib import Path

from undebug.arch.x86_64 import Mapping, walk_mappings
from undebug.elf import ElfFile
from undebug.os import provider_for
from undebug.session.store import SessionDir
from undebug.target import LiveTarget

MIB2 = 2 << 20


def covering(mappings: list[Mapping], address: int) -> Mapping | None:
    return next((m for m in mappings if m.virtual <= address < m.end), None)


def test_walk_of_the_live_guest_finds_the_planted_layout(shared_guest: str,
                                                          guest_image: Path) -> None:
    elf = ElfFile(guest_image)
    with LiveTarget(SessionDir.named(shared_guest)) as target:
        cr3 = target.registers(0)["cr3"]
        assert cr3 == target.read_int(elf.symbol("kernel_cr3").address)  # type: ignore[union-attr]
        ram_top = target.read_int(elf.symbol("ram_top").address)  # type: ignore[union-attr]
        guard_at = elf.struct("thread").member("guard_page").offset  # type: ignore[union-attr]
        snapshot = provider_for(target).threads()
        guards = [target.read_int(t.address + guard_at) for t in snapshot.threads]
        walk = walk_mappings(target.read_physical, cr3)
    assert walk.problems == [] and walk.complete
    mappings = walk.mappings
    assert covering(mappings, 0) is None  # the null page
    assert covering(mappings, 4095) is None
    first = covering(mappings, 0x1000)
    assert first is not None and first.virtual == 0x1000 and first.page_size == 4096
    # identity map: every mapping below ram_top has physical == virtual, in 4 KiB pages
    low = [m for m in mappings if m.virtual < ram_top]
    assert all(m.physical == m.virtual and m.page_size == 4096 for m in low)
    mapped_top = -(-ram_top // MIB2) * MIB2  # mm.c's paging_init maps RAM up to a 2 MiB line
    assert low[-1].end == mapped_top
    assert sum(m.size for m in low) == mapped_top - 4096 - 4096 * len(set(guards))
    for guard in guards:
        assert guard % 4096 == 0 and covering(mappings, guard) is None
        assert covering(mappings, guard + 4096) is not None  # the stack above it is mapped
    ioapic = covering(mappings, 0xFEC00000)  # with the LAPIC's 2 MiB right above: one run
    assert ioapic is not None and ioapic.page_size == MIB2
    assert (ioapic.virtual, ioapic.physical, ioapic.size) == (0xFEC00000, 0xFEC00000, 2 * MIB2)
    assert mappings[-1] == ioapic  # nothing else is mapped
