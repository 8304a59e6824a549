"""The memory map of the real reference guest in real QEMU, from its own page tables.

Expected values come from the guest's README (planted layout: RAM identity-mapped in 4 KiB
pages, page 0 unmapped, LAPIC/IOAPIC 2 MiB pages, every thread's guard page unmapped)
and from the guest's own variables (``ram_top``, ``kernel_cr3``, each ``struct thread``'s
``guard_page``), read independently of the walk.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.conftest import boot, real_image, undebug, wait_for_console
from tests.test_schema import check
from undebug.arch.x86_64 import Mapping, walk_mappings
from undebug.elf import ElfFile
from undebug.live_target import LiveTarget
from undebug.os import provider_for
from undebug.session.store import SessionDir

MIB2 = 2 << 20
EVIL = "evil\x1b]0;owned\x07"  # the planted hostile thread name


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


# ---- undebug maps ----------------------------------------------------------------------

IST_NAMES = ("#DF", "#PF", "NMI")  # the README: three IST stacks per CPU, no guard pages


def maps_of(name: str, *extra: str) -> dict[str, Any]:
    result = undebug("maps", name, "--json", *extra)
    assert result.code == 0, result.stderr
    doc: dict[str, Any] = result.json()
    check("maps", doc)  # docs/schema/undebug-1.json
    return doc


def region_at(doc: dict[str, Any], address: int) -> dict[str, Any]:
    found = [r for r in doc["regions"] if r["start"] <= address < r["end"]]
    assert len(found) == 1, (hex(address), found)
    region: dict[str, Any] = found[0]
    return region


def test_maps_names_the_planted_layout(shared_guest: str, guest_image: Path) -> None:
    elf = ElfFile(guest_image)
    with LiveTarget(SessionDir.named(shared_guest)) as target:
        heap_base, heap_end = (target.read_int(elf.symbol(n).address)  # type: ignore[union-attr]
                               for n in ("heap_base", "heap_end"))
    doc = maps_of(shared_guest)
    assert doc["problems"] == [] and doc["complete"] and doc["write_protect"]
    null = region_at(doc, 0)
    assert (null["mapped"], null["names"], null["flags"]) == (False, ["null page"], [])
    for name, permissions in ((".text", "r-x"), (".rodata", "r-x"), (".data", "rw-"),
                              (".bss", "rw-")):
        section = elf.section(name)
        assert section is not None
        region = region_at(doc, section.address)
        assert region["start"] == section.address and region["names"] == [name], region
        assert region["permissions"] == permissions and not region["user"], region
    heap = region_at(doc, heap_base)
    assert (heap["start"], heap["end"], heap["names"]) == (heap_base, heap_end, ["heap"])
    assert heap["physical"] == heap_base and heap["permissions"] == "rw-"  # identity map
    threads = undebug("threads", shared_guest, "--json").json()["threads"]
    assert len(threads) == 15
    for t in threads:
        low, high = t["stack"]
        stack = region_at(doc, low)
        assert stack["names"][-1] == f"stack of {t['name']}" and t["id"] in stack["threads"]
        assert (stack["start"], stack["permissions"], stack["flags"]) == (low, "rw-", [])
        assert region_at(doc, high - 1) == stack  # one region, the whole stack
        guard = region_at(doc, low - 4096)
        assert guard["names"][-1] == f"guard page of {t['name']}", guard
        assert (guard["mapped"], guard["flags"], guard["end"]) == (False, [], low)
    # W+X: exactly the RAM below 1 MiB (the AP trampoline runs there), nothing else
    wx = [r for r in doc["regions"] if "wx" in r["flags"]]
    assert wx[0]["start"] == 0x1000 and wx[-1]["end"] == 0x100000
    assert sum(r["size"] for r in wx) == 0x100000 - 0x1000
    # no guard page: exactly the IST stacks of both vCPUs
    unguarded = sorted(r["names"][-1] for r in doc["regions"] if "no-guard" in r["flags"])
    assert unguarded == sorted(f"{n} stack of cpu {c}" for c in (0, 1) for n in IST_NAMES)
    ioapic = region_at(doc, 0xFEC00000)  # -M pc's IOAPIC, named by QEMU's memory tree
    assert ioapic["names"] == ["ioapic"] and ioapic["page_sizes"] == [MIB2]
    assert any(d["name"] == "ioapic" and d["start"] == 0xFEC00000 for d in doc["devices"])


def test_maps_text_output_and_check_exit_code(shared_guest: str) -> None:
    result = undebug("maps", shared_guest)
    assert result.code == 0, result.stderr
    assert "evil\\x1b]0;owned\\x07" in result.stdout and "\x1b" not in result.stdout
    assert "flagged: writable and executable" in result.stdout
    checked = undebug("maps", shared_guest, "--check")
    assert checked.code == 1  # the W+X low memory is flagged
    assert undebug("maps", "no-such-guest").code == 2


def test_corrupt_page_tables_are_reported_and_bounded(guest_image: Path) -> None:
    """The guest's own PML4 gets a cyclic entry and one pointing outside RAM (entries 1
    and 2, virtual 512 GiB to 1.5 TiB, which the guest never touches): both reported,
    the walk ends, the rest of the map is still there."""
    name = boot("maps-corrupt", "threads=2", guest_image)
    try:
        target = LiveTarget(SessionDir.named(name))
        with target:
            root = target.registers(0)["cr3"] & ~0xFFF
            target.client.write_memory(root + 8, (root | 3).to_bytes(8, "little"))
            target.client.write_memory(root + 16, (0xF_FFFF_F000 | 3).to_bytes(8, "little"))
        started = time.monotonic()
        doc = maps_of(name)
        assert time.monotonic() - started < 20
        assert len(doc["problems"]) == 2, doc["problems"]
        assert "cycle" in doc["problems"][0] and f"{root:#x}" in doc["problems"][0]
        assert "unreadable" in doc["problems"][1] and "0xffffff000" in doc["problems"][1]
        assert [w for w in doc["warnings"] if w.startswith("page tables: ")] == \
            [f"page tables: {p}" for p in doc["problems"]]
        text = ElfFile(guest_image).section(".text")
        assert text is not None and region_at(doc, text.address)["names"] == [".text"]
    finally:
        undebug("kill", name)


def test_unikraft_maps_shows_text_data_and_the_threads_stacks() -> None:
    image = real_image("UNDEBUG_UNIKRAFT_IMAGE")
    elf = ElfFile(image.with_name(image.name + ".dbg"))
    assert undebug("run", "-d", "--name", "ukmaps", str(image)).code == 0
    try:
        wait_for_console("ukmaps", "worker-2")
        doc = maps_of("ukmaps")
        for name in (".text", ".rodata", ".data", ".bss"):
            section = elf.section(name)
            assert section is not None
            assert name in region_at(doc, section.address)["names"]
        assert region_at(doc, elf.section(".text").address)["executable"]  # type: ignore[union-attr]
        threads = undebug("threads", "ukmaps", "--json").json()["threads"]
        workers = [t for t in threads if t["name"].startswith("worker-")]
        assert len(workers) == 3
        for t in workers:
            stack = region_at(doc, t["stack"][0])
            assert f"stack of {t['name']}" in stack["names"] and t["id"] in stack["threads"]
        assert any("heap" in r["kinds"] for r in doc["regions"])
    finally:
        undebug("kill", "ukmaps")


def test_maps_and_heap_in_the_shell_and_the_python_api(shared_guest: str) -> None:
    import subprocess
    import sys

    import undebug as api
    from undebug.api import GuestText

    cli = maps_of(shared_guest)
    shell = subprocess.run([sys.executable, "-m", "undebug.cli", "shell", shared_guest],
                           input="maps --json\nheap --json\n", capture_output=True, text=True,
                           timeout=120)
    assert shell.returncode == 0, shell.stderr
    maps_line, heap_line = shell.stdout.splitlines()
    assert json.loads(maps_line)["regions"] == cli["regions"]  # the layout is fixed at boot
    assert json.loads(heap_line)["heaps"][0]["allocator"].startswith("refguest first-fit")
    with api.attach(shared_guest) as session:
        memmap = session.memory_map()
        [heap] = session.heaps()
    names = [n for r in memmap.regions for n in r.names]
    evil = next(n for n in names if n.startswith("stack of evil"))
    assert isinstance(evil, GuestText)
    assert str(evil) == "stack of evil\\x1b]0;owned\\x07" and evil.raw == "stack of " + EVIL
    assert [(r.start, r.end, r.permissions) for r in memmap.regions] == \
        [(r["start"], r["end"], r["permissions"]) for r in cli["regions"]]
    assert heap.total == json.loads(heap_line)["heaps"][0]["total"]


def test_maps_and_heap_on_an_os_undebug_does_not_know(shared_guest: str, guest_image: Path,
                                                      tmp_path: Path) -> None:
    """The generic part: the same guest seen through its ELF stripped of symbols (so no OS
    provider, the vCPUs as threads) still gets its page tables and ELF sections."""
    import subprocess

    stripped = tmp_path / "stripped.elf"
    subprocess.run(["strip", "-o", str(stripped), str(guest_image)], check=True)
    doc = maps_of(shared_guest, "--elf", str(stripped))
    assert any("no guest threads" in w for w in doc["warnings"]), doc["warnings"]
    text = ElfFile(guest_image).section(".text")
    assert text is not None
    region = region_at(doc, text.address)
    assert (region["names"], region["permissions"]) == ([".text"], "r-x")
    assert region_at(doc, 0)["names"] == ["null page"]
    assert not any(n.startswith(("stack of", "guard page of", "heap")) for r in doc["regions"]
                   for n in r["names"])
    heap = undebug("heap", shared_guest, "--elf", str(stripped), "--json")
    assert heap.code == 0 and heap.json()["heaps"] == []
    assert any("knows no allocator" in w for w in heap.json()["warnings"])
