"""Another process's memory read in place with ``process_vm_readv(2)`` (as drgn 0.2 reads
an adopted QEMU's guest RAM): one copy, kernel to us, no ptrace stop and no file.

Python's ``os`` has no ``process_vm_readv``, so libc's is called through ctypes. The
result is a bytes object filled in place (``PyBytes_FromStringAndSize(NULL, n)``, the
C API's way to build one before anyone sees it): no zeroed buffer, no second copy.
The kernel allows it where ``ptrace`` would attach (same user and, under Yama, an
ancestor or ``ptrace_scope`` 0, or ``CAP_SYS_PTRACE``): :func:`ptrace_hint` says which.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path
from typing import Any

__all__ = ["CHUNK", "ProcessMemory", "ptrace_hint", "start_time"]

CHUNK = 64 << 20  # bytes per system call: a bounded iovec, whatever a caller asks for
YAMA = Path("/proc/sys/kernel/yama/ptrace_scope")
PAGE = 4096
PAGEMAP_ENTRY = 8
PAGEMAP_SPAN = 1 << 30  # address space whose pagemap is read at once (2 MiB of entries)
MAX_MAPS = 16 << 20  # bytes of /proc/PID/maps read (QEMU has a few hundred lines)
# /proc/PID/pagemap entry bits 63 (present) and 62 (swapped), in the entry's top byte:
# 1 for a page with contents, 0 for one never faulted in (or dropped: reads as zero)
_HELD = bytes(1 if b & 0xC0 else 0 for b in range(256))


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _functions() -> tuple[Any, Any, Any]:
    libc = ctypes.CDLL(None, use_errno=True)
    readv = libc.process_vm_readv
    readv.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong,
                      ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.c_ulong]
    readv.restype = ctypes.c_ssize_t
    new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
    new_bytes.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
    new_bytes.restype = ctypes.py_object
    as_string = ctypes.pythonapi.PyBytes_AsString
    as_string.argtypes = [ctypes.py_object]
    as_string.restype = ctypes.c_void_p
    return readv, new_bytes, as_string


class ProcessMemory:
    """Reads of process ``pid``'s virtual memory. Raises OSError with the kernel's errno:
    EPERM (not permitted), ESRCH (the process has gone), EFAULT (not mapped there)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._readv, self._new_bytes, self._as_string = _functions()

    def read(self, address: int, size: int) -> bytes:
        """``size`` bytes at ``address``; a short read (a hole in the mapping) continues
        from where it stopped, and raises EFAULT only where nothing more can be read."""
        out = self._new_bytes(None, size)
        base = self._as_string(out)
        done = 0
        while done < size:
            take = min(CHUNK, size - done)
            local, remote = _Iovec(base + done, take), _Iovec(address + done, take)
            got = self._readv(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
            if got < 0:
                code = ctypes.get_errno()
                raise OSError(code, f"process_vm_readv of pid {self.pid} at "
                                    f"{address + done:#x}: {os.strerror(code)}")
            if got == 0:
                raise OSError(errno.EFAULT, f"process_vm_readv of pid {self.pid} read nothing "
                                            f"at {address + done:#x}")
            done += got
        data: bytes = out  # filled in place before anyone else holds it (see above)
        return data

    def touched(self, address: int, size: int) -> list[tuple[int, int]] | None:
        """The ``(address, size)`` pieces of ``[address, address + size)`` that hold a page
        (present or swapped, by ``/proc/PID/pagemap``: flags only, which an unprivileged
        reader gets too), where all of it is private anonymous memory: there a page never
        faulted in reads as zero. None where it is not (a file or shared mapping holds
        bytes no page table of this process shows) or when the kernel says no."""
        if address % PAGE or size % PAGE or not self._anonymous(address, size):
            return None
        pieces: list[tuple[int, int]] = []
        try:
            with open(f"/proc/{self.pid}/pagemap", "rb", buffering=0) as f:
                for start in range(address, address + size, PAGEMAP_SPAN):
                    span = min(PAGEMAP_SPAN, address + size - start)
                    entries = os.pread(f.fileno(), span // PAGE * PAGEMAP_ENTRY,
                                       start // PAGE * PAGEMAP_ENTRY)
                    if len(entries) != span // PAGE * PAGEMAP_ENTRY:
                        return None
                    _held_pieces(entries, start, pieces)
        except OSError:
            return None
        return pieces

    def _anonymous(self, address: int, size: int) -> bool:
        """Whether ``/proc/PID/maps`` has ``[address, address + size)`` all in private
        mappings of no file (inode 0), as the mappings are now."""
        try:
            with open(f"/proc/{self.pid}/maps", "rb") as f:
                text = f.read(MAX_MAPS)
        except OSError:
            return False
        maps = []
        for line in text.splitlines():
            fields = line.split(None, 5)
            try:
                low, high = (int(x, 16) for x in fields[0].split(b"-"))
                anonymous = fields[1][3:4] == b"p" and int(fields[4]) == 0
            except (IndexError, ValueError):
                continue
            maps.append((low, high, anonymous))
        at, end = address, address + size
        for low, high, anonymous in maps:  # in address order, as the kernel lists them
            if low <= at < high:
                if not anonymous:
                    return False
                at = high
                if at >= end:
                    return True
        return False


def _held_pieces(entries: bytes, address: int, pieces: list[tuple[int, int]]) -> None:
    """Append the pieces of held pages that ``entries`` (pagemap from ``address``) name,
    growing the last piece when it ends where the first of these begins."""
    held = entries[PAGEMAP_ENTRY - 1 :: PAGEMAP_ENTRY].translate(_HELD)
    at = held.find(1)
    while at >= 0:
        end = held.find(0, at)
        end = len(held) if end < 0 else end
        start, size = address + at * PAGE, (end - at) * PAGE
        if pieces and pieces[-1][0] + pieces[-1][1] == start:
            start, size = pieces[-1][0], pieces.pop()[1] + size
        pieces.append((start, size))
        at = held.find(1, end)


def start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, /proc/PID/stat field 22): with
    the pid, it names one process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        return int(stat.rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def ptrace_hint() -> str:
    """How to let this user read another of its processes' memory, for a warning."""
    try:
        scope = int(YAMA.read_text().strip())
    except (OSError, ValueError):
        scope = None
    if scope is None or scope == 0:
        return "run undebug as QEMU's user, or with CAP_SYS_PTRACE (e.g. as root)"
    if scope == 1:
        return ("Yama's ptrace_scope is 1 (only a process's ancestors may read it): "
                "`sysctl kernel.yama.ptrace_scope=0`, or run undebug with CAP_SYS_PTRACE, "
                "or start the guest with undebug run")
    return (f"Yama's ptrace_scope is {scope} (admin only or none): give undebug "
            "CAP_SYS_PTRACE, or start the guest with undebug run")
