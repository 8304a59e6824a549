"""``core.elf``: a paused guest as an ELF core that gdb and drgn open with guest threads.

Memory comes in PT_LOAD segments at the guest-**virtual** addresses of the guest's own page
tables (``p_vaddr``; ``p_paddr`` is the physical address), so ``gdb IMAGE core.elf`` reads
variables where the guest sees them. Each guest thread is one ``NT_PRSTATUS`` (a sleeping
one with the context it saved, as the gdbserver serves it: :class:`ThreadView`); the
vCPUs' full machine state is in ``UNDEBUG`` notes, not ``CORE`` ones, so the debugger's
thread list is the guest's. No ``QEMU`` note, no VMCOREINFO: drgn then reads it as a
plain core with threads rather than refusing a "QEMU memory dump" of a non-Linux guest.

``sparse`` leaves out pages that are all zero; each such page still lies in a PT_LOAD
(``p_memsz`` past ``p_filesz``), which gdb and drgn read as zero. But gdb reads such a
page from the executable when the executable has bytes there (Linux leaves unchanged file
pages out of its cores that way): a zero page over the ELF's own file-backed ``.data``
is written, or gdb would show the ELF's stale value.

Pages the guest never wrote are known without reading them where the target can tell
(:meth:`Target.written_ranges`: the holes of undebug's RAM memfd, an attached QEMU's
pagemap): a sparse dump zero-tests only the written pages, and both kinds leave the rest
holes in the file (they read as zero, as that memory does). Where it cannot tell, every
page is read: the same file, slower.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from undebug.arch.x86_64 import CR4_LA57, PAGE_SIZE, Mapping, walk_mappings
from undebug.elf_headers import PT_LOAD as ELF_PT_LOAD
from undebug.elf_headers import ElfHeaderError, program_headers
from undebug.elfcore import (
    ELF_HEADER,
    EM_X86_64,
    ET_CORE,
    EV_CURRENT,
    FORMAT,
    MAX_PHNUM,
    NT_AUXV,
    NT_PRSTATUS,
    NT_UNDEBUG_INFO,
    NT_UNDEBUG_VCPU,
    OWNER_CORE,
    OWNER_UNDEBUG,
    PF_R,
    PF_W,
    PF_X,
    PHDR,
    PT_LOAD,
    PT_NOTE,
    encode_note,
    encode_prstatus,
)
from undebug.gdbserver.threads import ProxyThread
from undebug.target import ReadError, Target

__all__ = ["CoreStats", "write_core"]

BLOCK = 4 << 20  # read this much guest RAM at a time
ZERO_PAGE = bytes(PAGE_SIZE)
ZERO_BLOCK = bytes(BLOCK)  # compared with (memcmp): faster than counting zeros
CR0_PG = 1 << 31
MAX_PROBE = 1 << 40  # RAM probed up to 1 TiB when paging is off


@dataclass
class CoreStats:
    segments: int = 0
    mapped_bytes: int = 0  # what the page tables map (and RAM backs)
    written_bytes: int = 0  # memory bytes in the file
    zero_pages_skipped: int = 0
    tested_bytes: int = 0  # read to find the zero pages (sparse)
    untouched_bytes: int = 0  # zero without being read: the guest never wrote them
    threads: int = 0
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Run:
    """Virtually and physically contiguous memory with one set of permissions."""

    virtual: int
    physical: int
    size: int
    flags: int


def _flags(m: Mapping) -> int:
    return PF_R | (PF_W if m.writable else 0) | (PF_X if m.executable else 0)


def _runs(mappings: list[Mapping]) -> list[_Run]:
    runs: list[_Run] = []
    for m in sorted(mappings, key=lambda m: m.virtual):
        flags = _flags(m)
        last = runs[-1] if runs else None
        if last is not None and last.flags == flags and \
                last.virtual + last.size == m.virtual and last.physical + last.size == m.physical:
            runs[-1] = _Run(last.virtual, last.physical, last.size + m.size, flags)
        else:
            runs.append(_Run(m.virtual, m.physical, m.size, flags))
    return runs


def _ram_end(target: Target) -> int:
    """Where guest RAM from 0 ends, probed (one byte per probe): doubling, then halving."""
    def readable(address: int) -> bool:
        try:
            target.read_physical(address, 1)
        except ReadError:
            return False
        return True

    if not readable(0):
        return 0
    high = PAGE_SIZE
    while high < MAX_PROBE and readable(high):
        high *= 2
    low = high // 2  # readable; high is not (or the cap)
    while high - low > PAGE_SIZE:
        middle = (low + high) // 2 & ~(PAGE_SIZE - 1)
        low, high = (middle, high) if readable(middle) else (low, middle)
    return high


def _mappings(target: Target, warnings: list[str]) -> list[Mapping]:
    """What vCPU 0's page tables map; paging off (early boot): RAM from 0, identity."""
    regs = target.registers(0)
    if not regs.get("cr0", CR0_PG) & CR0_PG:
        warnings.append("vCPU 0 has paging off: guest RAM is dumped at virtual = physical")
        end = _ram_end(target)
        return [Mapping(0, 0, end, PAGE_SIZE, True, False, True)] if end else []
    walk = walk_mappings(target.read_physical, regs.get("cr3", 0),
                         five_level=bool(regs.get("cr4", 0) & CR4_LA57))
    warnings += [f"page tables: {p}" for p in walk.problems]
    return list(walk.mappings)


def _file_backed(target: Target) -> list[tuple[int, int]]:
    """[start, end) of what the guest's ELF holds bytes for, at runtime addresses."""
    try:
        segments = program_headers(target.elf.path.read_bytes())
    except (OSError, ElfHeaderError):
        return []
    return [(s.vaddr + target.load_offset, s.vaddr + target.load_offset + s.filesz)
            for s in segments if s.type == ELF_PT_LOAD and s.filesz]


def _overlaps(ranges: list[tuple[int, int]], start: int, size: int) -> bool:
    return any(low < start + size and start < high for low, high in ranges)


def _read_block(target: Target, address: int, size: int) -> Iterator[tuple[int, bytes | None]]:
    """(offset, bytes or None when unreadable) of physical ``[address, address + size)``:
    one read, or page by page when the target refuses the block (MMIO, outside RAM)."""
    try:
        yield 0, target.read_physical(address, size)
    except ReadError:
        for page in range(0, size, PAGE_SIZE):
            try:
                yield page, target.read_physical(address + page, PAGE_SIZE)
            except ReadError:
                yield page, None


@dataclass
class _Segment:
    vaddr: int
    paddr: int
    filesz: int  # the first filesz bytes are in the file, the rest of memsz is zero
    memsz: int
    flags: int
    offset: int = 0


class _Planner:
    """The segments, from pages seen in address order: data after data grows a segment,
    zeros after anything grow its ``memsz`` only."""

    def __init__(self) -> None:
        self.segments: list[_Segment] = []
        self.open: _Segment | None = None

    def add(self, vaddr: int, paddr: int, size: int, flags: int, stored: bool) -> None:
        seg = self.open
        if seg is not None and seg.vaddr + seg.memsz == vaddr and \
                seg.paddr + seg.memsz == paddr and seg.flags == flags and \
                (not stored or seg.filesz == seg.memsz):
            seg.memsz += size
            seg.filesz += size if stored else 0
            return
        self.open = _Segment(vaddr, paddr, size if stored else 0, size, flags)
        self.segments.append(self.open)

    def break_run(self) -> None:
        self.open = None


def _probe_block(target: Target, address: int, size: int) -> Iterator[tuple[int, int, bool]]:
    """(offset, size, readable) of physical ``[address, address + size)``'s pieces, probed
    a byte at each end (RAM is contiguous; MMIO ends it on a page), page by page where
    they differ."""
    def probe(at: int) -> bool:
        try:
            target.read_physical(at, 1)
        except ReadError:
            return False
        return True

    first, last = probe(address), probe(address + size - 1)
    if first and last:
        yield 0, size, True
    elif not first and not last and size == PAGE_SIZE:
        yield 0, size, False
    else:
        for page in range(0, size, PAGE_SIZE):
            yield page, PAGE_SIZE, probe(address + page)


class _SparsePlan:
    """A sparse dump's choices: a page goes in unless it is all zero, but for one over
    the ELF's file-backed bytes (see the module's docstring)."""

    def __init__(self, planner: _Planner, file_backed: list[tuple[int, int]],
                 stats: CoreStats) -> None:
        self.planner, self.file_backed, self.stats = planner, file_backed, stats

    def zero(self, vaddr: int, paddr: int, size: int, flags: int) -> None:
        if not _overlaps(self.file_backed, vaddr, size):
            self.stats.zero_pages_skipped += size // PAGE_SIZE
            self.planner.add(vaddr, paddr, size, flags, False)
            return
        for page in range(0, size, PAGE_SIZE):
            keep = _overlaps(self.file_backed, vaddr + page, PAGE_SIZE)
            self.stats.zero_pages_skipped += not keep
            self.planner.add(vaddr + page, paddr + page, PAGE_SIZE, flags, keep)

    def data(self, vaddr: int, paddr: int, data: bytes, flags: int) -> None:
        """Pages read from the guest: tested for zeros (memcmp, no copy)."""
        self.stats.tested_bytes += len(data)
        if ZERO_BLOCK.startswith(data):
            self.zero(vaddr, paddr, len(data), flags)
            return
        for page in range(0, len(data), PAGE_SIZE):
            if data.startswith(ZERO_PAGE, page):
                self.zero(vaddr + page, paddr + page, PAGE_SIZE, flags)
            else:
                self.planner.add(vaddr + page, paddr + page, PAGE_SIZE, flags, True)

    def known(self, vaddr: int, paddr: int, size: int, flags: int,
              target: Target, written: list[tuple[int, int]]) -> None:
        """A block whose written pages the target told: only those are read; the rest
        is zero, never read (and so never made to exist: a hole stays a hole)."""
        at = paddr
        for start, length in written:
            if start > at:
                self.stats.untouched_bytes += start - at
                self.zero(vaddr + at - paddr, at, start - at, flags)
            self.data(vaddr + start - paddr, start, target.read_physical(start, length), flags)
            at = start + length
        if at < paddr + size:
            self.stats.untouched_bytes += paddr + size - at
            self.zero(vaddr + at - paddr, at, paddr + size - at, flags)


def _plan(target: Target, runs: list[_Run], sparse: bool, stats: CoreStats) -> list[_Segment]:
    """Pass one: which pages go in the file, a block at a time. Where the target knows
    what is RAM (:meth:`Target.ram_ranges`) and which pages the guest ever wrote
    (:meth:`Target.written_ranges`), a sparse dump reads those only and a full one reads
    nothing; elsewhere a full dump probes what is RAM and a sparse one reads every block
    (and keeps none of it)."""
    planner = _Planner()
    sparse_plan = _SparsePlan(planner, _file_backed(target) if sparse else [], stats)
    for run in runs:
        for at in range(0, run.size, BLOCK):
            size = min(BLOCK, run.size - at)
            vaddr, paddr = run.virtual + at, run.physical + at
            ram = target.ram_ranges(paddr, size)
            if ram is not None:
                end = paddr
                for start, length in ram:
                    if start > end:
                        planner.break_run()  # mapped but not RAM (MMIO): not in the core
                    stats.mapped_bytes += length
                    _plan_ram(target, sparse_plan, vaddr + start - paddr, start, length,
                              run.flags, sparse)
                    end = start + length
                if end < paddr + size:
                    planner.break_run()
            elif sparse:
                for offset, block in _read_block(target, paddr, size):
                    if block is None:
                        planner.break_run()  # mapped but not RAM (MMIO): not in the core
                        continue
                    stats.mapped_bytes += len(block)
                    sparse_plan.data(vaddr + offset, paddr + offset, block, run.flags)
            else:
                for offset, piece, readable in _probe_block(target, paddr, size):
                    if not readable:
                        planner.break_run()  # mapped but not RAM (MMIO): not in the core
                        continue
                    stats.mapped_bytes += piece
                    planner.add(vaddr + offset, paddr + offset, piece, run.flags, True)
        planner.break_run()
    return planner.segments


def _plan_ram(target: Target, plan: _SparsePlan, vaddr: int, paddr: int, size: int,
              flags: int, sparse: bool) -> None:
    """A piece known to be RAM: all of it in a full dump; in a sparse one, what is not
    zero, found by reading the written pages only where the target can tell them."""
    if not sparse:
        plan.planner.add(vaddr, paddr, size, flags, True)
        return
    written = target.written_ranges(paddr, size)
    if written is None:
        plan.data(vaddr, paddr, target.read_physical(paddr, size), flags)
    else:
        plan.known(vaddr, paddr, size, flags, target, written)


def _copy_segment(target: Target, seg: _Segment, fd: int, stats: CoreStats, sparse: bool) -> None:
    """``seg``'s file bytes to ``fd`` at ``seg.offset``: where the target knows which pages
    the guest wrote, those only, the rest left a hole in the file (it reads as zero, as
    that memory does, and costs neither a read nor a write: a full dump of a guest that
    used 1/8 of its RAM writes 1/8 of it)."""
    written = target.written_ranges(seg.paddr, seg.filesz) if seg.filesz else []
    if written is None:
        written = [(seg.paddr, seg.filesz)]
    elif not sparse:  # a sparse plan counted them already
        stats.untouched_bytes += seg.filesz - sum(n for _, n in written)
    for address, size in written:
        os.lseek(fd, seg.offset + address - seg.paddr, os.SEEK_SET)
        target.copy_physical(address, size, fd)


def _notes(target: Target, threads: list[ProxyThread], info: dict[str, object]) -> bytes:
    notes = [encode_note(OWNER_CORE, NT_PRSTATUS, encode_prstatus(t.gdb_id, t.registers))
             for t in threads]
    notes.append(encode_note(OWNER_CORE, NT_AUXV, bytes(16)))  # AT_NULL: no process
    for cpu in range(target.cpu_count()):
        payload = {"cpu": cpu, "registers": target.registers(cpu)}
        notes.append(encode_note(OWNER_UNDEBUG, NT_UNDEBUG_VCPU, json.dumps(payload).encode()))
    notes.append(encode_note(OWNER_UNDEBUG, NT_UNDEBUG_INFO,
                             json.dumps({"format": FORMAT, **info}).encode()))
    return b"".join(notes)


def write_core(target: Target, threads: list[ProxyThread], out: IO[Any], *,
               sparse: bool = False, info: dict[str, object] | None = None) -> CoreStats:
    """Write ``target``'s memory and ``threads`` (the first is gdb's current thread) to
    ``out`` (a new file, at offset 0). Raises ReadError when there is nothing to dump.

    Two passes over guest memory (the guest is held still): the first decides which
    pages go in, so that the headers can come first and a truncated copy of the file
    still has them (and every segment before the cut)."""
    stats = CoreStats(threads=len(threads))
    runs = _runs(_mappings(target, stats.warnings))
    segments = _plan(target, runs, sparse, stats)
    if len(segments) + 1 > MAX_PHNUM:
        raise ReadError(f"{len(segments)} memory segments: more than an ELF core can number "
                        f"({MAX_PHNUM}); the page tables are likely corrupt")
    notes = _notes(target, threads, {"sparse": sparse, **(info or {})})
    phoff = ELF_HEADER.size
    note_offset = phoff + PHDR.size * (len(segments) + 1)
    offset = note_offset + len(notes)
    offset += -offset % PAGE_SIZE  # memory page-aligned in the file: mmap-able
    data_start = offset
    for seg in segments:
        seg.offset = offset
        offset += seg.filesz
    ident = b"\x7fELF\x02\x01\x01".ljust(16, b"\0")  # 64-bit, little-endian, SysV
    out.write(ELF_HEADER.pack(ident, ET_CORE, EM_X86_64, EV_CURRENT, 0, phoff, 0, 0,
                              ELF_HEADER.size, PHDR.size, len(segments) + 1, 0, 0, 0))
    out.write(PHDR.pack(PT_NOTE, PF_R, note_offset, 0, 0, len(notes), len(notes), 4))
    out.write(b"".join(PHDR.pack(PT_LOAD, s.flags, s.offset, s.vaddr, s.paddr, s.filesz,
                                 s.memsz, PAGE_SIZE) for s in segments))
    out.write(notes)
    out.write(bytes(data_start - out.tell()))
    out.flush()  # the memory goes to the descriptor itself (sendfile from shared RAM)
    for seg in segments:
        _copy_segment(target, seg, out.fileno(), stats, sparse)
        stats.written_bytes += seg.filesz
    stats.segments = len(segments)
    os.ftruncate(out.fileno(), offset)  # a hole at the end is still the file's
    out.seek(0, os.SEEK_END)  # the buffered file learns where the descriptor is
    # no fsync: the bundle's rename is what readers wait for (QEMU's dump is not synced
    # either, and syncing 1 GiB doubled the time on a busy disk)
    return stats
