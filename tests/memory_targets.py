"""Targets over memory a test has in hand, standing in for a guest where the test says so:
a live host process's memory (/proc/PID/mem, of a program the test builds and runs) and
the regions a mirror program wrote out (ImageTarget). One vCPU; no run state."""

from __future__ import annotations

import os
import struct

from undebug.elf import ElfFile
from undebug.target import ReadError, Target


class _OneCpu(Target):
    """What a Target over host memory has in common: one vCPU with ``cpu0``'s registers
    (none unless a subclass sets them), a run token that never moves."""

    def __init__(self, elf: ElfFile) -> None:
        super().__init__(elf)
        self.cpu0: dict[str, int] = {}

    def registers(self, cpu: int) -> dict[str, int]:
        return dict(self.cpu0)

    def cpu_count(self) -> int:
        return 1

    @property
    def run_token(self) -> int:
        return 0


class ProcessTarget(_OneCpu):
    """Reads (and, with ``writable``, writes) process ``pid``'s memory at its virtual
    addresses; a failed or short read is a ReadError, as a guest's would be."""

    def __init__(self, elf: ElfFile, pid: int, writable: bool = False) -> None:
        super().__init__(elf)
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDWR if writable else os.O_RDONLY)

    def read(self, address: int, size: int) -> bytes:
        try:
            data = os.pread(self.fd, size, address)
        except OSError as exc:
            raise ReadError(f"{address:#x}: {exc.strerror}") from None
        if len(data) != size:
            raise ReadError(f"{address:#x}+{size}: short read")
        return data

    def write(self, address: int, data: bytes) -> None:
        os.pwrite(self.fd, data, address)

    def read_physical(self, address: int, size: int) -> bytes:
        raise ReadError("no physical memory in a process")

    def close(self) -> None:
        os.close(self.fd)


class ImageTarget(_OneCpu):
    """Guest memory from the regions a program wrote, one vCPU with given registers."""

    def __init__(self, elf: ElfFile, regions: list[tuple[int, bytearray]],
                 registers: dict[str, int]) -> None:
        super().__init__(elf)
        self.regions, self.cpu0 = regions, registers

    def read(self, address: int, size: int) -> bytes:
        for base, data in self.regions:
            if base <= address and address + size <= base + len(data):
                return bytes(data[address - base : address - base + size])
        raise ReadError(f"{address:#x}+{size} is not in the image")

    def read_physical(self, address: int, size: int) -> bytes:
        return self.read(address, size)

    def close(self) -> None:
        pass

    def write_u64(self, address: int, value: int) -> None:
        for base, data in self.regions:
            if base <= address < base + len(data):
                struct.pack_into("<Q", data, address - base, value)
                return
        raise AssertionError(f"{address:#x} is not in the image")
