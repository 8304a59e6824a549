"""Unikraft's allocators (lib/ukalloc, lib/ukallocbbuddy), read through DWARF names.

Checked against RELEASE-0.17.0: ``_uk_alloc_head`` starts the list of ``struct
uk_alloc`` (``next``). Each has ``_stats`` (``struct uk_alloc_stats``: allocation counts,
current and peak use) only when built with CONFIG_LIBUKALLOC_IFSTATS (for the buddy
allocator its counts are shown, its bytes are its pages). The binary-buddy
page allocator (the one ``palloc`` = ``bbuddy_palloc``) keeps its state in the
allocator's ``priv`` tail as ``struct uk_bbpalloc``: ``nr_free_pages``, the memory
regions it manages (``memr_head``: ``first_page``, ``nr_pages``) and ``free_head[order]``,
a list of free chunks of 2^order pages each (``chunk_head_t``: ``next``), ending in the
sentinel ``free_tail[order]``. malloc() sits on top of it, a page-granular view: bytes
used are pages handed out.
"""

from __future__ import annotations

from undebug.os.heap import MAX_BLOCKS, HeapReport
from undebug.os.provider import ThreadProvider, read_struct, walk_list
from undebug.target import ReadError

__all__ = ["unikraft_heaps"]

PAGE = 4096
MAX_ALLOCATORS = 16
MAX_REGIONS = 64
STATS = {"allocations": "tot_nb_allocs", "frees": "tot_nb_frees", "failed": "nb_enomem",
         "used": "cur_mem_use", "peak": "max_mem_use"}
PAGE_LEVEL = ("used", "peak")


def unikraft_heaps(provider: ThreadProvider) -> list[HeapReport]:
    """Each allocator on ``_uk_alloc_head``, with the buddy allocator's pages walked."""
    target = provider.target
    head_at = target.address_of("_uk_alloc_head")
    layout = target.elf.struct("uk_alloc")
    if head_at is None or layout is None:
        return []
    warnings: list[str] = []
    bbuddy = target.address_of("bbuddy_palloc")
    reports = []
    for alloc in walk_list(target, layout, target.read_int(head_at), "next", "allocator list",
                           warnings, limit=MAX_ALLOCATORS):
        is_buddy = bbuddy is not None and layout.has_member("palloc") and \
            alloc.int("palloc") == bbuddy
        malloc = target.elf.symbolize(alloc.int("malloc")) if layout.has_member("malloc") \
            else None
        report = HeapReport("ukalloc binary buddy (ukallocbbuddy)" if is_buddy else
                            f"ukalloc allocator (malloc: {malloc or 'unknown'})",
                            address=alloc.address)
        for name, member in STATS.items():
            # the buddy's bytes used are its pages in use (so used + free = total);
            # cur_mem_use counts only what went through malloc(), on another footing
            if layout.has_member(f"_stats.{member}") and not (is_buddy and name in PAGE_LEVEL):
                setattr(report, name, alloc.int(f"_stats.{member}"))
        if is_buddy and layout.has_member("priv"):
            _buddy(provider, report, alloc.address + layout.member("priv").offset)
        reports.append(report)
    if reports and not layout.has_member("_stats"):
        warnings.append("the image was built without CONFIG_LIBUKALLOC_IFSTATS: no "
                        "allocation counts")
    if reports:
        reports[0].warnings[:0] = warnings
    return reports


def _buddy(provider: ThreadProvider, report: HeapReport, address: int) -> None:
    target = provider.target
    state, chunk = target.elf.struct("uk_bbpalloc"), target.elf.struct("chunk_head_st")
    memr = target.elf.struct("uk_bbpalloc_memr")
    if state is None or chunk is None or memr is None:
        report.warnings.append("no DWARF layout of struct uk_bbpalloc: pages not walked")
        return
    try:
        buddy = read_struct(target, state, address)
    except ReadError as exc:
        report.warnings.append(f"buddy allocator state unreadable: {exc.message}")
        return
    pages = sum(region.int("nr_pages") for region in walk_list(
        target, memr, buddy.int("memr_head"), "next", "buddy memory regions",
        report.warnings, limit=MAX_REGIONS))
    report.total = pages * PAGE
    free_pages = buddy.int("nr_free_pages")
    report.free = free_pages * PAGE
    if free_pages <= pages:
        report.used = (pages - free_pages) * PAGE
    heads = buddy.bytes("free_head")
    tails = address + state.member("free_tail").offset
    seen: set[int] = set()
    walked_pages = blocks = 0
    for order in range(len(heads) // 8):
        tail = tails + order * chunk.size
        first = int.from_bytes(heads[order * 8 : order * 8 + 8], "little")
        for block in walk_list(target, chunk, first, "next", f"buddy free list {order}",
                               report.warnings, limit=MAX_BLOCKS, seen=seen):
            if block.address == tail:
                break
            blocks += 1
            walked_pages += 1 << order
            report.count_free(PAGE << order)
            report.largest_free = max(report.largest_free or 0, PAGE << order)
    report.free_blocks = blocks
    if not any(w.startswith("buddy free list") for w in report.warnings):
        report.walked.append("free lists")
        if walked_pages != free_pages:
            report.warnings.append(f"the buddy free lists hold {walked_pages} pages, "
                                   f"nr_free_pages says {free_pages}")
