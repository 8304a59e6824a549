"""Nanos' kernel heaps (src/runtime/kernel_heaps.h), read through DWARF member names.

Checked against nanovms/nanos master (b9c3671d): the kernel's ``static struct
kernel_heaps heaps`` (src/kernel/init.c) holds a pointer per heap (``physical``,
``virtual_huge``, ``general``, ...), each starting with a ``struct heap`` of function
pointers. Nanos asks a heap its figures through ``allocated``/``total``, so the function
that pointer holds tells the heap's kind, and the kind the struct whose members keep them:
``pageheap_allocated`` -> ``struct page_heap`` (physical pages), ``id_allocated`` ->
``struct id_heap`` (address space), ``mcache_allocated`` -> ``struct mcache``
(``allocated`` only: its total is a sum over its caches). Any other kind (a locking or
reserve wrapper) is named with no figures: None, never a guess.
"""

from __future__ import annotations

from undebug.os.heap import HeapReport
from undebug.os.provider import ThreadProvider, read_struct
from undebug.target import ReadError

__all__ = ["nanos_heaps"]

# the function in struct heap's ``allocated`` -> (the struct that keeps the figures, kind)
KINDS = {"pageheap_allocated": ("page_heap", "page heap"),
         "id_allocated": ("id_heap", "id heap"),
         "mcache_allocated": ("mcache", "mcache")}


def nanos_heaps(provider: ThreadProvider) -> list[HeapReport]:
    """One report per pointer member of ``heaps`` (``struct kernel_heaps``)."""
    target = provider.target
    at, layout = target.address_of("heaps"), target.elf.struct("kernel_heaps")
    heap = target.elf.struct("heap")
    if at is None or layout is None or heap is None or not heap.has_member("allocated"):
        return []
    try:
        heaps = read_struct(target, layout, at)
    except ReadError as exc:
        return [HeapReport("Nanos kernel heaps", address=at,
                           warnings=[f"heaps unreadable: {exc.message}"])]
    reports = []
    for path, member in layout.members.items():
        pointer = heaps.int(path) if "." not in path and member.size == 8 else 0
        if pointer:
            reports.append(_heap(provider, path, pointer))
    if not reports:
        reports.append(HeapReport("Nanos kernel heaps", address=at, warnings=[
            "heaps has no heap yet: the kernel has not initialised them"]))
    return reports


def _heap(provider: ThreadProvider, name: str, address: int) -> HeapReport:
    target = provider.target
    report = HeapReport(f"heaps->{name}", address=address)
    try:
        function = target.symbolize(read_struct(target, provider.need_struct("heap"),
                                                address).int("allocated")) or ""
    except ReadError as exc:
        report.warnings.append(f"heaps->{name} at {address:#x} unreadable: {exc.message}")
        return report
    struct, kind = KINDS.get(function, (None, None))
    if struct is None:
        report.allocator += f" ({function or 'keeps no figures'})"
        return report
    report.allocator += f" ({kind})"
    layout = target.elf.struct(struct)
    if layout is None:
        report.warnings.append(f"no DWARF layout of struct {struct}: no figures")
        return report
    try:
        value = read_struct(target, layout, address)
    except ReadError as exc:
        report.warnings.append(f"struct {struct} at {address:#x} unreadable: {exc.message}")
        return report
    if layout.has_member("allocated"):
        report.used = value.int("allocated")
    if layout.has_member("total"):
        report.total = value.int("total")
        if report.used is not None and report.used <= report.total:
            report.free = report.total - report.used
        elif report.used is not None:
            report.warnings.append(f"allocated {report.used} exceeds total {report.total}")
    return report
