"""core.elf's pages that the guest never wrote: found without reading them (the shared RAM
memfd's holes; an attached QEMU's page tables through /proc/PID/pagemap), left out of a
sparse core and left as holes in the file, and the file byte for byte what reading every
page gives. Real QEMU (TCG), the real reference guest; the kernel's own accounting of the
memfd (st_blocks) and stock gdb are the independent readers."""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import boot, real_image, undebug
from tests.test_attach import foreign_qemu  # noqa: F401 (a fixture: a QEMU started by hand)
from undebug.dump.core import CoreStats, write_core
from undebug.elf import ElfFile
from undebug.gdbserver.threads import ThreadView
from undebug.live_target import LiveTarget
from undebug.os import provider_for
from undebug.session.client import SupervisorClient
from undebug.session.store import SessionDir
from undebug.vm.process_memory import PAGEMAP_SPAN, ProcessMemory

PAGE = 4096


@pytest.fixture(scope="module")
def paused(guest_image: Path) -> Iterator[str]:
    name = boot("holes", "threads=4", guest_image)
    assert undebug("stop", name).code == 0
    yield name
    undebug("kill", name)


def memfd_allocated(name: str) -> int:
    """Bytes of the guest's RAM memfd that hold a page (the kernel's count, st_blocks)."""
    with SupervisorClient(SessionDir.named(name)) as client:
        _, fd = client.memory_fd()
    try:
        return os.fstat(fd).st_blocks * 512
    finally:
        os.close(fd)


def cores(target: LiveTarget, tmp: Path, sparse: bool) -> dict[str, tuple[CoreStats, Path]]:
    """The same moment written twice: as undebug writes it, and with the target saying it
    cannot tell which pages were written (every page read: the fallback)."""
    provider = provider_for(target)
    threads = ThreadView.from_target(target, lambda t: provider.threads()).threads
    out = {}
    for kind in ("known", "fallback"):
        if kind == "fallback":
            target.written_ranges = lambda address, size: None  # type: ignore[method-assign]
        path = tmp / f"{kind}-{'sparse' if sparse else 'full'}.elf"
        with path.open("wb") as f:
            out[kind] = write_core(target, threads, f, sparse=sparse), path
    return out


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "full"])
def test_pages_never_written_are_not_read_and_the_core_is_what_reading_all_gives(
        paused: str, tmp_path: Path, sparse: bool) -> None:
    before = memfd_allocated(paused)
    with LiveTarget(SessionDir.named(paused)) as target:
        made = cores(target, tmp_path, sparse)
    known, fallback = made["known"][0], made["fallback"][0]
    assert digest(made["known"][1]) == digest(made["fallback"][1])
    assert known.segments == fallback.segments and known.written_bytes == fallback.written_bytes
    # the guest wrote part of its RAM: only that part is read (at most what the memfd
    # holds, by the kernel's count), the rest is known zero unread
    assert before < known.mapped_bytes // 2
    assert known.tested_bytes <= before
    assert known.untouched_bytes >= known.mapped_bytes - before - (16 << 20)
    if sparse:
        assert known.tested_bytes + known.untouched_bytes == known.mapped_bytes
        assert fallback.tested_bytes == fallback.mapped_bytes and fallback.untouched_bytes == 0
    else:  # a full core: the never-written pages are holes in the file, not written zeros
        stat = made["known"][1].stat()
        assert stat.st_size > known.mapped_bytes and stat.st_blocks * 512 <= before + (16 << 20)


def test_writing_the_core_adds_no_page_to_the_guests_memory(paused: str, tmp_path: Path) -> None:
    """A read fault on a hole of a shared memfd allocates a page: the dump must read the
    holes it skips by no such path (once, a sparse dump made the guest's RAM all resident)."""
    before = memfd_allocated(paused)
    for sparse in (True, False):
        result = undebug("dump", paused, "-o", str(tmp_path / str(sparse)), "--json",
                         *(["--sparse"] if sparse else []))
        assert result.code == 0, result.stdout + result.stderr
        core = result.json()["core"]
        assert core["untouched_bytes"] > core["mapped_bytes"] // 2
    assert memfd_allocated(paused) == before


def test_a_page_written_then_zeroed_is_read_found_zero_and_left_out(
        paused: str, tmp_path: Path, guest_image: Path) -> None:
    """planted_bss_scrubbed (.bss) was written then zeroed at boot: not a hole, so the
    sparse pass must read it to know it is zero; it is left out and still reads as zero."""
    symbol = ElfFile(guest_image).symbol("planted_bss_scrubbed")
    assert symbol is not None and symbol.address % PAGE == 0
    with SupervisorClient(SessionDir.named(paused)) as client:
        layout, fd = client.memory_fd()
    with LiveTarget(SessionDir.named(paused)) as target:
        physical = target._translate_page(symbol.address)
        assert target.read(symbol.address, PAGE) == bytes(PAGE)
    try:
        (phys, offset, _), = [r for r in layout if r[0] <= physical < r[0] + r[2]]
        at = offset + physical - phys
        assert os.lseek(fd, at, os.SEEK_DATA) == at  # a page of the memfd: written
    finally:
        os.close(fd)
    result = undebug("dump", paused, "-o", str(tmp_path), "--sparse", "--json")
    assert result.code == 0, result.stdout + result.stderr
    core = Path(result.json()["bundle"]) / "core.elf"
    loads = subprocess.run(["readelf", "-lW", str(core)], capture_output=True, text=True).stdout
    segments = [(int(v, 16), int(f, 16), int(m, 16)) for v, f, m in re.findall(
        r"LOAD\s+0x\S+\s+(0x\S+)\s+0x\S+\s+(0x\S+)\s+(0x\S+)", loads)]
    holding = [(v, f, m) for v, f, m in segments if v <= symbol.address < v + m]
    assert len(holding) == 1 and symbol.address >= holding[0][0] + holding[0][1], holding
    gdb = subprocess.run(["gdb", "-nx", "-batch", "-ex", "print/x planted_bss_scrubbed[0]@4",
                          str(guest_image), str(core)], capture_output=True, text=True,
                         timeout=120).stdout
    assert re.search(r"= \{0x0, 0x0, 0x0, 0x0\}", gdb), gdb


def private_mapping(pages: int) -> tuple[mmap.mmap, int]:
    m = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return m, ctypes.addressof(ctypes.c_char.from_buffer(m))


def test_pagemap_names_the_pages_a_private_anonymous_mapping_holds() -> None:
    """This process's own memory: pages it wrote are held, the others are not; a shared
    mapping is refused (its pages can hold bytes no page table of ours shows)."""
    m, base = private_mapping(64)
    m[3 * PAGE] = 1
    m[10 * PAGE : 13 * PAGE] = b"x" * (3 * PAGE)
    memory = ProcessMemory(os.getpid())
    assert memory.touched(base, 64 * PAGE) == [(base + 3 * PAGE, PAGE),
                                               (base + 10 * PAGE, 3 * PAGE)]
    assert memory.touched(base + 11 * PAGE, 4 * PAGE) == [(base + 11 * PAGE, 2 * PAGE)]
    # pagemap is read 1 GiB of address space at a time: a piece across that seam is one
    big, big_base = private_mapping((PAGEMAP_SPAN >> 12) + 16)
    big[PAGEMAP_SPAN - PAGE] = big[PAGEMAP_SPAN] = 1
    assert memory.touched(big_base, PAGEMAP_SPAN + 16 * PAGE) == [
        (big_base + PAGEMAP_SPAN - PAGE, 2 * PAGE)]
    shared = mmap.mmap(-1, 4 * PAGE)  # MAP_SHARED | MAP_ANONYMOUS: shmem, inode != 0
    shared_base = ctypes.addressof(ctypes.c_char.from_buffer(shared))
    assert ProcessMemory(os.getpid()).touched(shared_base, 4 * PAGE) is None


def test_an_attached_qemus_untouched_pages_are_not_read(foreign_qemu: Any, guest_image: Path,  # noqa: F811
                                                        tmp_path: Path) -> None:
    port, qmp_path, _, _, _ = foreign_qemu
    time.sleep(1.5)
    result = undebug("attach", "--name", "adopted-holes", "--gdb", f"127.0.0.1:{port}",
                     "--qmp", str(qmp_path), "--elf", str(guest_image), "--json")
    assert result.code == 0, result.stderr
    try:
        assert result.json()["status"]["ram_read"] == "qemu-process"
        with LiveTarget(SessionDir.named("adopted-holes")) as target:
            made = cores(target, tmp_path, sparse=True)
    finally:
        undebug("kill", "adopted-holes")
    known, fallback = made["known"][0], made["fallback"][0]
    assert digest(made["known"][1]) == digest(made["fallback"][1])
    assert known.untouched_bytes > known.mapped_bytes // 2  # -m 128, threads=2: mostly unused
    assert known.tested_bytes + known.untouched_bytes == known.mapped_bytes
    assert fallback.tested_bytes == fallback.mapped_bytes


def test_a_real_unikraft_guest_is_dumped_from_what_it_wrote_only(tmp_path: Path) -> None:
    """A Unikraft image (UNDEBUG_UNIKRAFT_IMAGE, built outside the repository) under
    undebug run: its page tables map far more than its RAM, and it writes little of the
    RAM. The sparse core reads only written pages, in few reads (the old pass retried
    every unreadable block page by page: ~1 M failed reads, 6 s), and is byte for byte the
    read-every-page core, in which stock gdb lists the guest's threads."""
    image = str(real_image("UNDEBUG_UNIKRAFT_IMAGE"))
    assert undebug("run", "-d", "--name", "ukholes", image).code == 0
    try:
        time.sleep(2)  # boot (~0.3 s under TCG) and let the threads start
        assert undebug("stop", "ukholes").code == 0
        listed = undebug("threads", "ukholes", "--json")
        assert listed.code == 0, listed.stderr
        ids = {t["id"] for t in listed.json()["threads"]}
        allocated = memfd_allocated("ukholes")
        with LiveTarget(SessionDir.named("ukholes")) as target:
            reads = []
            plain = target.read_physical

            def counted(address: int, size: int) -> bytes:
                reads.append(size)
                return plain(address, size)

            target.read_physical = counted  # type: ignore[method-assign]
            made = cores(target, tmp_path, sparse=True)
            known_reads = len(reads)
    finally:
        undebug("kill", "ukholes")
    known = made["known"][0]
    assert digest(made["known"][1]) == digest(made["fallback"][1])
    assert known.tested_bytes <= allocated < known.mapped_bytes // 4
    assert known.tested_bytes + known.untouched_bytes == known.mapped_bytes
    assert known_reads < 10_000, known_reads
    dbg = Path(image + ".dbg")
    out = subprocess.run(["gdb", "-nx", "-batch", "-ex", "info threads", str(dbg),
                          str(made["known"][1])], capture_output=True, text=True,
                         timeout=120).stdout
    assert len(ids) > 2 and ids <= {int(i) for i in re.findall(r"LWP (\d+)", out)}, out
