"""``undebug heap`` on the real reference guest and Unikraft image in real QEMU.

The reference guest's numbers are checked against gdb's view of ``heap_stats`` at the same
stop (``undebug eval``), and its free list against a walk this test makes itself through
the DWARF layout of ``struct hblk``; the planted fragmentation (the guest's README: 8 free
32-byte blocks at the start of the arena, every other one of 16) must be there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import boot, real_image, undebug, wait_for_console
from tests.test_schema import check
from undebug.elf import ElfFile
from undebug.live_target import LiveTarget
from undebug.session.store import SessionDir

HEAP_FIELDS = {"total": "total_bytes", "used": "used_bytes", "peak": "peak_bytes",
               "allocations": "alloc_count", "frees": "free_count", "failed": "failed_count"}


def heaps_of(name: str) -> dict[str, Any]:
    result = undebug("heap", name, "--json")
    assert result.code == 0, result.stderr
    doc: dict[str, Any] = result.json()
    check("heap", doc)  # docs/schema/undebug-1.json
    return doc


def gdb_heap_stats(name: str) -> dict[str, int]:
    result = undebug("eval", name, "heap_stats", "--json")
    assert result.code == 0, result.stderr
    return {k: int(v) for k, v in re.findall(r"(\w+) = (\d+)", result.json()["value"])}


def free_list_by_hand(name: str, elf: ElfFile) -> list[tuple[int, int]]:
    """(address, size) of each free block, walked here from ``free_list`` (at most 1000)."""
    layout = elf.struct("hblk")
    assert layout is not None
    size_at, next_at = layout.member("size").offset, layout.member("next").offset
    blocks: list[tuple[int, int]] = []
    with LiveTarget(SessionDir.named(name)) as target:
        block = target.read_int(elf.symbol("free_list").address)  # type: ignore[union-attr]
        while block and len(blocks) < 1000:
            blocks.append((block, target.read_int(block + size_at)))
            block = target.read_int(block + next_at)
    return blocks


def test_heap_matches_heap_stats_and_its_free_list(guest_image: Path) -> None:
    name = boot("heap-g", "threads=4", guest_image)
    elf = ElfFile(guest_image)
    try:
        for _ in range(5):  # a vCPU stopped inside kmalloc holds heap_lock: stop again
            assert undebug("stop", name).code == 0
            doc = heaps_of(name)
            if not any("heap_lock" in w for w in doc["warnings"]):
                break
            assert undebug("cont", name).code == 0
        assert doc["warnings"] == []
        [heap] = doc["heaps"]
        stats = gdb_heap_stats(name)
        for ours, theirs in HEAP_FIELDS.items():
            assert heap[ours] == stats[theirs], (ours, heap, stats)
        assert heap["free"] == stats["total_bytes"] - stats["used_bytes"]
        blocks = free_list_by_hand(name, elf)
        assert sum(size for _, size in blocks) == heap["free"]
        assert len(blocks) == heap["free_blocks"]
        assert max(size for _, size in blocks) == heap["largest_free"]
        assert heap["walked"] == ["free list", "arena"]
        with LiveTarget(SessionDir.named(name)) as target:
            base = target.read_int(elf.symbol("heap_base").address)  # type: ignore[union-attr]
        assert blocks[:8] == [(base + 64 * i, 32) for i in range(8)]  # the planted holes
        assert dict(map(tuple, heap["free_sizes"]))[32] == 8
        assert dict(map(tuple, heap["used_sizes"]))[32] >= 8  # the 8 kept between them
    finally:
        undebug("kill", name)


def test_heap_text_output(shared_guest: str) -> None:
    result = undebug("heap", shared_guest)
    assert result.code == 0, result.stderr
    assert result.stdout.startswith("refguest first-fit heap (mm.c kmalloc) at 0x")
    assert re.search(r"^  32B\+ +8 +\d+$", result.stdout, re.M), result.stdout


def test_unikraft_heap_is_the_buddy_allocator() -> None:
    value = str(real_image("UNDEBUG_UNIKRAFT_IMAGE"))
    assert undebug("run", "-d", "--name", "ukheap", value).code == 0
    try:
        wait_for_console("ukheap", "worker-2")
        assert undebug("stop", "ukheap").code == 0
        doc = heaps_of("ukheap")
        buddy = doc["heaps"][0]
        assert buddy["allocator"] == "ukalloc binary buddy (ukallocbbuddy)"
        free = undebug("eval", "ukheap",
                       "((struct uk_bbpalloc *)&_uk_alloc_head->priv)->nr_free_pages", "--json")
        assert free.code == 0, free.stderr
        assert buddy["free"] == int(free.json()["value"]) * 4096
        assert buddy["used"] + buddy["free"] == buddy["total"] > 0
        assert buddy["walked"] == ["free lists"] and buddy["allocations"] is None
        assert sum(size * count for size, count in buddy["free_sizes"]) == buddy["free"]
        assert any("CONFIG_LIBUKALLOC_IFSTATS" in w for w in doc["warnings"])
    finally:
        undebug("kill", "ukheap")


def test_a_cyclic_free_list_is_reported_and_bounded(guest_image: Path) -> None:
    """The guest's free list made cyclic (its last block pointed back at its first, in
    the guest's memory, the guest stopped): the walk stops at the loop and says so."""
    name = boot("heap-cyclic", "threads=2", guest_image)
    elf = ElfFile(guest_image)
    layout = elf.struct("hblk")
    assert layout is not None
    try:
        assert undebug("stop", name).code == 0
        blocks = free_list_by_hand(name, elf)
        target = LiveTarget(SessionDir.named(name))
        with target:
            last = blocks[-1][0] + layout.member("next").offset
            target.client.write_memory(last, blocks[0][0].to_bytes(8, "little"))
        doc = heaps_of(name)
        [heap] = doc["heaps"]
        assert f"heap free list loops back to {blocks[0][0]:#x} after {len(blocks)} entries" \
            in " ".join(doc["warnings"])
        assert heap["free_blocks"] == len(blocks) and "free list" not in heap["walked"]
        assert heap["walked"] == ["arena"]  # the arena walk does not follow the list
    finally:
        undebug("kill", name)


def test_unikraft_allocator_statistics_when_the_image_has_them() -> None:
    """UNDEBUG_UNIKRAFT_ALLOCSTATS_IMAGE: the workers app built with
    CONFIG_LIBUKALLOC_IFSTATS=y added to its defconfig (outside the repository). Its
    counts are ukalloc's own, compared with gdb's at the same stop."""
    value = os.environ.get("UNDEBUG_UNIKRAFT_ALLOCSTATS_IMAGE")
    if not value:
        pytest.skip("UNDEBUG_UNIKRAFT_ALLOCSTATS_IMAGE is not set (a Unikraft image built "
                    "outside the repository, with CONFIG_LIBUKALLOC_IFSTATS=y)")
    assert undebug("run", "-d", "--name", "ukstats", value).code == 0
    try:
        wait_for_console("ukstats", "worker-2")
        assert undebug("stop", "ukstats").code == 0
        doc = heaps_of("ukstats")
        buddy = doc["heaps"][0]
        stats = undebug("eval", "ukstats", "_uk_alloc_head->_stats", "--json")
        assert stats.code == 0, stats.stderr
        counts = {k: int(v) for k, v in re.findall(r"(\w+) = (\d+)", stats.json()["value"])}
        assert (buddy["allocations"], buddy["frees"], buddy["failed"]) == \
            (counts["tot_nb_allocs"], counts["tot_nb_frees"], counts["nb_enomem"])
        assert buddy["allocations"] > 0
        assert buddy["used"] + buddy["free"] == buddy["total"]  # pages, not malloc's bytes
        assert not any("IFSTATS" in w for w in doc["warnings"])
    finally:
        undebug("kill", "ukstats")
