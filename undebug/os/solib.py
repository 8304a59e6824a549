"""A dynamically linked program's libraries, found the way gdb's SVR4 support finds them:
the program's ``PT_DYNAMIC`` holds ``DT_DEBUG``, which the dynamic linker points at its
``struct r_debug``; its ``r_map`` starts the ``struct link_map`` chain (``l_addr``: the
load bias, ``l_name``: the path, ``l_next``). Each library's ELF is then looked for on
the host (the image was built from host files): the same path (under a sysroot, as
gdb's), accepted only when its GNU build-id is the one in guest memory or, where the guest
has not paged that in, its read-only pages are the guest's; its symbols come from its
separate debug file by that build-id (``/usr/lib/debug/.build-id/xx/rest.debug``, as
gdb's ``debug-file-directory``).

The layouts are the SVR4 ABI's, as glibc's <link.h> declares them on x86-64 (no DWARF is
needed: the libraries' own debug info is not the kernel's). Guest memory is hostile: the
chain is cut at a loop or :data:`MAX_LIBRARIES`, names are read bounded and are raw guest
text (escape them), every problem is a warning.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from undebug.elf import ElfFile
from undebug.elf_headers import PT_LOAD, ElfHeaderError, Segment, program_headers
from undebug.errors import UndebugError
from undebug.os.provider import read_c_string
from undebug.target import LinkMapEntry, ReadError, Target
from undebug.text import escape

__all__ = ["MAX_LIBRARIES", "Library", "check_loaded", "find_libraries",
           "link_map", "lowest_load", "r_debug_address"]

MASK = (1 << 64) - 1
PAGE = 4096
PT_DYNAMIC, DT_NULL, DT_DEBUG = 2, 0, 21
MAX_LIBRARIES = 4096  # a real program links a few dozen
MAX_NAME = 4096  # PATH_MAX
MAX_DYNAMIC = 64 << 10  # bytes of a PT_DYNAMIC read (a real one is < 1 KiB)
R_MAP = 8  # struct r_debug { int r_version; struct link_map *r_map; ... }
LINK_MAP = struct.Struct("<5Q")  # l_addr, l_name, l_ld, l_next, l_prev
DEBUG_DIR = Path("usr/lib/debug/.build-id")
PF_X, PF_W = 1, 2
CHECK_PAGES = 8  # pages compared, at most, when the build-id is not paged in
MAX_PAGES_TRIED = 4096  # of an ELF's read-only segments (most of them may not be paged in)


@dataclass(frozen=True)
class Library:
    """A library the program runs, with the host ELF undebug symbolizes it by (None: its
    frames stay ``??``, and ``problem`` says why)."""

    entry: LinkMapEntry
    elf: ElfFile | None
    problem: str | None = None


def r_debug_address(target: Target, elf: ElfFile, bias: int, warnings: list[str]) -> int | None:
    """The ``struct r_debug`` the dynamic linker published in the program's ``DT_DEBUG``
    (read from guest memory at ``bias`` + ``PT_DYNAMIC``'s address); None when the
    program has no PT_DYNAMIC or the linker has not filled it yet (a static-pie)."""
    dynamic = next((s for s in _segments(elf.path) if s.type == PT_DYNAMIC), None)
    if dynamic is None:
        return None
    try:
        raw = target.read((dynamic.vaddr + bias) & MASK, min(dynamic.memsz, MAX_DYNAMIC) & ~15)
    except ReadError as exc:
        warnings.append(f"the dynamic section of {elf.path.name} is unreadable at "
                        f"{(dynamic.vaddr + bias) & MASK:#x}: {exc.message}")
        return None
    for tag, value in struct.iter_unpack("<QQ", raw):
        if tag == DT_NULL:
            break
        if tag == DT_DEBUG:
            return value or None
    return None


def link_map(target: Target, r_debug: int, warnings: list[str], limit: int = MAX_LIBRARIES,
             unpaged: Callable[[int], bytes | None] | None = None) -> list[LinkMapEntry]:
    """The ``link_map`` chain from ``r_debug->r_map`` along ``l_next``: cut with a warning
    at a loop, past ``limit`` entries or at an unreadable entry; a name longer than
    :data:`MAX_NAME` is kept cut, with a warning. A name the guest has not paged in is
    read with ``unpaged(address)`` (the file's bytes there), else left empty, with a
    warning."""
    try:
        address = target.read_int((r_debug + R_MAP) & MASK)
    except ReadError as exc:
        warnings.append(f"r_debug at {r_debug:#x} unreadable: {exc.message}")
        return []
    entries: list[LinkMapEntry] = []
    seen: set[int] = set()
    while address:
        if address in seen:
            warnings.append(f"the link_map chain loops back to {address:#x} after "
                            f"{len(entries)} entries: stopped there")
            break
        if len(entries) >= limit:
            warnings.append(f"the link_map chain is longer than {limit}: stopped there")
            break
        seen.add(address)
        try:
            bias, name_at, dynamic, following, _ = LINK_MAP.unpack(
                target.read(address, LINK_MAP.size))
        except ReadError as exc:
            warnings.append(f"the link_map chain is broken at {address:#x}: {exc.message}")
            break
        name, ended = "", True
        if name_at:
            try:
                name, ended = read_c_string(target, name_at, MAX_NAME)
            except ReadError as exc:
                raw = None if unpaged is None else unpaged(name_at)
                if raw is None:
                    warnings.append(f"link_map at {address:#x}: its name at {name_at:#x} is "
                                    f"unreadable: {exc.message}")
                else:
                    cut = raw[:MAX_NAME].split(b"\0", 1)
                    name, ended = cut[0].decode("utf-8", "backslashreplace"), len(cut) > 1
            if not ended:
                warnings.append(f"link_map at {address:#x}: its name at {name_at:#x} has no "
                                f"end within {MAX_NAME} bytes: cut there")
        entries.append(LinkMapEntry(address, bias, name, dynamic))
        address = following
    return entries


def _segments(path: Path) -> list[Segment]:
    try:
        with path.open("rb") as f:
            return program_headers(f.read(64 << 10))
    except (OSError, ElfHeaderError):
        return []


def check_loaded(target: Target, elf: ElfFile, bias: int, pcs: list[int]) -> str:
    """Why ``elf`` at ``bias`` is not, or may not be, what the guest has ("" when it
    is): its build-id where the guest has that page, else its read-only segments'
    bytes in the pages the guest has of them (first those of ``pcs``; Nanos pages a
    file in on demand, so its header page may never have been touched)."""
    expected, at = elf.build_id, elf.build_id_address
    if expected is not None and at is not None:
        with contextlib.suppress(ReadError):
            found = target.read((at + bias) & MASK, len(expected) // 2).hex()
            return "" if found == expected else \
                f"build-id mismatch: {elf.path} has {expected}, the guest {found}"
    compared = tried = 0
    try:
        f = elf.code_path.open("rb")
    except OSError as exc:
        return f"{elf.code_path} is unreadable: {exc.strerror}"
    with f:
        for segment in _segments(elf.code_path):
            if segment.type != PT_LOAD or segment.flags & PF_W:
                continue  # a writable segment holds relocated data: not the file's bytes
            low, high = (segment.vaddr + bias) & MASK, (segment.vaddr + segment.filesz + bias) & MASK
            mine = [pc & ~(PAGE - 1) for pc in pcs if low <= pc < high]
            for page in [*mine, *range(low & ~(PAGE - 1), high, PAGE)]:
                if compared >= CHECK_PAGES or tried >= MAX_PAGES_TRIED:
                    break
                tried += 1
                first, last = max(page, low), min(page + PAGE, high)
                try:
                    here = target.read(first, last - first)
                except ReadError:
                    continue
                f.seek(segment.offset + first - low)
                if f.read(last - first) != here:
                    return (f"{elf.path} is not what the guest has at {first:#x} (its bytes "
                            "there differ)")
                compared += 1
    if not compared:
        return (f"neither the build-id nor the text of {elf.path} is paged in at "
                f"{bias:#x}: not checked")
    return ""


def _host_elf(name: str, bias: int, target: Target, pcs: list[int],
              sysroot: Path) -> tuple[ElfFile | None, str | None]:
    """The host ELF for library ``name`` at ``bias`` if it is the guest's (by build-id,
    else its text: :func:`check_loaded`), with its debug file (by build-id) for the
    symbols when there is one; else (None, why not)."""
    if not name.startswith("/"):
        return None, "not a file (the vDSO, which the kernel made)"
    host = sysroot / name.lstrip("/")
    if not host.is_file():
        return None, f"{host} does not exist on this host"
    try:
        elf = ElfFile(host)
        build_id = elf.build_id
    except UndebugError as exc:
        return None, f"{host} is unreadable: {exc.message}"
    problem = check_loaded(target, elf, bias, pcs)
    if problem:
        return None, problem
    if build_id is None:
        return elf, None
    debug = sysroot / DEBUG_DIR / build_id[:2] / f"{build_id[2:]}.debug"
    try:
        paired = ElfFile(debug, code=host)
        if debug.is_file() and paired.build_id == build_id:
            return paired, None
    except UndebugError:
        pass  # a broken debug file: the library's own symbols still serve
    return elf, None


def find_libraries(target: Target, elf: ElfFile, bias: int, warnings: list[str],
                   pcs: list[int], sysroot: Path = Path("/")) -> list[Library]:
    """Every library in the program's ``link_map`` chain (after the program's own first
    entry, checked against ``bias``), with its host ELF where one matches; a missing or
    mismatched one is a warning. ``pcs`` (the threads') point at pages the guest surely
    has. The chain goes into ``target.link_maps``."""
    r_debug = r_debug_address(target, elf, bias, warnings)
    if r_debug is None:
        return []
    libraries = []
    # the dynamic linker's own l_name points at the program's PT_INTERP string, in a
    # page the guest may never have touched: read-only file bytes, read from the file
    read_only = [s for s in _segments(elf.path) if s.type == PT_LOAD and not s.flags & PF_W]

    def unpaged(address: int) -> bytes | None:
        for segment in read_only:
            at = (address - bias - segment.vaddr) & MASK
            if at < segment.filesz:
                with contextlib.suppress(OSError), elf.path.open("rb") as f:
                    f.seek(segment.offset + at)
                    return f.read(min(MAX_NAME, segment.filesz - at))
        return None

    chain = link_map(target, r_debug, warnings, unpaged=unpaged)
    target.link_maps += chain
    if chain and chain[0].bias != bias:
        warnings.append(f"the dynamic linker has {elf.path.name} at load bias "
                        f"{chain[0].bias:#x}, not {bias:#x}")
    for entry in chain[1:]:
        if not entry.name:
            continue  # a library without a name (the vDSO's, when it has none)
        host, problem = _host_elf(entry.name, entry.bias, target, pcs, sysroot)
        if host is None and entry.name.startswith("/"):  # the vDSO is no file: no warning
            warnings.append(f"library {escape(entry.name)} at {entry.bias:#x}: {problem}; "
                            "its frames are shown as ??")
        libraries.append(Library(entry, host, problem))
    return libraries


def lowest_load(elf: ElfFile) -> int | None:
    """The lowest ``PT_LOAD`` address of ``elf`` (where its load bias is counted from)."""
    return min((s.vaddr for s in _segments(elf.path) if s.type == PT_LOAD), default=None)
