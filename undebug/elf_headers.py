"""An ELF's program headers and notes, read without pyelftools.

The one reader of program headers: the boot-image check (PVH note, before QEMU runs), the
tracepoint metadata (PT_LOAD: where the guest has the bytes) and the build-id lookup all
need a few fields of them, fast and from untrusted files. 32- and 64-bit, either byte
order; every offset is bounds-checked and a malformed header is an :class:`ElfHeaderError`
saying what is wrong, never a ``struct.error``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["PT_LOAD", "PT_NOTE", "ElfHeaderError", "Note", "Segment", "note_sections", "notes",
           "program_headers"]

PT_LOAD, PT_NOTE = 1, 4
SHT_NOTE = 7
MAX_SECTIONS = 65535
MAX_NOTES = 4096  # per segment: a real ELF has a handful


class ElfHeaderError(ValueError):
    """The ELF header or its program header table is malformed or truncated."""


@dataclass(frozen=True)
class Segment:
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int

    def file_range(self, size: int) -> tuple[int, int]:
        """[start, end) of its bytes in a file of ``size`` bytes (clipped to the file)."""
        start = min(self.offset, size)
        return start, min(size, start + self.filesz)


@dataclass(frozen=True)
class Note:
    name: bytes  # without the NUL padding
    type: int
    desc: bytes
    desc_offset: int  # where ``desc`` starts in the file


def _ident(data: bytes) -> tuple[bool, str]:
    """(is 64-bit, struct byte-order prefix)."""
    if len(data) < 0x34 or data[:4] != b"\x7fELF":
        raise ElfHeaderError("not an ELF file (no ELF magic, or shorter than its header)")
    if data[4] not in (1, 2) or data[5] not in (1, 2):
        raise ElfHeaderError(f"bad ELF class {data[4]} or byte order {data[5]}")
    return data[4] == 2, "<" if data[5] == 1 else ">"


def program_headers(data: bytes) -> list[Segment]:
    """Every program header of the ELF in ``data``, in table order."""
    is64, end = _ident(data)
    if is64:
        if len(data) < 0x40:
            raise ElfHeaderError("ELF64 header truncated")
        phoff, = struct.unpack_from(end + "Q", data, 0x20)
        entsize, count = struct.unpack_from(end + "HH", data, 0x36)
        layout, need = end + "IIQQQQQQ", 56
    else:
        phoff, = struct.unpack_from(end + "I", data, 0x1C)
        entsize, count = struct.unpack_from(end + "HH", data, 0x2A)
        layout, need = end + "IIIIIIII", 32
    if count == 0:
        return []
    if entsize < need:
        raise ElfHeaderError(f"program header entries of {entsize} bytes (at least {need})")
    if phoff + count * entsize > len(data):
        raise ElfHeaderError("program header table lies past the end of the file (truncated?)")
    out = []
    for i in range(count):
        fields = struct.unpack_from(layout, data, phoff + i * entsize)
        if is64:
            p_type, flags, offset, vaddr, paddr, filesz, memsz, align = fields
        else:
            p_type, offset, vaddr, paddr, filesz, memsz, flags, align = fields
        out.append(Segment(p_type, flags, offset, vaddr, paddr, filesz, memsz, align))
    return out


def _notes_in(data: bytes, end: str, pos: int, stop: int) -> list[Note]:
    """The notes in ``data[pos:stop]``; a malformed note ends the list."""
    found: list[Note] = []
    for _ in range(MAX_NOTES):
        if pos + 12 > stop:
            break
        namesz, descsz, ntype = struct.unpack_from(end + "III", data, pos)
        desc_at = pos + 12 + (namesz + 3) // 4 * 4
        following = desc_at + (descsz + 3) // 4 * 4
        if following > stop:
            break
        found.append(Note(data[pos + 12 : pos + 12 + namesz].rstrip(b"\0"), ntype,
                          data[desc_at : desc_at + descsz], desc_at))
        pos = following
    return found


def notes(data: bytes, segments: list[Segment] | None = None) -> list[Note]:
    """The notes of every PT_NOTE segment; a malformed note ends its segment's list."""
    _, end = _ident(data)
    found: list[Note] = []
    for segment in program_headers(data) if segments is None else segments:
        if segment.type == PT_NOTE:
            found += _notes_in(data, end, *segment.file_range(len(data)))
    return found


def note_sections(data: bytes) -> list[Note]:
    """The notes of every SHT_NOTE section, for an ELF whose linker script put its notes
    in a PT_LOAD but gave them no PT_NOTE (Unikraft's ``PHDRS`` has none): a section
    table that is absent, truncated or malformed yields no notes."""
    is64, end = _ident(data)
    if is64:
        if len(data) < 0x40:
            return []
        shoff, = struct.unpack_from(end + "Q", data, 0x28)
        entsize, count = struct.unpack_from(end + "HH", data, 0x3A)
        layout, at, need = end + "QQ", 0x18, 64
    else:
        shoff, = struct.unpack_from(end + "I", data, 0x20)
        entsize, count = struct.unpack_from(end + "HH", data, 0x2E)
        layout, at, need = end + "II", 0x10, 40
    if not shoff or entsize < need or shoff + min(count, MAX_SECTIONS) * entsize > len(data):
        return []
    found: list[Note] = []
    for i in range(min(count, MAX_SECTIONS)):
        base = shoff + i * entsize
        sh_type, = struct.unpack_from(end + "I", data, base + 4)
        if sh_type != SHT_NOTE:
            continue
        offset, size = struct.unpack_from(layout, data, base + at)
        if offset + size <= len(data):
            found += _notes_in(data, end, offset, offset + size)
    return found
