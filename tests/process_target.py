"""A live host process's memory as a Target, through /proc/PID/mem: real memory of a
program a test builds and runs, standing in for a guest where the test says so."""

from __future__ import annotations

import os

from undebug.elf import ElfFile
from undebug.target import ReadError, Target


class ProcessTarget(Target):
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

    def registers(self, cpu: int) -> dict[str, int]:
        return {}

    def cpu_count(self) -> int:
        return 1

    @property
    def run_token(self) -> int:
        return 0

    def close(self) -> None:
        os.close(self.fd)
