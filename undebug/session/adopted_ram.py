"""Where an adopted QEMU keeps the guest's RAM in its own address space, found once at
attach, so that clients read it in place with ``process_vm_readv`` (drgn 0.2's way).

QEMU's pid is the QMP unix socket's peer (``SO_PEERCRED``; a TCP QMP has none). The
RAM's guest-physical ranges come from HMP ``info mtree -f`` (the flat view of the
system address space as machine_map.py parses it, ``ram`` and ``rom`` ranges only), their host-virtual address
from HMP ``gpa2hva`` at both ends of each range (one range is one RAM block's
contiguous mapping, so the two ends prove the whole), both through QMP's
``human-monitor-command``. HMP is text for humans: it is parsed defensively (bounded
counts and sizes, unknown lines skipped, a range whose ends disagree dropped), and the
layout that results is all a client may read: never outside it.

The supervisor only locates and checks (one probe read proves ptrace access); clients
(undebug/target.py) read themselves, as they map a shared RAM file: one read path per
kind of RAM, and no guest byte crosses the control socket.
"""

from __future__ import annotations

import errno
import re
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from undebug.session.machine_map import parse_flat_view
from undebug.vm.process_memory import ProcessMemory, ptrace_hint, start_time
from undebug.vm.qemu import RamRegion

__all__ = ["AdoptedRam", "RamUnavailable", "flat_ram_ranges", "locate", "peer_pid"]

MAX_RANGES = 64  # RAM ranges kept from a flat view (a PC has a handful)
MAX_ADDRESS = 1 << 52  # guest-physical and host-virtual addresses above are nonsense
_GPA2HVA = re.compile(r"^Host virtual address for 0x([0-9a-f]{1,16}) \((.{1,200})\) is "
                      r"0x([0-9a-f]{1,16})$")


class RamUnavailable(Exception):
    """Why an adopted QEMU's RAM cannot be read in place (a sentence for a warning)."""


@dataclass(frozen=True)
class AdoptedRam:
    """QEMU ``pid`` (started at ``start_time``) holds guest-physical ``region.physical``
    at its host-virtual address ``region.offset``."""

    pid: int
    start_time: int
    layout: tuple[RamRegion, ...]

    def reply(self) -> dict[str, Any]:
        """The ``process_ram`` reply (docs/protocol.md)."""
        return {"pid": self.pid, "start_time": self.start_time,
                "layout": [[r.physical, r.offset, r.size] for r in self.layout]}


def peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process at the other end of a unix socket (None: not visible, e.g.
    QEMU in another pid namespace)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid = struct.unpack("3i", creds)[0]
    return pid if pid > 0 else None


def flat_ram_ranges(mtree: str) -> list[tuple[int, int, str]]:
    """(guest-physical start, size, region name) of the RAM and ROM ranges of the system
    address space's flat view (HMP ``info mtree -f``, parsed by machine_map.py), in
    address order: at most MAX_RANGES, none overlapping another, none beyond MAX_ADDRESS."""
    ranges: list[tuple[int, int, str]] = []
    for r in parse_flat_view(mtree):
        if r.kind in ("ram", "rom") and r.end <= MAX_ADDRESS \
                and (not ranges or r.start >= sum(ranges[-1][:2])):
            ranges.append((r.start, r.end - r.start, r.name))
            if len(ranges) == MAX_RANGES:
                break
    return ranges


def _host_address(text: str, physical: int, name: str) -> int | None:
    """The host-virtual address in a ``gpa2hva`` answer, if it answers for ``physical`` in
    region ``name``."""
    m = _GPA2HVA.match(text.strip())
    if m is None or int(m.group(1), 16) != physical or m.group(2) != name:
        return None
    address = int(m.group(3), 16)
    return address if address < MAX_ADDRESS else None


async def locate(hmp: Callable[[str], Awaitable[str]], pid: int | None) -> AdoptedRam:
    """The RAM layout of QEMU ``pid`` in its own address space, checked readable by a
    probe; RamUnavailable says why not and what to do."""
    if pid is None:
        raise RamUnavailable("QEMU's pid is not visible through its QMP socket (another pid "
                             "namespace?)")
    regions: list[RamRegion] = []
    for physical, size, name in flat_ram_ranges(await hmp("info mtree -f")):
        first = _host_address(await hmp(f"gpa2hva {physical:#x}"), physical, name)
        last = _host_address(await hmp(f"gpa2hva {physical + size - 1:#x}"),
                             physical + size - 1, name)
        if first is None or last != first + size - 1:
            continue  # not one contiguous mapping (or HMP said something else): not ours
        if regions and regions[-1].physical + regions[-1].size == physical \
                and regions[-1].offset + regions[-1].size == first:
            previous = regions.pop()
            regions.append(RamRegion(previous.physical, previous.offset, previous.size + size))
        else:
            regions.append(RamRegion(physical, first, size))
    if not regions:
        raise RamUnavailable("QEMU's monitor showed no guest RAM (info mtree -f / gpa2hva)")
    try:
        ProcessMemory(pid).read(regions[0].offset, 1)
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise RamUnavailable(f"reading QEMU's memory (pid {pid}) is not permitted: "
                                 f"{ptrace_hint()}") from None
        raise RamUnavailable(f"cannot read QEMU's memory (pid {pid}): {exc.strerror}") from None
    started = start_time(pid)
    if started is None:
        raise RamUnavailable(f"QEMU (pid {pid}) has no /proc/{pid}/stat")
    return AdoptedRam(pid, started, tuple(regions))
