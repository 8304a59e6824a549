"""A guest's memory map: its page tables' mappings, named and checked.

The mappings come from the CPU's own tables (:func:`undebug.arch.x86_64.walk_mappings`,
CR3 of vCPU 0), so this works on any x86-64 guest. Meaning is laid over them from what
each source knows: the ELF (its loaded sections), the OS provider (each thread's stack;
:meth:`~undebug.os.provider.ThreadProvider.memory_areas`: heap, guard pages, per-CPU
stacks) and the machine (QEMU's device MMIO and ROM, through the physical addresses the
tables map). The result is a list of :class:`Region`: a run of pages with one set of
permissions, one meaning and contiguous physical memory; unmapped space appears only
where something named lives (a guard page, the null page, a section that should be
there). Less than a page after a named area that nothing else names (padding between
ELF sections) counts as that area's. What looks wrong is flagged on the region.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field
from typing import Any

from undebug.arch.x86_64 import CR4_LA57, PAGE_SIZE, Mapping, walk_mappings
from undebug.os.provider import PROGRAM_KIND, MemoryArea, ThreadProvider
from undebug.session.machine_map import DeviceRange
from undebug.target import Target

__all__ = ["FLAGS", "MemoryMap", "Region", "memory_map"]

CR0_PG = 1 << 31
CR0_WP = 1 << 16
MAX_AREAS = 200_000

WX, GUARD_MAPPED, NO_GUARD, NULL_MAPPED = "wx", "guard-mapped", "no-guard", "null-mapped"
UNMAPPED, RO_WRITABLE, NO_BACKING = "unmapped", "ro-writable", "no-backing"
FLAGS = {  # a region's flags (JSON) and what they say (text)
    WX: "writable and executable",
    GUARD_MAPPED: "guard page is mapped",
    NO_GUARD: "no guard page below this stack",
    NULL_MAPPED: "null page is mapped",
    UNMAPPED: "not mapped",
    RO_WRITABLE: "writable, read-only in the ELF",
    NO_BACKING: "maps no RAM or device",
}
_EXPECT_UNMAPPED = frozenset({"guard", "null", PROGRAM_KIND})  # a program: paged on demand
_READ_ONLY_KINDS = frozenset({"text", "rodata"})


@dataclass(frozen=True)
class Region:
    """Guest-virtual ``[start, end)``: mapped with one set of permissions onto physical
    memory from ``physical`` on (contiguous), or unmapped (``physical`` None); ``names``
    are what covers it, outermost first (``kinds`` and ``threads`` alike)."""

    start: int
    end: int
    physical: int | None
    writable: bool
    executable: bool
    user: bool
    page_sizes: tuple[int, ...]
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    threads: tuple[int, ...]
    flags: tuple[str, ...]

    @property
    def mapped(self) -> bool:
        return self.physical is not None

    @property
    def permissions(self) -> str:
        """``rwx`` as in /proc/PID/maps, ``---`` when unmapped."""
        if not self.mapped:
            return "---"
        return "r" + ("w" if self.writable else "-") + ("x" if self.executable else "-")

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "size": self.end - self.start,
                "mapped": self.mapped, "permissions": self.permissions,
                "writable": self.writable, "executable": self.executable, "user": self.user,
                "physical": self.physical, "page_sizes": list(self.page_sizes),
                "names": list(self.names), "kinds": list(self.kinds),
                "threads": list(self.threads), "flags": list(self.flags)}


@dataclass
class MemoryMap:
    regions: list[Region]
    cr3: int
    five_level: bool
    write_protect: bool  # CR0.WP: without it ring 0 writes through read-only pages
    mapped_bytes: int
    tables_read: int
    complete: bool
    devices: list[DeviceRange]
    problems: list[str]  # what was wrong with the page tables themselves
    warnings: list[str] = field(default_factory=list)

    def flagged(self) -> dict[str, int]:
        """How many regions carry each flag."""
        counts = dict.fromkeys(FLAGS, 0)
        for region in self.regions:
            for flag in region.flags:
                counts[flag] += 1
        return {k: v for k, v in counts.items() if v}

    def to_json(self) -> dict[str, Any]:
        """The ``maps --json`` document's data (docs/cli.md), as dumps and the TUI use it."""
        return {"cr3": self.cr3, "five_level": self.five_level,
                "write_protect": self.write_protect, "mapped_bytes": self.mapped_bytes,
                "tables_read": self.tables_read, "complete": self.complete,
                "problems": self.problems, "flagged": self.flagged(),
                "regions": [r.to_json() for r in self.regions],
                "devices": [d.to_json() for d in self.devices]}


def _areas(target: Target, provider: ThreadProvider, warnings: list[str]) -> list[MemoryArea]:
    """Everything named: the null page, the ELF's sections, thread stacks, the OS's own."""
    areas = [MemoryArea(0, PAGE_SIZE, "null", "null page")]
    for section in target.elf.loaded_sections:
        start = section.address + target.load_offset
        areas.append(MemoryArea(start, start + section.size, section.kind, section.name))
    snapshot = provider.threads()
    warnings.extend(snapshot.warnings)
    for thread in snapshot.threads:
        if thread.stack is not None:
            low, high = thread.stack
            areas.append(MemoryArea(low, high, "stack", f"stack of {thread.name}", thread.id))
    areas.extend(provider.memory_areas())
    if len(areas) > MAX_AREAS:
        warnings.append(f"{len(areas)} named areas: naming only the first {MAX_AREAS}")
        del areas[MAX_AREAS:]
    return [a for a in areas if 0 <= a.start < a.end <= 1 << 64]


def _device_areas(mappings: list[Mapping], devices: list[DeviceRange]) -> list[MemoryArea]:
    """Device and ROM ranges, at every virtual address the tables map them."""
    by_physical = sorted(mappings, key=lambda m: m.physical)
    starts = [m.physical for m in by_physical]
    longest = max((m.size for m in mappings), default=0)
    out = []
    for device in devices:
        if device.kind == "ram":
            continue
        first = bisect.bisect_left(starts, device.start - longest)
        last = bisect.bisect_left(starts, device.end)
        for m in by_physical[first:last]:
            low, high = max(m.physical, device.start), min(m.physical + m.size, device.end)
            if low < high:
                virtual = m.virtual + low - m.physical
                name = device.name if device.kind == "mmio" else f"{device.name} (ROM)"
                out.append(MemoryArea(virtual, virtual + high - low, device.kind, name))
    return out


class _Backing:
    """Whether a physical range is all RAM, ROM or a device, per QEMU's map."""

    def __init__(self, devices: list[DeviceRange]) -> None:
        merged: list[list[int]] = []
        for d in sorted(devices, key=lambda d: d.start):
            if merged and d.start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], d.end)
            else:
                merged.append([d.start, d.end])
        self.starts = [m[0] for m in merged]
        self.ranges = merged

    def covers(self, start: int, end: int) -> bool:
        at = bisect.bisect_right(self.starts, start) - 1
        return at >= 0 and self.ranges[at][1] >= end


@dataclass
class _Run:
    """A region being built by the sweep."""

    start: int
    end: int
    mapping: Mapping | None
    physical: int | None
    page_sizes: set[int]
    areas: tuple[MemoryArea, ...]

    def extends(self, low: int, m: Mapping | None, physical: int | None,
                areas: tuple[MemoryArea, ...]) -> bool:
        """Whether ``[low, ...)`` mapped by ``m`` at ``physical`` continues this run."""
        if self.end != low or self.areas != areas:
            return False
        if m is None or self.mapping is None or self.physical is None:
            return m is None and self.mapping is None
        return (self.mapping.writable, self.mapping.executable, self.mapping.user) == \
            (m.writable, m.executable, m.user) and self.physical + low - self.start == physical


def _runs(mappings: list[Mapping], areas: list[MemoryArea]) -> list[_Run]:
    """Sweep every edge of mappings and areas; merge runs with one meaning and mapping."""
    edges = sorted({e for m in mappings for e in (m.virtual, m.end)} |
                   {e for a in areas for e in (a.start, a.end)})
    by_start = sorted(areas, key=lambda a: (a.start, -a.end))
    active: list[MemoryArea] = []
    runs: list[_Run] = []
    mi = ai = 0
    for low, high in itertools.pairwise(edges):
        while mi < len(mappings) and mappings[mi].end <= low:
            mi += 1
        m = mappings[mi] if mi < len(mappings) and mappings[mi].virtual <= low else None
        if active:
            active = [a for a in active if a.end > low]
        while ai < len(by_start) and by_start[ai].start <= low:
            if by_start[ai].end > low:
                active.append(by_start[ai])
            ai += 1
        if m is None and not active:
            continue
        physical = None if m is None else m.physical + low - m.virtual
        covering = tuple(active)
        # padding: less than a page after a named area, inside what encloses that area
        padding = bool(runs) and high - low < PAGE_SIZE and \
            len(runs[-1].areas) > len(covering) and runs[-1].areas[:len(covering)] == covering
        if runs and runs[-1].extends(low, m, physical, runs[-1].areas if padding else covering):
            runs[-1].end = high
            if m is not None:
                runs[-1].page_sizes.add(m.page_size)
            continue
        runs.append(_Run(low, high, m, physical, set() if m is None else {m.page_size},
                         covering))
    return runs


def _mapped_at(mappings: list[Mapping], starts: list[int], address: int) -> bool:
    at = bisect.bisect_right(starts, address) - 1
    return at >= 0 and mappings[at].end > address


def _region(run: _Run, unguarded: set[int], backing: _Backing | None) -> Region:
    m, kinds = run.mapping, tuple(a.kind for a in run.areas)
    flags = []
    if m is not None and run.physical is not None:
        if m.writable and m.executable:
            flags.append(WX)
        if m.writable and _READ_ONLY_KINDS & set(kinds):
            flags.append(RO_WRITABLE)
        if "guard" in kinds:
            flags.append(GUARD_MAPPED)
        if "null" in kinds:
            flags.append(NULL_MAPPED)
        if backing is not None and not backing.covers(run.physical,
                                                      run.physical + run.end - run.start):
            flags.append(NO_BACKING)
    elif not _EXPECT_UNMAPPED & set(kinds):
        flags.append(UNMAPPED)
    if run.start in unguarded and any(a.kind == "stack" and a.start == run.start
                                      for a in run.areas):
        flags.append(NO_GUARD)
    return Region(run.start, run.end, run.physical, bool(m and m.writable),
                  bool(m and m.executable), bool(m and m.user), tuple(sorted(run.page_sizes)),
                  tuple(a.name for a in run.areas), kinds,
                  tuple(a.thread for a in run.areas if a.thread is not None), tuple(flags))


def memory_map(target: Target, provider: ThreadProvider) -> MemoryMap:
    """The memory map of ``target`` now, as vCPU 0's page tables have it."""
    warnings: list[str] = []
    registers = target.registers(0)
    cr0, cr3 = registers.get("cr0", CR0_PG), registers.get("cr3", 0)
    five_level = bool(registers.get("cr4", 0) & CR4_LA57)
    if "cr3" not in registers:
        warnings.append("the gdbstub gives no cr3: no page tables to walk")
    if not cr0 & CR0_PG:
        warnings.append("paging is off on vCPU 0 (early boot?): no mappings yet")
    walk = walk_mappings(target.read_physical, cr3, five_level) \
        if "cr3" in registers and cr0 & CR0_PG else None
    mappings = walk.mappings if walk is not None else []
    devices = target.machine_map()
    areas = _areas(target, provider, warnings) + _device_areas(mappings, devices)
    backing = _Backing(devices) if devices else None
    starts = [m.virtual for m in mappings]
    unguarded = {a.start for a in areas if a.kind == "stack" and a.start >= PAGE_SIZE
                 and _mapped_at(mappings, starts, a.start - PAGE_SIZE)}
    regions = [_region(run, unguarded, backing) for run in _runs(mappings, areas)]
    return MemoryMap(regions, cr3, five_level, bool(cr0 & CR0_WP),
                     sum(m.size for m in mappings), walk.tables_read if walk else 0,
                     walk.complete if walk else False, devices,
                     walk.problems if walk else [], warnings)
