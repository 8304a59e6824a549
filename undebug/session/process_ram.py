"""The RAM of a QEMU undebug did not start (``attach``), read from QEMU's own memory.

An adopted QEMU has no memfd of undebug's; its gdbstub reads 2 KiB a packet. The way
drgn 0.2 reads a live QEMU guest is faster: QEMU's pid from the QMP socket's peer
credentials, each guest-physical RAM range (QMP ``human-monitor-command``: ``info mtree
-f``, the flat view of address space "memory") and its host-virtual address
(``gpa2hva``), then reads of QEMU's address space. Here the supervisor opens
``/proc/PID/mem`` (the kernel checks ptrace access at open) and hands the descriptor to
clients, which ``pread`` it at the host-virtual offsets. Ranges of one RAM block that
the flat view shows in pieces (around the legacy holes below 1 MiB) are read as one, as
the memfd of a QEMU undebug starts is. What QEMU prints is parsed with bounds: at most
MAX_RANGES ranges.
"""

from __future__ import annotations

import os
import re
import socket
import struct
from typing import Any

from undebug.errors import UndebugError

__all__ = ["ProcessRam", "map_process_ram", "peer_pid", "ram_ranges"]

MAX_RANGES = 64
_RANGE = re.compile(r"^\s*([0-9a-f]{1,16})-([0-9a-f]{1,16}) \(prio -?\d+, ram\): \S+")
_HVA = re.compile(r"\bis (0x[0-9a-f]{1,16})\s*$")


class ProcessRam:
    """A descriptor of QEMU's memory and the guest's RAM in it: [gpa, hva, size]."""

    def __init__(self, fd: int, layout: list[tuple[int, int, int]]) -> None:
        self.fd, self.layout = fd, layout

    def close(self) -> None:
        os.close(self.fd)


def peer_pid(path: str) -> int:
    """The pid of the process listening on unix socket ``path``: a second connection
    (queued behind the supervisor's, never used) carries the listener's credentials."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        probe.connect(path)
        pid, _, _ = struct.unpack("3i", probe.getsockopt(socket.SOL_SOCKET,
                                                         socket.SO_PEERCRED, 12))
    if pid <= 0:
        raise UndebugError(f"no peer credentials on {path}")
    return int(pid)


def ram_ranges(mtree: str) -> list[tuple[int, int]]:
    """[start, end] (inclusive) of each RAM range in the flat view of AS "memory"."""
    ranges: list[tuple[int, int]] = []
    inside = False
    for line in mtree.splitlines():
        if line.startswith("FlatView"):
            inside = False
        elif line.startswith(" AS "):
            inside = inside or line.startswith(' AS "memory"')
        elif inside and (match := _RANGE.match(line)):
            ranges.append((int(match.group(1), 16), int(match.group(2), 16)))
            if len(ranges) > MAX_RANGES:
                raise UndebugError(f"more than {MAX_RANGES} RAM ranges in info mtree")
    return ranges


async def _hmp(client: Any, command: str) -> str:
    reply = await client.execute("human-monitor-command", {"command-line": command})
    return reply if isinstance(reply, str) else ""


async def map_process_ram(client: Any, qmp_path: str) -> ProcessRam:
    """QEMU's RAM through ``client`` (a connected ``QMPClient``); UndebugError saying why
    not (no permission to read QEMU's memory, an HMP reply not understood)."""
    pid = peer_pid(qmp_path)
    layout: list[tuple[int, int, int]] = []
    for start, end in ram_ranges(await _hmp(client, "info mtree -f")):
        match = _HVA.search(await _hmp(client, f"gpa2hva {start:#x}"))
        if match is None:
            raise UndebugError(f"gpa2hva {start:#x}: no host address in QEMU's answer")
        hva, size = int(match.group(1), 16), end - start + 1
        if layout and hva - layout[-1][1] == start - layout[-1][0]:
            # one RAM block shown in pieces (the legacy VGA and ROM holes below 1 MiB):
            # read it whole, as undebug's own QEMU's memfd is
            layout[-1] = (layout[-1][0], layout[-1][1], start + size - layout[-1][0])
        else:
            layout.append((start, hva, size))
    if not layout:
        raise UndebugError("info mtree -f shows no RAM in address space \"memory\"")
    try:
        fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise UndebugError(f"cannot read the memory of QEMU (pid {pid}): {exc.strerror}") \
            from None
    return ProcessRam(fd, layout)
