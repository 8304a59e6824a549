"""The ELF core format undebug writes and reads: headers, notes, ``elf_prstatus``.

One module for both directions so the writer (:mod:`undebug.dump.core`) and the reader
(:mod:`undebug.coretarget`) cannot disagree on a byte. The layout is Linux's x86-64 core
(``struct elf_prstatus``, 336 bytes, ``pr_reg`` in ``user_regs_struct`` order), which gdb,
drgn and every ELF tool read; undebug's own per-vCPU state goes in notes of owner
``UNDEBUG`` so that the ``CORE`` notes list exactly the guest's threads.

The reader's input is untrusted (a truncated copy, a tampered file): every count and offset
is checked against the file's size before it is used.
"""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PRSTATUS_SIZE",
    "PR_REGS",
    "CoreFormatError",
    "CoreNote",
    "CoreSegment",
    "ParsedCore",
    "decode_prstatus",
    "encode_note",
    "encode_prstatus",
    "parse_core",
]

ELF_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr, 64 bytes
PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr, 56 bytes
NOTE_HEADER = struct.Struct("<III")
ET_CORE, EM_X86_64, EV_CURRENT = 4, 62, 1
PT_LOAD, PT_NOTE = 1, 4
PF_X, PF_W, PF_R = 1, 2, 4
NT_PRSTATUS = 1
NT_AUXV = 6  # drgn wants one in any user-space-style core; undebug's holds AT_NULL only
OWNER_CORE = b"CORE"
OWNER_UNDEBUG = b"UNDEBUG"
# BFD reads a note of an owner it does not know by its type alone (type 1 as NT_PRSTATUS,
# 2 as NT_FPREGSET): undebug's types are far from every core note type.
NT_UNDEBUG_VCPU = 0x55444201  # JSON: {"cpu": N, "registers": {gdb name: value}}
NT_UNDEBUG_INFO = 0x55444202  # JSON: {"format": 1, "build_id": ..., "sparse": ...}
FORMAT = 1
MAX_PHNUM = 0xFFFF - 1  # PN_XNUM (0xffff) would move the count to a section header
MAX_NOTES_SIZE = 64 << 20  # no real guest needs more; a larger PT_NOTE is a tampered core
MAX_NOTE_JSON = 1 << 20

# user_regs_struct (Linux, arch/x86/include/asm/user_64.h), gdb's register names
PR_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
           "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
           "gs_base", "ds", "es", "fs", "gs")
# si_signo si_code si_errno, pr_cursig (+2 pad), pr_sigpend, pr_sighold, pr_pid pr_ppid
# pr_pgrp pr_sid, 4 timevals (8 q), pr_reg[27], pr_fpvalid (+4 pad)
PRSTATUS = struct.Struct("<iiih2xQQiiii8Q27Qi4x")
PRSTATUS_SIZE = PRSTATUS.size
assert PRSTATUS_SIZE == 336


class CoreFormatError(Exception):
    """The file is not a core undebug can read (or is damaged): the message says how."""


@dataclass(frozen=True)
class CoreSegment:
    """One PT_LOAD: ``memsz`` bytes at guest-virtual ``vaddr`` (physical ``paddr``), the
    first ``filesz`` of them at ``offset`` in the file, the rest zero."""

    vaddr: int
    paddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int


@dataclass(frozen=True)
class CoreNote:
    owner: bytes
    type: int
    desc: bytes

    def json(self) -> dict[str, Any] | None:
        """The payload of an ``UNDEBUG`` note, or None when it is not a JSON object."""
        if len(self.desc) > MAX_NOTE_JSON:
            return None
        try:
            value = json.loads(self.desc.rstrip(b"\0"))
        except (ValueError, UnicodeDecodeError):
            return None
        return value if isinstance(value, dict) else None


@dataclass(frozen=True)
class ParsedCore:
    segments: list[CoreSegment]
    notes: list[CoreNote]
    warnings: list[str]


def _align4(n: int) -> int:
    return (n + 3) & ~3


def encode_note(owner: bytes, kind: int, desc: bytes) -> bytes:
    name = owner + b"\0"
    return (NOTE_HEADER.pack(len(name), len(desc), kind) + name.ljust(_align4(len(name)), b"\0")
            + desc.ljust(_align4(len(desc)), b"\0"))


def encode_prstatus(thread_id: int, registers: dict[str, int], signal: int = 0) -> bytes:
    """A 336-byte ``elf_prstatus`` for one guest thread: ``pr_pid`` is its id (gdb's LWP),
    registers it lacks (a sleeping thread saved only some) are 0."""
    regs = [registers.get(name, 0) & 0xFFFF_FFFF_FFFF_FFFF for name in PR_REGS]
    pid = thread_id if 0 < thread_id < 1 << 31 else 0
    return PRSTATUS.pack(signal, 0, 0, signal, 0, 0, pid, 0, pid, pid, *([0] * 8), *regs, 0)


def decode_prstatus(desc: bytes) -> tuple[int, dict[str, int]]:
    """(pr_pid, registers) of an ``elf_prstatus`` (CoreFormatError when it is short)."""
    if len(desc) < PRSTATUS_SIZE:
        raise CoreFormatError(f"NT_PRSTATUS of {len(desc)} bytes, not {PRSTATUS_SIZE}")
    fields = PRSTATUS.unpack_from(desc)
    return fields[6], dict(zip(PR_REGS, fields[18:45], strict=True))


def _notes(data: bytes, warnings: list[str]) -> list[CoreNote]:
    notes, at = [], 0
    while at + NOTE_HEADER.size <= len(data):
        namesz, descsz, kind = NOTE_HEADER.unpack_from(data, at)
        name_at = at + NOTE_HEADER.size
        desc_at = name_at + _align4(namesz)
        end = desc_at + _align4(descsz)
        if end > len(data):
            warnings.append(f"note at +{at:#x} runs past its PT_NOTE: the rest is ignored")
            break
        notes.append(CoreNote(bytes(data[name_at : name_at + namesz]).rstrip(b"\0"), kind,
                              bytes(data[desc_at : desc_at + descsz])))
        at = end
    return notes


def parse_core(data: bytes | mmap.mmap, file_size: int) -> ParsedCore:
    """Segments and notes of an x86-64 ELF core held in ``data`` (a map of the file)."""
    if len(data) < ELF_HEADER.size:
        raise CoreFormatError(f"{len(data)} bytes: too short for an ELF header")
    (ident, e_type, machine, _v, _entry, phoff, _shoff, _flags, _ehsize, phentsize, phnum,
     _shentsize, _shnum, _shstrndx) = ELF_HEADER.unpack_from(data)
    if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
        raise CoreFormatError("not a 64-bit little-endian ELF file")
    if e_type != ET_CORE or machine != EM_X86_64:
        raise CoreFormatError(f"not an x86-64 ELF core (type {e_type}, machine {machine})")
    if phentsize != PHDR.size or phoff + phnum * PHDR.size > len(data):
        raise CoreFormatError("program headers missing or truncated")
    warnings: list[str] = []
    segments: list[CoreSegment] = []
    notes: list[CoreNote] = []
    cut: list[int] = []
    for index in range(phnum):
        p_type, flags, offset, vaddr, paddr, filesz, memsz, _align = \
            PHDR.unpack_from(data, phoff + index * PHDR.size)
        if p_type == PT_NOTE:
            if filesz > MAX_NOTES_SIZE or offset + filesz > len(data):
                warnings.append(f"PT_NOTE {index} lies outside the file (truncated?)")
                continue
            notes += _notes(bytes(data[offset : offset + filesz]), warnings)
        elif p_type == PT_LOAD:
            if filesz > memsz or vaddr + memsz > 1 << 64:
                warnings.append(f"PT_LOAD {index} is malformed (filesz {filesz:#x}, memsz "
                                f"{memsz:#x} at {vaddr:#x}): ignored")
                continue
            if offset + filesz > file_size:  # a truncated copy: keep what is there
                cut.append(vaddr)
                filesz = memsz = max(0, file_size - offset) & ~0xFFF
                if not filesz:
                    continue
            segments.append(CoreSegment(vaddr, paddr, offset, filesz, memsz, flags))
    if cut:
        warnings.append(f"truncated core: {len(cut)} memory segments from {cut[0]:#x} on "
                        "end past the end of the file; their memory is missing")
    return ParsedCore(segments, notes, warnings)
