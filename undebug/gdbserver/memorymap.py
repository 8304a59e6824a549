"""``qXfer:memory-map:read``: the guest's mapped virtual memory, from its page tables, as
the RAM regions gdb may touch. With it gdb refuses a read outside them itself ("Cannot
access memory at address 0x0") instead of asking, so a wild pointer in ``print *p`` or a
frame walk costs nothing; a read inside that still fails gets an error reply.

The walk is vCPU 0's (a unikernel has one address space): :func:`undebug.arch.x86_64.
walk_mappings`, bounded however hostile the tables are. Adjacent mappings are joined, so
the document lists runs of mapped memory, whatever their permissions.
"""

from __future__ import annotations

from undebug.arch.x86_64 import CR4_LA57, walk_mappings
from undebug.errors import UndebugError
from undebug.target import Target

__all__ = ["memory_map_xml"]

CR0_PG = 1 << 31


def memory_map_xml(target: Target) -> bytes | None:
    """The memory-map document, or None when there is no paging to read (paging off,
    no cr3 from the stub, unreadable tables: gdb then reads anywhere, as without a map)."""
    try:
        registers = target.registers(0)
    except UndebugError:
        return None
    if "cr3" not in registers or not registers.get("cr0", CR0_PG) & CR0_PG:
        return None
    walk = walk_mappings(target.read_physical, registers["cr3"],
                         bool(registers.get("cr4", 0) & CR4_LA57))
    if not walk.mappings:
        return None
    runs: list[list[int]] = []
    for m in walk.mappings:  # in virtual order
        if runs and runs[-1][1] == m.virtual:
            runs[-1][1] = m.end
        else:
            runs.append([m.virtual, m.end])
    rows = "".join(f'<memory type="ram" start="{start:#x}" length="{end - start:#x}"/>\n'
                   for start, end in runs)
    return ('<?xml version="1.0"?>\n<!DOCTYPE memory-map PUBLIC "+//IDN gnu.org//DTD GDB '
            'Memory Map V1.0//EN" "http://sourceware.org/gdb/gdb-memory-map.dtd">\n'
            f"<memory-map>\n{rows}</memory-map>\n").encode()
