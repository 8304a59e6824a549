"""Nanos' program as its kernel keeps it, for ``maps`` and ``net``: each process's
mappings (``vmaps``) and fd table (``files``), read through DWARF member names.

Checked against nanovms/nanos master (b9c3671d), src/unix/unix_internal.h: ``struct
process`` has ``vmaps`` (a ``struct rangemap``: an rbtree ``t`` of ``struct vmap``, whose
``node.r`` is its range and ``flags`` its VMAP_FLAG_*) and ``files`` (a vector: a
``struct buffer`` of fdesc pointers from ``contents + start`` to ``end``, fd = index); an
inet socket's fdesc is a ``struct netsock`` (src/net/netsyscall.c) whose ``info.tcp.lw``
(the same word as ``info.udp.lw``) is its lwIP pcb.
"""

from __future__ import annotations

from undebug.os.nanos import KERNEL_IDS, MASK, NanosProvider
from undebug.os.provider import PROGRAM_KIND, MemoryArea, read_struct
from undebug.target import ReadError

__all__ = ["socket_fds", "user_areas"]

FDESC_TYPE_SOCKET, AF_INET, AF_INET6 = 4, 2, 10  # unix_internal.h, net_system_structs.h
MAX_FDS = 65_536
MAX_VMAPS = 100_000
INVALID_ADDRESS = MASK  # Nanos' INVALID_ADDRESS: (void *)-1
VMAP_FLAG_STACK, VMAP_FLAG_HEAP = 0x40, 0x80


def user_areas(provider: NanosProvider) -> list[MemoryArea]:
    """From each process's ``vmaps`` (a rangemap: an rbtree of ``struct vmap``,
    ``node.r`` its range): its main stack and brk heap by their VMAP_FLAG_*, and the
    mapping each of its threads' saved user rsp lies in, as that thread's stack; all
    ``program`` areas, paged in on demand."""
    target = provider.target
    process, rangemap = target.elf.struct("process"), target.elf.struct("rangemap")
    vmap = target.elf.struct("vmap")
    if process is None or rangemap is None or vmap is None or \
            not process.has_member("vmaps") or not vmap.has_member("node.r.start"):
        return []
    ranges: list[tuple[int, int, int]] = []
    for address in provider.processes(target.warnings):
        try:
            vmaps = read_struct(target, process, address).int("vmaps")
            if vmaps in (0, INVALID_ADDRESS):
                continue  # a kernel-only process: no user mappings
            tree = read_struct(target, rangemap, vmaps)
        except ReadError as exc:
            target.warnings.append(f"vmaps of process at {address:#x} unreadable: "
                                   f"{exc.message}")
            continue
        base = vmap.member("node.n").offset
        for node in provider.in_order(tree.int("t.root"), min(tree.int("t.count"), MAX_VMAPS),
                                   "vmaps", target.warnings):
            try:
                value = read_struct(target, vmap, (node - base) & MASK)
            except ReadError:
                continue
            ranges.append((value.int("node.r.start"), value.int("node.r.end"),
                           value.int("flags")))
    areas = []
    for start, end, flags in ranges:
        if flags & VMAP_FLAG_STACK:
            areas.append(MemoryArea(start, end, PROGRAM_KIND, "the program's main stack"))
        elif flags & VMAP_FLAG_HEAP:
            areas.append(MemoryArea(start, end, PROGRAM_KIND, "the program's heap (brk)"))
    for thread in provider.threads().threads:
        sp = thread.registers.get("rsp", 0) if thread.id < KERNEL_IDS else 0
        found = next(((s, e) for s, e, _ in ranges if s <= sp < e), None) if sp else None
        if found is not None:
            areas.append(MemoryArea(found[0], found[1], PROGRAM_KIND,
                                    f"user stack of {thread.name}", thread.id))
    return areas


def socket_fds(provider: NanosProvider) -> dict[int, int]:
    """Each process's ``files`` (a vector: ``struct buffer`` of fdesc pointers, fd =
    index) whose fdesc is an inet socket (``struct netsock``: ``sock.f.type`` is
    FDESC_TYPE_SOCKET, ``sock.domain`` AF_INET/AF_INET6) -> its pcb
    (``info.tcp.lw``, the same word as ``info.udp.lw``)."""
    target = provider.target
    process, buffer = target.elf.struct("process"), target.elf.struct("buffer")
    netsock = target.elf.struct("netsock")
    if process is None or buffer is None or netsock is None or \
            not process.has_member("files") or not netsock.has_member("info.tcp.lw"):
        return {}
    fds: dict[int, int] = {}
    for address in provider.processes(target.warnings):
        try:
            files = read_struct(target, buffer,
                                read_struct(target, process, address).int("files"))
            count = min(MAX_FDS, max(0, files.int("end") - files.int("start")) // 8)
            raw = target.read(files.int("contents") + files.int("start"), count * 8)
        except ReadError as exc:
            target.warnings.append(f"fd table of process at {address:#x} unreadable: "
                                   f"{exc.message}")
            continue
        for fd in range(count):
            fdesc = int.from_bytes(raw[fd * 8 : fd * 8 + 8], "little")
            try:
                sock = read_struct(target, netsock, fdesc) if fdesc else None
            except ReadError:
                continue  # a closed slot's stale pointer
            if sock is not None and sock.int("sock.f.type") == FDESC_TYPE_SOCKET and \
                    sock.int("sock.domain") in (AF_INET, AF_INET6) and \
                    sock.int("info.tcp.lw"):
                fds[sock.int("info.tcp.lw")] = fd
    return fds
