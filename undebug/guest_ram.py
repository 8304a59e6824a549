"""Guest RAM read in place, without a round trip to the supervisor: the file QEMU keeps
it in, mapped read-only here (undebug started QEMU), or an adopted QEMU's address space
(``process_vm_readv``). Each kind also says which pages the guest may have written, so a
dump reads only those (a never-written page reads as zero)."""

from __future__ import annotations

import bisect
import errno
import mmap
import os
from abc import ABC, abstractmethod

from undebug.target import ReadError

__all__ = ["GuestRam", "ProcessRam", "SharedRam", "clip"]

# shared RAM reads at least this large go by pread(2), smaller ones are mmap slices: a
# read fault on a hole of the memfd allocates a page (a 1 GiB read made QEMU's guest
# cost 1 GiB of host memory), pread of a hole copies zeros and allocates nothing
PREAD_FROM = 64 << 10


def clip(pieces: list[tuple[int, int]], start: int, size: int) -> list[tuple[int, int]]:
    """The parts of ``pieces`` (sorted, disjoint ``(address, size)``) in ``[start, start + size)``."""
    end, out = start + size, []
    for at in range(max(bisect.bisect_right(pieces, (start, 1 << 64)) - 1, 0), len(pieces)):
        low, length = pieces[at]
        if low >= end:
            break
        high = min(end, low + length)
        if high > start:
            out.append((max(low, start), high - max(low, start)))
    return out


class GuestRam(ABC):
    """Guest RAM readable in place: guest-physical ``[phys, phys + length)`` is
    ``[offset, offset + length)`` of some host memory; reads never leave those regions."""

    def __init__(self, layout: list[tuple[int, int, int]]) -> None:
        self.regions = layout

    def copy(self, address: int, size: int, fd: int) -> bool:
        """``size`` bytes at ``address`` written to ``fd`` without a pass through Python,
        where this kind of RAM can; False: the caller reads them instead."""
        return False

    def written_map(self) -> list[tuple[int, int]] | None:
        """The guest-physical ``(address, size)`` pieces of all RAM that the guest may
        have written, where this kind of RAM can tell (:meth:`Target.written_ranges`)."""
        return None

    def pieces(self, address: int, size: int) -> list[tuple[int, int]]:
        """The parts of guest-physical ``[address, address + size)`` in these regions."""
        return clip(sorted((phys, length) for phys, _, length in self.regions), address, size)

    def _offset(self, address: int, size: int) -> int | None:
        """Where ``[address, address + size)`` is in the host memory, if in one region."""
        for phys, offset, length in self.regions:
            if phys <= address and address + size <= phys + length:
                return offset + address - phys
        return None

    @abstractmethod
    def _copy(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of the host memory (inside one region)."""

    def read(self, address: int, size: int) -> bytes:
        offset = self._offset(address, size)
        if offset is not None:  # the common case: one slice, one copy
            return self._copy(offset, size)
        out = bytearray()
        while len(out) < size:
            at = address + len(out)
            for phys, offset, length in self.regions:
                if phys <= at < phys + length:
                    take = min(size - len(out), phys + length - at)
                    out += self._copy(offset + at - phys, take)
                    break
            else:
                raise ReadError(f"physical address {at:#x} is outside guest RAM")
        return bytes(out)

    def close(self) -> None:  # noqa: B027 (most kinds hold nothing to let go of)
        """Let go of the host memory."""


class SharedRam(GuestRam):
    """Guest RAM mapped read-only from the file QEMU keeps it in (undebug started QEMU)."""

    def __init__(self, fd: int, layout: list[tuple[int, int, int]]) -> None:
        super().__init__(layout)
        self.map = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        self.fd = os.dup(fd)  # for sendfile: a dump copies without a pass through Python

    def copy(self, address: int, size: int, fd: int) -> bool:
        """By sendfile(2); False when the range is not in one region."""
        start = self._offset(address, size)
        if start is None:
            return False
        done = 0
        while done < size:
            sent = os.sendfile(fd, self.fd, start + done, size - done)
            if sent <= 0:
                raise ReadError(f"guest RAM at {address + done:#x} ends early")
            done += sent
        return True

    def written_map(self) -> list[tuple[int, int]] | None:
        """The file's data, by ``lseek(SEEK_DATA/SEEK_HOLE)`` (shmem answers from its page
        cache and swap, reading nothing): a page the guest never wrote is a hole, and a
        hole reads as zero. Whole regions at a time: each call walks the kernel's page
        index to the next hole or data, however far."""
        pieces = []
        for phys, start, length in self.regions:
            at, end = start, start + length
            while at < end:
                try:
                    data = os.lseek(self.fd, at, os.SEEK_DATA)
                except OSError as exc:
                    if exc.errno == errno.ENXIO:  # no data from here on
                        break
                    return None  # EINVAL: a file system without hole reporting
                if data >= end:
                    break
                hole = min(end, os.lseek(self.fd, data, os.SEEK_HOLE))
                pieces.append((phys + data - start, hole - data))
                at = hole
        return sorted(pieces)

    def _copy(self, offset: int, size: int) -> bytes:
        if size < PREAD_FROM:
            return self.map[offset : offset + size]
        data = os.pread(self.fd, size, offset)  # a hole read so stays a hole (PREAD_FROM)
        while len(data) < size:  # one read(2) stops short of 2 GiB
            more = os.pread(self.fd, size - len(data), offset + len(data))
            if not more:
                break  # past the end of the file: short, as a slice of the map would be
            data += more
        return data

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class ProcessRam(GuestRam):
    """Guest RAM of an adopted QEMU, read in place from its address space with
    ``process_vm_readv`` (the regions' offsets are QEMU's host-virtual addresses, found by
    the supervisor: undebug/session/adopted_ram.py)."""

    def __init__(self, pid: int, layout: list[tuple[int, int, int]]) -> None:
        super().__init__(layout)
        from undebug.vm.process_memory import ProcessMemory  # ctypes: only when adopted

        self.memory = ProcessMemory(pid)

    def written_map(self) -> list[tuple[int, int]] | None:
        """The pages QEMU's page tables hold, where its RAM is private anonymous memory
        (QEMU's default): one never faulted in reads as zero (ProcessMemory.touched)."""
        pieces, known = [], False
        for phys, offset, length in self.regions:
            touched = self.memory.touched(offset, length)
            if touched is None:  # a ROM or a file-backed block: all of it may be written
                pieces.append((phys, length))
                continue
            known = True
            pieces += [(phys + at - offset, n) for at, n in touched]
        return sorted(pieces) if known else None

    def _copy(self, offset: int, size: int) -> bytes:
        try:
            return self.memory.read(offset, size)
        except OSError as exc:
            gone = " (QEMU has exited)" if exc.errno == errno.ESRCH else ""
            raise ReadError(f"cannot read QEMU's memory (pid {self.memory.pid}) at "
                            f"{offset:#x}: {exc.strerror}{gone}") from None
