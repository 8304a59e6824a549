"""A guest's heap as its allocator sees it: the allocator's own counters and, where its
structures allow a walk, its blocks counted by size.

Each OS provider fills a :class:`HeapReport` (:meth:`~undebug.os.provider.ThreadProvider.heap`)
from its allocator's structures by DWARF name: the reference guest's ``heap_stats`` and
first-fit free list, Unikraft's binary-buddy page allocator. A number the allocator does
not keep is None, never a guess; walks are bounded and cycle-safe, and what disagrees
(a free list that does not sum to the counters) is a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_BLOCKS", "HeapReport", "size_class"]

MAX_BLOCKS = 200_000  # blocks walked per list or arena: more is a corrupt (or huge) heap


def size_class(size: int) -> int:
    """The power of two a block of ``size`` bytes is counted under (its lower bound)."""
    return 1 << (size.bit_length() - 1) if size > 0 else 0


@dataclass
class HeapReport:
    """One allocator's state. ``free_sizes`` and ``used_sizes`` count blocks by
    :func:`size_class`; empty when no walk was possible."""

    allocator: str  # what it is, in the OS's words
    address: int | None = None  # of its state (struct, list head)
    total: int | None = None  # bytes it manages
    used: int | None = None
    free: int | None = None
    largest_free: int | None = None
    peak: int | None = None
    allocations: int | None = None  # calls that succeeded, since boot
    frees: int | None = None
    failed: int | None = None
    free_blocks: int | None = None
    used_blocks: int | None = None
    free_sizes: dict[int, int] = field(default_factory=dict)
    used_sizes: dict[int, int] = field(default_factory=dict)
    walked: list[str] = field(default_factory=list)  # which walks were made, complete
    warnings: list[str] = field(default_factory=list)

    def count_free(self, size: int) -> None:
        self.free_sizes[size_class(size)] = self.free_sizes.get(size_class(size), 0) + 1

    def count_used(self, size: int) -> None:
        self.used_sizes[size_class(size)] = self.used_sizes.get(size_class(size), 0) + 1

    def to_json(self) -> dict[str, Any]:
        """The ``heap --json`` allocator object (docs/cli.md)."""
        return {"allocator": self.allocator, "address": self.address, "total": self.total,
                "used": self.used, "free": self.free, "largest_free": self.largest_free,
                "peak": self.peak, "allocations": self.allocations, "frees": self.frees,
                "failed": self.failed, "free_blocks": self.free_blocks,
                "used_blocks": self.used_blocks,
                "free_sizes": [[k, v] for k, v in sorted(self.free_sizes.items())],
                "used_sizes": [[k, v] for k, v in sorted(self.used_sizes.items())],
                "walked": self.walked}
