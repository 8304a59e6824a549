"""Guest RAM shared with undebug: a memfd QEMU maps as the guest's memory, and bulk
physical reads through QMP ``pmemsave``.

A memfd has no name in any file system, so neither the RAM nor a ``pmemsave`` copy can
be left behind, whoever is killed when. Clients get a read-only descriptor and map it
(undebug/target.py), translating addresses through the guest's page tables themselves.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from undebug.session.protocol import ErrorCode
from undebug.session.runcontrol import RequestError
from undebug.vm.qemu import ram_layout

__all__ = ["guest_ram", "memory_fd_reply", "pmemsave", "read_only"]

log = logging.getLogger("undebug.supervisor")


def guest_ram(size: int) -> int | None:
    """A memfd of ``size`` bytes for QEMU's guest RAM (read-write, to pass to QEMU), or
    None where there is none (reads then go through the gdbstub)."""
    try:
        fd = os.memfd_create("undebug-guest-ram", os.MFD_CLOEXEC)
    except OSError as exc:
        log.warning("no shared RAM (memfd: %s): reads go through the gdbstub", exc)
        return None
    os.ftruncate(fd, size)
    return fd


def read_only(fd: int) -> int:
    """A read-only descriptor of the same memfd, for clients."""
    return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)


def memory_fd_reply(fd: int, memory_mb: int, machine: str = "pc") \
        -> tuple[dict[str, Any], list[int]]:
    """The ``memory_fd`` reply: the size and the guest-physical layout of the RAM, with
    its descriptor attached."""
    layout = ram_layout(memory_mb, machine)
    return {"size": os.fstat(fd).st_size,
            "layout": [[r.physical, r.offset, r.size] for r in layout]}, [fd]


async def pmemsave(qmp: Any, address: int, size: int) -> bytes:
    """Guest-physical ``[address, address + size)`` through QMP: QEMU writes the range at
    memory speed (the gdbstub would take a packet per 2 KiB) into a memfd of ours that it
    opens by its /proc path."""
    fd = os.memfd_create("undebug-pmemsave", os.MFD_CLOEXEC)
    try:
        await qmp.execute("pmemsave", {"val": address, "size": size,
                                       "filename": f"/proc/{os.getpid()}/fd/{fd}"})
        return os.pread(fd, size, 0)
    except Exception as exc:
        raise RequestError(ErrorCode.STUB, f"pmemsave of {size} bytes at {address:#x} "
                           f"failed: {exc}") from None
    finally:
        os.close(fd)
