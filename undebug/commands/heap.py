"""``undebug heap``: the guest's allocators, as ``free`` and a malloc's statistics are a
process's. The numbers are the OS provider's (:mod:`undebug.os.heap`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from undebug.commands import command
from undebug.commands.inspect import _target_arguments, _with_target
from undebug.commands.maps import human_size
from undebug.output import Report

if TYPE_CHECKING:  # the real imports are lazy, for start-up time
    from undebug.os.heap import HeapReport
    from undebug.target import Target

__all__ = ["heap_lines"]


def heap_lines(report: HeapReport) -> list[str]:
    """One allocator as a person reads it: the numbers it keeps, then blocks by size."""
    at = "" if report.address is None else f" at {report.address:#x}"
    lines = [f"{report.allocator}{at}"]
    lines += [f"  {label:<14}{human_size(value)} ({value})" for label, value in (
        ("total", report.total), ("used", report.used), ("free", report.free),
        ("largest free", report.largest_free), ("peak used", report.peak))
        if value is not None]
    lines += [f"  {label:<14}{count}" for label, count in (
        ("allocations", report.allocations), ("frees", report.frees),
        ("failed", report.failed), ("free blocks", report.free_blocks),
        ("used blocks", report.used_blocks)) if count is not None]
    sizes = sorted(set(report.free_sizes) | set(report.used_sizes))
    if sizes:
        lines.append(f"  {'block size':<14}{'free':>8}{'used':>8}")
        lines += [f"  {human_size(size) + '+':<14}{report.free_sizes.get(size, 0):>8}"
                  f"{report.used_sizes.get(size, 0):>8}" for size in sizes]
    if not report.walked:
        lines.append("  (no walk of its blocks was possible)")
    return lines


def heap_body(target: Target, args: argparse.Namespace) -> Report:
    from undebug.os import provider_for

    provider = provider_for(target)
    with target.moment():
        reports = provider.heaps()
    warnings = [w for r in reports for w in r.warnings]
    if not reports:
        warnings.append(f"undebug knows no allocator of this guest's OS ({provider.name})")
    return Report(data={"heaps": [r.to_json() for r in reports]}, warnings=warnings,
                  render=lambda: [line for r in reports for line in heap_lines(r)])


command("heap", "the guest's heap: its allocator's numbers and blocks by size",
        _target_arguments,
        description="The guest's allocators as the OS provider reads them: bytes total, "
        "used and free, the largest free block, peak use, allocation, free and failure "
        "counts where the allocator keeps them, and free and used blocks counted by size "
        "(powers of two) where its structures allow a walk. The reference guest: "
        "heap_stats, its free list and its arena; Unikraft: the binary-buddy page "
        "allocator (ukalloc's own statistics only when the image has them)."
        )(_with_target(heap_body))
