"""``undebug maps``: the guest's memory map, as ``/proc/PID/maps`` is a process's.

The model is :mod:`undebug.os.memmap` (page tables of vCPU 0, named by the ELF, the OS
provider and QEMU's device map); this module only turns it into the JSON document and
the table a person reads. Guest text (thread names in region names) is escaped.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from undebug.commands import command
from undebug.commands.inspect import _target_arguments, _with_target
from undebug.errors import EXIT_CHECK_FAILED
from undebug.output import Report
from undebug.text import escape, human_size

if TYPE_CHECKING:  # the real imports are lazy, for start-up time
    from undebug.os.memmap import MemoryMap, Region
    from undebug.target import Target

__all__ = ["human_size"]


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
    return Report(data=memmap.to_json(), warnings=warnings, render=lambda: maps_lines(memmap),
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
