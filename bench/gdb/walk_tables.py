"""Baseline for bench/maps.py: the page-table walk of ``undebug maps`` done with gdb ``x``.

Not a benchmark by itself: it runs in gdb's embedded Python (bench/gdb/ is out of the
modules ``make bench`` runs). Run inside gdb against a paused guest on QEMU's gdbstub::

    gdb -batch -nx -ex 'target remote /path/gdb.sock' -x bench/gdb/walk_tables.py build/refguest.elf

What a gdb user would do: read CR3 (``$cr3``), switch QEMU's stub to physical memory
(``maintenance packet Qqemu.PhyMemMode:1``), then ``x/512gx TABLE`` for each table of
the 4-level walk, recursing into every present entry that is not a leaf, merging
contiguous leaves with equal permissions and page size, as undebug's ``walk_mappings``
does. Prints one line ``PTWALK {json}``: tables read, mappings, mapped bytes and the walk's
time; then detaches (which resumes the guest).
"""

import json
import time

import gdb  # only inside gdb

ADDR = 0x000F_FFFF_FFFF_F000


def table(address):
    out = gdb.execute(f"x/512gx {address:#x}", to_string=True)
    return [int(word, 16) for line in out.splitlines() for word in line.split(":")[1].split()]


def main():
    cr3 = int(gdb.parse_and_eval("$cr3")) & ADDR
    gdb.execute("maintenance packet Qqemu.PhyMemMode:1", to_string=True)
    started = time.perf_counter()
    tables, mappings = 0, []

    def walk(at, level, base, w, u, x):
        nonlocal tables
        tables += 1
        shift = 12 + 9 * (level - 1)
        for index, entry in enumerate(table(at)):
            if not entry & 1:
                continue
            virtual = base + (index << shift)
            if virtual & (1 << 47):
                virtual |= 0xFFFF_0000_0000_0000
            ew, eu, ex = w and bool(entry & 2), u and bool(entry & 4), x and not entry >> 63
            if level == 1 or (level in (2, 3) and entry & 0x80):
                size = 1 << shift
                physical = entry & ADDR & ~(size - 1)
                last = mappings[-1] if mappings else None
                if last and last[0] + last[2] == virtual and last[1] + last[2] == physical \
                        and last[3:] == [size, ew, eu, ex]:
                    last[2] += size
                else:
                    mappings.append([virtual, physical, size, size, ew, eu, ex])
            elif level > 1:
                walk(entry & ADDR, level - 1, virtual, ew, eu, ex)

    walk(cr3, 4, 0, True, True, True)
    elapsed = time.perf_counter() - started
    gdb.execute("maintenance packet Qqemu.PhyMemMode:0", to_string=True)
    print("PTWALK " + json.dumps({"tables": tables, "mappings": len(mappings),
                                  "mapped_bytes": sum(m[2] for m in mappings),
                                  "walk_s": elapsed}))
    gdb.execute("detach", to_string=True)


main()
