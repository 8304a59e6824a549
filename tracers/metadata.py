"""Tracepoint descriptions from the guest ELF's ``undebug_tracepoints`` section.

FORMAT.md section 6: an array of 64-byte records, the tracepoint id is the index; the
name, format, argument names and file are pointers to NUL-terminated strings elsewhere
in the ELF, resolved here through its PT_LOAD program headers. The ELF is untrusted:
every offset and length is bounds-checked, a bad record is skipped with a warning, and
names are used only when the ELF's GNU build-id is the stream's (``for_stream``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from tracers.format import RESERVED_FIRST
from tracers.records import Session
from undebug.elf_headers import PT_LOAD, ElfHeaderError, program_headers
from undebug.errors import UsageError

__all__ = ["ARG_BOOL", "ARG_CHAR", "ARG_POINTER", "ARG_SIGNED", "ARG_STRING", "ARG_UNSIGNED",
           "KIND_EVENT", "KIND_LOG", "KIND_SPAN_BEGIN", "KIND_SPAN_END", "SECTION", "Tracepoint",
           "Tracepoints", "for_stream", "load_tracepoints", "parse_tracepoints"]

SECTION = "undebug_tracepoints"
RECORD_SIZE = 64
TP_MAGIC = 0x4D505455  # "UTPM"
KIND_EVENT, KIND_SPAN_BEGIN, KIND_SPAN_END, KIND_LOG = 1, 2, 3, 4
ARG_UNSIGNED, ARG_SIGNED, ARG_POINTER, ARG_BOOL, ARG_CHAR = 1, 2, 3, 4, 5
# never in the stub's records: a Unikraft string argument, whose word is its ordinal among
# the record's strings (Records.strings holds them NUL-separated; tracers/unikraft/)
ARG_STRING = 6
KIND_NAMES = {KIND_EVENT: "event", KIND_SPAN_BEGIN: "span-begin", KIND_SPAN_END: "span-end",
              KIND_LOG: "log"}
MAX_STRING = 4096
_RECORD = struct.Struct("<IBBBBII QQQQ 16x")


@dataclass(frozen=True)
class Tracepoint:
    """One metadata record. Strings are as the ELF has them (untrusted: escape them)."""

    id: int
    kind: int
    nargs: int
    level: int
    line: int
    arg_types: tuple[int, ...]
    name: str
    fmt: str
    arg_names: tuple[str, ...]
    file: str

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, f"kind {self.kind}")


@dataclass
class Tracepoints:
    """Every valid record by id; ``count`` is the number of records in the section (ids
    below it are plausible on the wire, even those whose record was skipped)."""

    build_id: str | None
    count: int
    by_id: dict[int, Tracepoint]
    warnings: list[str] = field(default_factory=list)
    source: str = ""

    def get(self, ident: int) -> Tracepoint | None:
        return self.by_id.get(ident)

    def ids_named(self, name: str) -> set[int]:
        return {tp.id for tp in self.by_id.values() if tp.name == name}


class _Image:
    """The ELF's loadable bytes: guest virtual address -> file bytes, bounds-checked."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.segments: list[tuple[int, int, int]] = []  # (vaddr, file offset, file size)
        if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise UsageError("not a little-endian ELF64 file")
        try:
            headers = program_headers(data)
        except ElfHeaderError as exc:
            raise UsageError(str(exc)) from None
        self.segments = [(h.vaddr, h.offset, h.filesz) for h in headers
                         if h.type == PT_LOAD and h.offset + h.filesz <= len(data)]

    def string(self, address: int, *, count: int = 1) -> list[str] | None:
        """``count`` NUL-terminated strings back to back at ``address``, or None."""
        for vaddr, offset, size in self.segments:
            if vaddr <= address < vaddr + size:
                start = offset + address - vaddr
                end = min(offset + size, start + MAX_STRING * max(count, 1))
                out: list[str] = []
                at = start
                for _ in range(count):
                    nul = self.data.find(b"\0", at, end)
                    if nul == -1:
                        return None
                    out.append(self.data[at:nul].decode("utf-8", errors="backslashreplace"))
                    at = nul + 1
                return out
        return None


def parse_tracepoints(elf_data: bytes, section_offset: int, section_size: int,
                      build_id: str | None, source: str = "") -> Tracepoints:
    """The records of a section at ``section_offset`` in ``elf_data`` (bounds-checked)."""
    warnings: list[str] = []
    image = _Image(elf_data)
    if section_offset < 0 or section_offset + section_size > len(elf_data):
        raise UsageError(f"section {SECTION} lies outside the file (truncated?)")
    if section_size % RECORD_SIZE:
        warnings.append(f"section {SECTION} is {section_size} bytes, not a multiple of "
                        f"{RECORD_SIZE}: the last {section_size % RECORD_SIZE} ignored")
    count = section_size // RECORD_SIZE
    if count > RESERVED_FIRST:
        warnings.append(f"section {SECTION} has {count} records; ids stop at "
                        f"{RESERVED_FIRST - 1}")
        count = RESERVED_FIRST
    by_id: dict[int, Tracepoint] = {}
    for ident in range(count):
        at = section_offset + ident * RECORD_SIZE
        (magic, kind, nargs, level, version, line, arg_types, name_p, fmt_p, names_p,
         file_p) = _RECORD.unpack_from(elf_data, at)
        problem = None
        if magic != TP_MAGIC:
            problem = "no UTPM magic"
        elif version != 1:
            problem = f"record version {version}"
        elif kind not in KIND_NAMES:
            problem = f"unknown kind {kind}"
        elif nargs > 6:
            problem = f"{nargs} arguments (at most 6)"
        name = image.string(name_p) if problem is None else None
        if problem is None and (name is None or not name[0]):
            problem = f"name pointer {name_p:#x} does not lead to a string in the ELF"
        if problem is not None or name is None:
            if magic != 0 or kind != 0:  # an all-zero record is padding, not worth a word
                warnings.append(f"tracepoint record {ident} skipped: {problem}")
            continue
        fmt = image.string(fmt_p) if fmt_p else [""]
        names = image.string(names_p, count=nargs) if nargs else []
        file = image.string(file_p) if file_p else [""]
        if fmt is None or names is None or file is None:
            warnings.append(f"tracepoint record {ident} ({name[0]}): a string pointer does not "
                            "lead to a string in the ELF")
        by_id[ident] = Tracepoint(
            ident, kind, nargs, level, line,
            tuple((arg_types >> (4 * i)) & 0xF for i in range(nargs)), name[0],
            (fmt or [""])[0], tuple(names or [f"arg{i}" for i in range(nargs)]),
            (file or [""])[0])
    return Tracepoints(build_id, count, by_id, warnings, source)


def load_tracepoints(path: Path) -> Tracepoints:
    """The tracepoints of the ELF at ``path`` (UsageError if it has none or is bad)."""
    from undebug.elf import ElfFile

    elf = ElfFile(path)
    section = elf.section(SECTION)
    if section is None:
        raise UsageError(f"{path} has no {SECTION} section: it was not built with the "
                         "undebug tracing stub", hint="pass the guest's own ELF with --elf")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read ELF {path}: {exc.strerror}") from None
    try:
        return parse_tracepoints(data, section.file_offset, section.size, elf.build_id,
                                 str(path))
    except UsageError as exc:
        raise UsageError(f"ELF {path}: {exc.message}", hint="pass the guest's own ELF") \
            from None


def for_stream(tracepoints: Tracepoints | None, sessions: list[Session]) \
        -> tuple[Tracepoints | None, list[str]]:
    """The tracepoints to name this stream's events with, and warnings: None (ids only)
    when the ELF's build-id is not the one in a stream header."""
    if tracepoints is None:
        return None, []
    ids = {s.header.build_id.hex() for s in sessions if s.header.build_id}
    if not ids:
        return tracepoints, [f"the trace carries no build-id: cannot check that "
                             f"{tracepoints.source or 'the ELF'} is the guest's ELF"]
    if tracepoints.build_id is None or ids != {tracepoints.build_id}:
        have = tracepoints.build_id or "none"
        return None, [f"build-id mismatch: the trace is from build {', '.join(sorted(ids))}, "
                      f"{tracepoints.source or 'the ELF'} has {have}"]
    return tracepoints, []
