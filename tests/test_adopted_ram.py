"""Locating an adopted QEMU's RAM from HMP text, and reading a process's memory in place.

The HMP answers below are fake data: a real QEMU prints what tests/test_attach.py reads
(the end-to-end test parses a live QEMU's ``info mtree -f`` and ``gpa2hva``), but no
QEMU at hand prints a monitor answer that lies, overlaps or overflows. The host memory
read is real: ``process_vm_readv`` on this test's own process, on buffers it made.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import mmap
import os

import pytest

from undebug.session.adopted_ram import MAX_RANGES, RamUnavailable, flat_ram_ranges, locate
from undebug.vm.process_memory import ProcessMemory, start_time
from undebug.vm.qemu import RamRegion

# The shape of QEMU 7.2's `info mtree -f` (the I/O view trimmed), with CRLF as QMP sends it.
MTREE = "\r\n".join([
    "FlatView #0",
    ' AS "I/O", root: io',
    " Root memory region: io",
    "  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan",
    "  0000000000000010-000000000000001f (prio 0, ram): not-system-memory",
    "",
    "FlatView #3",
    ' AS "memory", root: system',
    ' AS "cpu-memory-0", root: system',
    " Root memory region: system",
    "  0000000000000000-00000000000c2fff (prio 0, ram): pc.ram",
    "  00000000000c3000-00000000000e7fff (prio 0, rom): pc.ram @00000000000c3000",
    "  0000000000100000-0000000007ffffff (prio 0, ram): pc.ram @0000000000100000",
    "  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic",
    "  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios",
    ""])


def test_the_system_views_ram_and_rom_ranges_are_found_with_their_region() -> None:
    assert flat_ram_ranges(MTREE) == [
        (0, 0xC3000, "pc.ram"), (0xC3000, 0x25000, "pc.ram"),
        (0x100000, 0x7F00000, "pc.ram"), (0xFFFC0000, 0x40000, "pc.bios")]


@pytest.mark.parametrize("line", [
    "  0000000000200000-00000000001fffff (prio 0, ram): backwards",
    "  0010000000000000-0010000000000fff (prio 0, ram): beyond 2^52",
    "  0000000000001000-0000000000001fff (prio 0, ram): overlaps the range before",
    "  00000000000c3000-00000000000c3fff (prio 0, ram): overlaps too",
    "  000000000c3000-zz (prio 0, ram): not hex",
    "  \x1b[2J0000000000000000-0000000000000fff (prio 0, ram): escape first",
    "garbage " * 1000,
])
def test_a_range_hmp_should_not_print_is_dropped(line: str) -> None:
    text = MTREE.replace("  00000000fec00000", line + "\r\n  00000000fec00000")
    assert flat_ram_ranges(text) == flat_ram_ranges(MTREE)


def test_a_flat_view_of_endless_ranges_is_cut_off() -> None:
    lines = [' AS "memory", root: system'] + [
        f"  {i << 12:016x}-{(i << 12) + 0xFFF:016x} (prio 0, ram): r{i}" for i in range(10000)]
    assert len(flat_ram_ranges("\n".join(lines))) == MAX_RANGES


def fake_monitor(answers: dict[str, str]):  # type: ignore[no-untyped-def]
    async def hmp(command: str) -> str:
        return answers.get(command, "")
    return hmp


def own_buffer(size: int) -> tuple[ctypes.Array[ctypes.c_char], int]:
    buf = ctypes.create_string_buffer(bytes(range(256)) * (size // 256), size)
    return buf, ctypes.addressof(buf)


def test_ranges_of_one_mapping_merge_and_the_probe_reads_them() -> None:
    buf, host = own_buffer(0x3000)
    mtree = "\n".join([' AS "memory", root: system',
                       "  0000000000000000-0000000000000fff (prio 0, ram): pc.ram",
                       "  0000000000001000-0000000000002fff (prio 0, rom): pc.ram @1000"])
    answers = {"info mtree -f": mtree}
    for gpa in (0, 0xFFF, 0x1000, 0x2FFF):
        answers[f"gpa2hva {gpa:#x}"] = (f"Host virtual address for {gpa:#x} (pc.ram) is "
                                        f"{host + gpa:#x}\r\n")
    ram = asyncio.run(locate(fake_monitor(answers), os.getpid()))
    assert ram.layout == (RamRegion(0, host, 0x3000),)
    assert ram.pid == os.getpid() and ram.start_time == start_time(os.getpid())
    assert ProcessMemory(ram.pid).read(host + 0xFF0, 0x20) == buf.raw[0xFF0:0x1010]


@pytest.mark.parametrize("answer", [
    "Host virtual address for 0x1000 (pc.ram) is 0x7f0000000000",  # for another address
    "Host virtual address for 0x0 (other) is 0x7f0000000000",  # for another region
    "Host virtual address for 0x0 (pc.ram) is 0xffffffffffffffff",  # beyond any host
    "No memory is mapped at address 0x0",
    "",
])
def test_a_range_whose_host_address_hmp_does_not_vouch_for_is_not_read(answer: str) -> None:
    mtree = ' AS "memory", root: system\n  0000000000000000-0000000000000fff (prio 0, ram): pc.ram'
    answers = {"info mtree -f": mtree, "gpa2hva 0x0": answer,
               "gpa2hva 0xfff": "Host virtual address for 0xfff (pc.ram) is 0x7f0000000fff"}
    with pytest.raises(RamUnavailable, match="showed no guest RAM"):
        asyncio.run(locate(fake_monitor(answers), os.getpid()))


def test_ends_that_are_not_one_mapping_are_not_read() -> None:
    mtree = ' AS "memory", root: system\n  0000000000000000-0000000000001fff (prio 0, ram): pc.ram'
    answers = {"info mtree -f": mtree,
               "gpa2hva 0x0": "Host virtual address for 0x0 (pc.ram) is 0x7f0000000000",
               "gpa2hva 0x1fff": "Host virtual address for 0x1fff (pc.ram) is 0x7f0000100fff"}
    with pytest.raises(RamUnavailable, match="showed no guest RAM"):
        asyncio.run(locate(fake_monitor(answers), os.getpid()))


def test_no_pid_means_no_reads_in_place() -> None:
    with pytest.raises(RamUnavailable, match="pid is not visible"):
        asyncio.run(locate(fake_monitor({}), None))


def test_a_read_that_runs_off_a_mapping_stops_with_efault() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    page = mmap.PAGESIZE
    base = libc.mmap(None, 2 * page, mmap.PROT_READ | mmap.PROT_WRITE,
                     mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    assert base not in (None, ctypes.c_void_p(-1).value)
    try:
        ctypes.memset(base, 0x5A, page)
        assert libc.munmap(ctypes.c_void_p(base + page), page) == 0  # a hole after it
        memory = ProcessMemory(os.getpid())
        assert memory.read(base, page) == b"\x5a" * page
        with pytest.raises(OSError) as caught:  # the first page comes back, then the hole
            memory.read(base + page - 16, 32)
        assert caught.value.errno == errno.EFAULT
        assert f"{base + page:#x}" in str(caught.value)  # where the hole begins
    finally:
        libc.munmap(ctypes.c_void_p(base), page)
