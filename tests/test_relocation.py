"""Finding where a relocated kernel runs (undebug/relocation.py), and the QEMU command line
and verdicts for one that boots from a disk (Nanos).

The relocation tests place the reference guest's ELF text pages, read from the ELF file,
at a chosen offset in a dict of pages: no guest relocates this ELF, and no QEMU can stand
in for a KASLR kernel here; the real relocation is tested on a Nanos guest in
tests/test_nanos_image.py. The offset below is the kind Nanos picks (page-aligned, the
kernel moved into the top 2 GiB).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from undebug.elf import ElfFile
from undebug.os.nanos import NanosProvider
from undebug.relocation import PAGE, find_load_offset
from undebug.vm.accel import Accel
from undebug.vm.qemu import QemuConfig, QemuFiles, ram_layout

OFFSET = 0xFFFF_FFFF_B27D_2000 - 0x200000  # runtime = link + OFFSET (mod 2^64)
MASK = (1 << 64) - 1


def _relocated(elf: ElfFile, offset: int, patched: int = 0) -> dict[int, bytes]:
    """Guest pages holding the ELF's text at ``offset``; its first ``patched`` pages
    changed, as a kernel that rewrites its boot code leaves them."""
    pages: dict[int, bytes] = {}
    data = elf.path.read_bytes()
    for section in elf.loaded_text:
        start = section.vaddr & ~(PAGE - 1)
        for vaddr in range(start, section.vaddr + section.size, PAGE):
            at = section.offset + vaddr - section.vaddr
            page = data[max(at, section.offset) : at + PAGE].rjust(PAGE, b"\0")
            pages[(vaddr + offset) & MASK] = page
    for vaddr in sorted(pages)[:patched]:
        pages[vaddr] = bytes(PAGE)
    return pages


def _pc(elf: ElfFile, name: str, offset: int) -> int:
    symbol = elf.symbol(name)
    assert symbol is not None
    return (symbol.address + 4 + offset) & MASK


def test_the_offset_is_found_from_a_pc_in_the_kernel(guest_image: Path) -> None:
    elf = ElfFile(guest_image)
    pages = _relocated(elf, OFFSET, patched=1)
    found = find_load_offset(elf, [_pc(elf, "sched_timer_tick", OFFSET)], pages.get)
    assert found.offset == OFFSET, found.how


def test_a_user_pc_then_a_kernel_pc(guest_image: Path) -> None:
    """The first vCPU runs user code (a page no ELF text page equals): the next decides."""
    elf = ElfFile(guest_image)
    pages = _relocated(elf, OFFSET)
    pages[0x401000] = b"\x90" * PAGE
    found = find_load_offset(elf, [0x401234, _pc(elf, "sched_timer_tick", OFFSET)], pages.get)
    assert found.offset == OFFSET, found.how


def test_no_kernel_pc_says_why(guest_image: Path) -> None:
    elf = ElfFile(guest_image)
    pages = _relocated(elf, OFFSET)
    pages[0x401000] = b"\x90" * PAGE
    found = find_load_offset(elf, [0x401234], pages.get)
    assert found.offset is None and "0x401234" in found.how and "user code" in found.how


def test_a_page_that_matches_but_the_rest_does_not_is_refused(guest_image: Path) -> None:
    """One page of the kernel's bytes copied elsewhere (say, into a dump buffer) is not
    where the kernel runs: the sampled other pages at that offset do not match."""
    elf = ElfFile(guest_image)
    linked = _relocated(elf, 0)
    pc = _pc(elf, "sched_timer_tick", 0)
    copy = {0x7000_0000: linked[pc & ~(PAGE - 1)]}
    found = find_load_offset(elf, [0x7000_0000 + (pc & (PAGE - 1))], copy.get)
    assert found.offset is None, found.how


def test_a_disk_boots_from_the_firmware_on_the_machine_asked(tmp_path: Path) -> None:
    files = QemuFiles(tmp_path / "q", tmp_path / "g", tmp_path / "t", tmp_path / "c")
    config = QemuConfig(image=tmp_path / "disk,1.raw", accel=Accel("tcg", ""), files=files,
                        machine="q35", image_is_disk=True, disks=(tmp_path / "data.raw",),
                        disk_if="virtio-scsi", devices=("virtio-rng-pci",))
    args = config.command_line("qemu")
    assert "-kernel" not in args
    assert args[args.index("-M") + 1] == "q35"
    drives = [args[i + 1] for i, a in enumerate(args) if a == "-drive"]
    assert drives == [f"if=none,id=hd0,format=raw,snapshot=on,file={tmp_path}/disk,,1.raw",
                      f"if=none,id=hd1,format=raw,snapshot=on,file={tmp_path}/data.raw"]
    devices = [args[i + 1] for i, a in enumerate(args) if a == "-device"]
    assert devices.count("virtio-scsi-pci,id=scsi0") == 1
    assert "scsi-hd,bus=scsi0.0,drive=hd0" in devices and "virtio-rng-pci" in devices


def test_microvm_gets_virtio_mmio_devices(tmp_path: Path) -> None:
    files = QemuFiles(tmp_path / "q", tmp_path / "g", tmp_path / "t", tmp_path / "c")
    config = QemuConfig(image=tmp_path / "kernel.img", accel=Accel("tcg", ""), files=files,
                        machine="microvm", disks=(tmp_path / "disk.raw",))
    args = config.command_line("qemu")
    assert args[args.index("-kernel") + 1] == str(tmp_path / "kernel.img")
    devices = [args[i + 1] for i, a in enumerate(args) if a == "-device"]
    assert "virtio-blk-device,drive=hd0" in devices
    assert "virtio-serial-device,id=vser0" in devices


@pytest.mark.parametrize(("machine", "memory_mb", "low"), [
    ("pc", 3 << 10, 3 << 30), ("q35", 3 << 10, 2 << 30), ("q35", 2 << 10, 2 << 30),
    ("microvm", 3 << 10, 3 << 30)])
def test_ram_layout_per_machine(machine: str, memory_mb: int, low: int) -> None:
    regions = ram_layout(memory_mb, machine)
    assert regions[0].physical == 0 and regions[0].size == min(low, memory_mb << 20)
    assert sum(r.size for r in regions) == memory_mb << 20


@pytest.mark.parametrize(("code", "ok", "words"), [
    (0, True, "exited cleanly"), (11, False, "SIGSEGV"), (6, False, "SIGABRT"),
    (0x7E, False, "kernel fault"), (3, False, "signal 3")])
def test_nanos_exit_codes(code: int, ok: bool, words: str) -> None:
    verdict = NanosProvider.exit_verdict(code)
    assert verdict is not None and verdict[0] is ok and words in verdict[1], verdict


def test_a_busy_program_falls_back_to_the_kernels_first_page(guest_image: Path) -> None:
    """Every vCPU in user code: the page tables' lowest executable kernel page (given
    here as the walker would find it) is the ELF's first text page at the offset."""
    elf = ElfFile(guest_image)
    pages = _relocated(elf, OFFSET)
    first = min(t.vaddr for t in elf.loaded_text) & ~(PAGE - 1)
    found = find_load_offset(elf, [0x401234], pages.get, lambda: (first + OFFSET) & MASK)
    assert found.offset == OFFSET and "lowest executable kernel page" in found.how
    wrong = find_load_offset(elf, [0x401234], pages.get, lambda: (first + OFFSET + PAGE) & MASK)
    assert wrong.offset is None  # a page off: the text pages at that offset do not match


def test_the_kernels_first_page_from_the_page_tables() -> None:
    """As Nanos maps itself after KASLR: tables above with U set (the leaf decides), a
    non-executable heap page below the kernel, a user page, then the kernel's text
    (hand-built tables, as in tests/test_x86_64.py: no guest maps these on demand)."""
    from tests.test_x86_64 import NX, P, Phys, U, W, map_4k
    from undebug.relocation import kernel_text_start

    phys = Phys()
    map_4k(phys, 0x1000, 0xFFFF_FFFF_C000_0000, 0x5_0000, P | W | NX)  # heap: NX
    phys.set(0x12000, 1, 0x5_1000 | P | U)  # 0x...c0001000: a user page, executable
    assert kernel_text_start(phys.read, 0x1000) is None
    phys.set(0x12000, 7, 0x5_7000 | P)  # 0x...c0007000: the kernel's first text page
    phys.set(0x12000, 8, 0x5_8000 | P)
    assert kernel_text_start(phys.read, 0x1000) == 0xFFFF_FFFF_C000_7000
