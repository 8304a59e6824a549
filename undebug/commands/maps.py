"""``undebug maps``: the guest's memory map, as ``/proc/PID/maps`` is a process's.

The model is :mod:`undebug.os.memmap` (page tables of vCPU 0, named by the ELF, the OS
provider and QEMU's device map); this module only turns it into the JSON document and
the table a person reads. Guest text (thread names in region names) is escaped.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from undebug.commands import command
from undebug.commands.inspect import _target_arguments, _with_target
from undebug.errors import EXIT_CHECK_FAILED
from undebug.output import Report
from undebug.text import escape

if TYPE_CHECKING:  # the real imports are lazy, for start-up time
    from undebug.os.memmap import MemoryMap, Region
    from undebug.target import Target

__all__ = ["human_size", "maps_json"]


def human_size(size: int) -> str:
    """4K, 2M, 1G, 1.5G, or bytes below 1 KiB."""
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if size >= 1 << shift:
            value = size / (1 << shift)
            return f"{value:.0f}{unit}" if value == int(value) or value >= 100 \
                else f"{value:.1f}{unit}"
    return f"{size}B"


def _region_json(r: Region) -> dict[str, Any]:
    return {"start": r.start, "end": r.end, "size": r.end - r.start, "mapped": r.mapped,
            "permissions": r.permissions, "writable": r.writable, "executable": r.executable,
            "user": r.user, "physical": r.physical, "page_sizes": list(r.page_sizes),
            "names": list(r.names), "kinds": list(r.kinds), "threads": list(r.threads),
            "flags": list(r.flags)}


def maps_json(memmap: MemoryMap) -> dict[str, Any]:
    """The ``maps --json`` document's data (docs/cli.md), shared with dumps and the TUI."""
    return {"cr3": memmap.cr3, "five_level": memmap.five_level,
            "write_protect": memmap.write_protect, "mapped_bytes": memmap.mapped_bytes,
            "tables_read": memmap.tables_read, "complete": memmap.complete,
            "problems": memmap.problems, "flagged": memmap.flagged(),
            "regions": [_region_json(r) for r in memmap.regions],
            "devices": [d.to_json() for d in memmap.devices]}


def _row(r: Region) -> tuple[str, ...]:
    from undebug.os.memmap import FLAGS

    user = "u" if r.user else ("s" if r.mapped else "-")
    return (f"{r.start:#018x}-{r.end:#018x}", r.permissions + user, human_size(r.end - r.start),
            ",".join(human_size(p) for p in r.page_sizes) or "-",
            "-" if r.physical is None else f"{r.physical:#x}",
            escape(" / ".join(r.names)) or "-", "; ".join(FLAGS[f] for f in r.flags))


def maps_lines(memmap: MemoryMap) -> list[str]:
    """The table a person reads, then one line per kind of problem flagged."""
    from undebug.os.memmap import FLAGS

    table: list[tuple[str, ...]] = [("RANGE", "PERM", "SIZE", "PAGES", "PHYSICAL", "WHAT", "FLAGS")]
    table += [_row(r) for r in memmap.regions]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in table]
    lines.append(f"{human_size(memmap.mapped_bytes)} mapped in {memmap.tables_read} page "
                 f"tables (cr3 {memmap.cr3:#x}, {5 if memmap.five_level else 4}-level)")
    lines += [f"flagged: {FLAGS[flag]} ({count} region{'s' * (count != 1)})"
              for flag, count in memmap.flagged().items()]
    return lines


def _maps_arguments(p: argparse.ArgumentParser) -> None:
    _target_arguments(p)
    p.add_argument("--check", action="store_true",
                   help="exit 1 when anything is flagged (writable+executable, a mapped "
                   "guard page, a stack without a guard, ...)")


def maps_body(target: Target, args: argparse.Namespace) -> Report:
    from undebug.os import provider_for
    from undebug.os.memmap import memory_map

    with target.moment():
        memmap = memory_map(target, provider_for(target))
    warnings = list(memmap.warnings)
    warnings += [f"page tables: {p}" for p in memmap.problems]
    if not memmap.write_protect and memmap.mapped_bytes:
        warnings.append("CR0.WP is clear on vCPU 0: the kernel writes through read-only "
                        "pages")
    failed = args.check and bool(memmap.flagged())
    return Report(data=maps_json(memmap), warnings=warnings, render=lambda: maps_lines(memmap),
                  exit_code=EXIT_CHECK_FAILED if failed else 0)


command("maps", "the guest's memory map: regions, permissions, what each one is",
        _maps_arguments,
        description="The guest's memory map from vCPU 0's page tables, like /proc/PID/maps: "
        "each region's virtual range, permissions (r/w/x, u=user or s=supervisor), page "
        "sizes and physical start, named by the ELF's sections, the threads' stacks, the OS's "
        "heap and guard pages and QEMU's devices. Flags what looks wrong: writable and "
        "executable pages, a mapped guard or null page, a stack without a guard page below "
        "it, a named area that is not mapped. Works on any x86-64 guest."
        )(_with_target(maps_body))
