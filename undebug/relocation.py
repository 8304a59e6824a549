"""Where a kernel that relocated itself runs: its load offset (a KASLR slide), found from
the vCPUs' program counters and the guest's own bytes, so no one has to say it.

A kernel linked at one address and running at another (Nanos: linked at 0x200000, run at
0xffffffff80000000 + a random page-aligned offset chosen at each boot) keeps its code's
bytes and each byte's offset within its page. A vCPU's pc inside that code lies in a
guest page equal, byte for byte, to some page of the ELF's text: the distance between
the two is the offset. A page that occurs twice in the text (padding, a repeated table)
says nothing; the next pc, or a second page at the candidate's offset, decides. The OS
provider confirms the answer from the kernel's own record where it keeps one.
Guest memory is untrusted: at most one page is read per pc and per check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from undebug.arch.x86_64 import ReadPhys, walk_mappings
from undebug.elf import ElfFile

__all__ = ["KERNEL_TOP", "Relocation", "find_load_offset", "kernel_text_start"]

PAGE = 4096
KERNEL_TOP = 0xFFFF_FFFF_8000_0000  # the top 2 GiB: -mcmodel=kernel code runs there
MASK = (1 << 64) - 1
CHECK_PAGES = 8  # more pages compared at a candidate offset before it is believed


@dataclass(frozen=True)
class Relocation:
    offset: int | None  # runtime address = ELF address + offset; None: not found
    how: str  # how it was found, or why not (a warning when offset is None)


def _text_pages(elf: ElfFile) -> dict[bytes, list[int]]:
    """sha256 of each whole page of the ELF's executable sections -> its ELF addresses
    (hashed once per ELF: kept in its cache)."""
    def build() -> dict[str, list[int]]:
        pages: dict[str, list[int]] = {}
        with elf.path.open("rb") as f:
            for section in elf.loaded_text:
                first = (section.vaddr + PAGE - 1) & ~(PAGE - 1)
                for vaddr in range(first, section.vaddr + section.size - PAGE + 1, PAGE):
                    f.seek(section.offset + vaddr - section.vaddr)
                    pages.setdefault(hashlib.sha256(f.read(PAGE)).hexdigest(), []).append(vaddr)
        return pages

    built = elf.derived("text-pages", build)
    return {bytes.fromhex(digest): [int(a) for a in where] for digest, where in built.items()}


def _confirmed(offset: int, pages: dict[bytes, list[int]], read: Callable[[int], bytes | None],
               skip: int) -> bool:
    """Most of ``CHECK_PAGES`` more ELF text pages (unique ones, spread over the text,
    other than ``skip``) hold the same bytes at ``offset`` in the guest. Most, not all: a
    kernel may patch a few pages as it runs (Nanos rewrites its first two, the boot code)."""
    unique = sorted((where[0], digest) for digest, where in pages.items()
                    if len(where) == 1 and where[0] != skip)
    sample = unique[:: max(1, len(unique) // CHECK_PAGES)][:CHECK_PAGES]
    same = 0
    for vaddr, digest in sample:
        data = read((vaddr + offset) & MASK)
        same += data is not None and hashlib.sha256(data).digest() == digest
    return same * 4 >= len(sample) * 3


def kernel_text_start(read_phys: ReadPhys, cr3: int) -> int | None:
    """The lowest executable supervisor page of the top 2 GiB (4-level tables, through
    the bounded walker of :mod:`undebug.arch.x86_64`), or None."""
    walk = walk_mappings(read_phys, cr3)
    return min((max(m.virtual, KERNEL_TOP) for m in walk.mappings
                if m.executable and not m.user and m.end > KERNEL_TOP), default=None)


def find_load_offset(elf: ElfFile, pcs: Iterable[int],
                     read_page: Callable[[int], bytes | None],
                     kernel_start: Callable[[], int | None] | None = None) -> Relocation:
    """The offset at which ``elf``'s text runs, from ``pcs`` (the vCPUs' rip) and
    ``read_page(address)`` (a guest page, or None if unreadable). When no pc is in the
    kernel (every vCPU in a busy program's code), ``kernel_start()`` (the lowest
    executable supervisor page of the top 2 GiB, from the page tables, where an x86-64
    kernel built for ``-mcmodel=kernel`` runs) gives the candidate: its first text page."""
    pages: dict[bytes, list[int]] | None = None
    tried = []
    for pc in pcs:
        page = pc & ~(PAGE - 1)
        data = read_page(page)
        tried.append(f"{pc:#x}")
        if data is None:
            continue
        pages = _text_pages(elf) if pages is None else pages
        for vaddr in pages.get(hashlib.sha256(data).digest(), []):
            offset = (page - vaddr) & MASK
            if _confirmed(offset, pages, read_page, vaddr):
                how = "at its link address" if offset == 0 else \
                    f"{offset:#x} from its link address"
                return Relocation(offset, f"{elf.path.name} runs {how}: the text page of "
                                  f"vCPU pc {pc:#x} and most of {CHECK_PAGES} more match "
                                  "the ELF's")
    start = kernel_start() if kernel_start is not None else None
    text = [t for t in elf.loaded_text if t.size]
    if start is not None and text:
        pages = _text_pages(elf) if pages is None else pages
        offset = (start - (min(t.vaddr for t in text) & ~(PAGE - 1))) & MASK
        if _confirmed(offset, pages, read_page, -1):
            return Relocation(offset, f"{elf.path.name} runs {offset:#x} from its link "
                              f"address: no vCPU was in its code, but the lowest executable "
                              f"kernel page ({start:#x}) and most of {CHECK_PAGES} text pages "
                              "at that offset match the ELF's")
    where = ", ".join(tried) or "none"
    return Relocation(None, f"cannot tell where {elf.path.name} runs: no vCPU pc ({where}) "
                      "is in a guest page equal to a page of its text (a vCPU in user code, "
                      "or the kernel not yet relocated?)")
