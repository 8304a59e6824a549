"""QEMU's physical map as the supervisor parses it. QEMU's real replies are exercised by
tests/test_maps.py (the IOAPIC named from a live guest's ``info mtree -f``); here the
text and JSON are hand-written, hostile or malformed, as no QEMU sends them: fake data."""

from __future__ import annotations

from undebug.session.machine_map import DeviceRange, parse_flat_view, pci_ranges

FLAT = """FlatView #0
 AS "memory", root: system
 Root memory region: system
  0000000000000000-000000000009ffff (prio 0, ram): pc.ram KVM
  00000000000c0000-00000000000c3fff (prio 0, rom): pc.ram @00000000000c0000
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fed00000-00000000fecfffff (prio 0, i/o): backwards
  00000000fee00000-00000000feefffff (prio 4096, weird): unknown kind
  ffffffffffffffffff-0 (prio 0, i/o): too long
  garbage line \x1b]0;owned\x07
  00000000fef00000-00000000fef00fff (prio 0, i/o): """ + "x" * 500 + """

FlatView #1
 AS "cpu-smm-0", root: memory
  0000000000000000-0000000000000fff (prio 0, ram): smm
"""


def test_flat_view_keeps_the_sane_ranges_of_the_memory_view() -> None:
    ranges = parse_flat_view(FLAT)
    assert ranges[:3] == [DeviceRange(0, 0xA0000, "ram", "pc.ram", "mtree"),
                          DeviceRange(0xC0000, 0xC4000, "rom", "pc.ram", "mtree"),
                          DeviceRange(0xFEC00000, 0xFEC01000, "mmio", "ioapic", "mtree")]
    assert len(ranges) == 4 and len(ranges[3].name) == 120  # names are cut
    assert parse_flat_view("") == [] and parse_flat_view("\n" * 100_000) == []


def test_pci_reply_of_any_shape_gives_only_assigned_memory_bars() -> None:
    reply = [{"bus": 0, "devices": [
        {"bus": 0, "slot": 2, "function": 0, "id": {"vendor": 0x1AF4, "device": 0x1000},
         "class_info": {"class": 512}, "regions": [
             {"bar": 0, "type": "io", "address": 0xC000, "size": 32},
             {"bar": 1, "type": "memory", "address": 0xFEBF1000, "size": 4096},
             {"bar": 4, "type": "memory", "address": 0, "size": 16384},  # not assigned
             {"bar": 5, "type": "memory", "address": 2 ** 64 - 1, "size": 4096},
             "junk"]},
        "junk", {"regions": None}]}, 7, None]
    assert pci_ranges(reply) == [DeviceRange(0xFEBF1000, 0xFEBF2000, "mmio",
                                             "pci 00:02.0 1af4:1000 BAR1", "pci")]
    assert pci_ranges({"not": "a list"}) == [] and pci_ranges(None) == []
    odd = [{"devices": [{"bus": "x", "slot": -1, "id": "junk", "class_info": [],
                         "regions": [{"type": "memory", "address": 0x1000, "size": 16,
                                      "bar": "?"}]}]}]
    assert [r.name for r in pci_ranges(odd)] == ["pci 00:00.0 0000:0000 BAR0"]
