"""Unikraft's tracepoint definitions, from the debug ELF's non-ALLOC sections.

Each ``UK_TRACEPOINT(name, fmt, types...)`` puts a "TPde" record into
``.uk_tracepoints_list`` (lib/ukdebug/include/uk/trace.h, ``__UK_TRACE_REG``, 0.17):
``u32 magic, u32 size (of the record), u64 cookie (the record's own address), u8 args_nr,
u8 name_len, u8 format_len, u8 sizes[args_nr], u8 types[args_nr], char name[name_len],
char format[format_len]``, padded to the struct's alignment. Where each record goes is the
compiler's and the linker's choice (gcc on x86_64 aligned them to 32 bytes in the images
and test programs built here, with zero padding between; other targets differ: unikraft
#1897), so records are found where they are, by magic and their own size, not at a fixed
stride (Unikraft's parse.py assumes 32). Samples name their tracepoint by the
cookie. Types only say "integer" or "string"; the signedness of an integer is the format's
(``%d`` signed, ``%u``/``%x`` unsigned; parse.py reads all as unsigned: #1897).
``.uk_trace_keyvals`` holds ``key = value`` strings (``format_version = 1``).

The sample header's layout (``struct uk_tracepoint_header``) comes from the DWARF. The
ELF is untrusted: every length is bounded, a bad record is reported and skipped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tracers.format import RESERVED_FIRST
from tracers.metadata import (
    ARG_CHAR,
    ARG_POINTER,
    ARG_SIGNED,
    ARG_STRING,
    ARG_UNSIGNED,
    KIND_EVENT,
    Tracepoint,
    Tracepoints,
)
from undebug.errors import UsageError

if TYPE_CHECKING:
    from undebug.elf import ElfFile

__all__ = ["BUFFER_SYMBOL", "DEF_MAGIC", "KEYVALS", "SECTION", "HeaderLayout", "UkTracepoint",
           "UkTracepoints", "has_unikraft_tracepoints", "header_layout", "load_unikraft",
           "parse_definitions"]

SECTION = ".uk_tracepoints_list"
KEYVALS = ".uk_trace_keyvals"
BUFFER_SYMBOL = "uk_trace_buffer"
DEF_MAGIC = b"TPde"  # UK_TP_DEF_MAGIC 0x65645054, little-endian
FORMAT_VERSION = 1  # the keyvals' format_version this reader knows
MAX_SECTION = 4 << 20  # ~80,000 records: far more than any image has; bigger is corrupt
MAX_WARNINGS = 10  # about single records; the rest are counted in one line
MAX_ARGS = 7  # UK_FOREACH7: the macros take at most 7 arguments
_FIXED = 19  # magic, size, cookie, args_nr, name_len, format_len
_UK_INT, _UK_STRING = 0, 1  # enum __uk_trace_arg_type
# one printf conversion: flags, width, precision, length, conversion
_CONVERSION = re.compile(r"%[-+ #0']*(?:\*|\d+)?(?:\.(?:\*|\d+))?(?:hh|h|ll|l|j|z|t|L|q)?"
                         r"([diouxXeEfFgGaAcspn%])")
_KINDS = {"d": ARG_SIGNED, "i": ARG_SIGNED, "c": ARG_CHAR, "p": ARG_POINTER}


@dataclass(frozen=True)
class HeaderLayout:
    """``struct uk_tracepoint_header``: offsets of its fields and its size."""

    size: int
    magic: int
    length: int  # the ``size`` member: payload bytes after the header
    time: int  # __nsec, ukplat_monotonic_clock()
    cookie: int
    cookie_size: int


# RELEASE-0.17.0 on a 64-bit target, used only when the DWARF does not describe the struct
DEFAULT_HEADER = HeaderLayout(24, 0, 4, 8, 16, 8)


@dataclass(frozen=True)
class UkTracepoint:
    """One TPde record: how its samples' payload is laid out, and its model view."""

    cookie: int
    offset: int  # in the section
    sizes: tuple[int, ...]
    strings: tuple[bool, ...]  # which arguments are strings (u8 length + bytes)
    tracepoint: Tracepoint

    @property
    def fixed_size(self) -> int | None:
        """The payload size of every sample, or None when a string makes it vary."""
        return None if any(self.strings) else sum(self.sizes)


@dataclass
class UkTracepoints:
    """Every valid definition, by cookie, and the model's :class:`Tracepoints` (ids are
    the definitions' order in the section)."""

    tracepoints: Tracepoints
    by_cookie: dict[int, UkTracepoint]
    header: HeaderLayout
    format_version: int | None = None
    warnings: list[str] = field(default_factory=list)


def _arg_kinds(fmt: str, types: list[int]) -> tuple[int, ...]:
    """The model's argument types: strings from the record, integers' signedness and
    display from the format's conversions (unsigned when the format does not say)."""
    conversions = [c for c in _CONVERSION.findall(fmt) if c != "%"]
    out = []
    for i, kind in enumerate(types):
        if kind == _UK_STRING:
            out.append(ARG_STRING)
            continue
        conv = conversions[i] if len(conversions) == len(types) else "u"
        out.append(_KINDS.get(conv, ARG_UNSIGNED))
    return tuple(out)


def _record(data: bytes, at: int, address: int, ident: int) \
        -> tuple[UkTracepoint | None, int, str | None]:
    """The record at ``at``: (definition or None, its size, why it was refused)."""
    if len(data) - at < _FIXED:
        return None, 0, f"{len(data) - at} bytes, shorter than a record"
    size = int.from_bytes(data[at + 4 : at + 8], "little")
    cookie = int.from_bytes(data[at + 8 : at + 16], "little")
    nargs, name_len, fmt_len = data[at + 16], data[at + 17], data[at + 18]
    need = _FIXED + 2 * nargs + name_len + fmt_len
    if not need <= size <= len(data) - at:
        return None, 0, f"size {size} (its fields need {need}, {len(data) - at} bytes left)"
    if nargs > MAX_ARGS:
        return None, size, f"{nargs} arguments (Unikraft's macros take at most {MAX_ARGS})"
    if cookie != address + at:
        return None, size, (f"its cookie {cookie:#x} is not its own address "
                            f"{address + at:#x}")
    p = at + _FIXED
    sizes = list(data[p : p + nargs])
    types = list(data[p + nargs : p + 2 * nargs])
    p += 2 * nargs
    name, fmt = data[p : p + name_len], data[p + name_len : p + name_len + fmt_len]
    if not name[:-1] or name[-1:] != b"\0" or fmt[-1:] != b"\0":
        return None, size, "its name or format is not a NUL-terminated string"
    for i, (kind, width) in enumerate(zip(types, sizes, strict=True)):
        if kind not in (_UK_INT, _UK_STRING):
            return None, size, f"argument {i + 1} has type {kind} (0 int, 1 string)"
        if kind == _UK_INT and width not in (1, 2, 4, 8):
            return None, size, f"argument {i + 1} is {width} bytes (1, 2, 4 or 8)"
    text = fmt[:-1].decode("utf-8", "backslashreplace")
    tp = Tracepoint(ident, KIND_EVENT, nargs, 2, 0, _arg_kinds(text, types),
                    name[:-1].decode("utf-8", "backslashreplace"), text,
                    tuple(f"arg{i + 1}" for i in range(nargs)), "")  # trace.h's own names
    return UkTracepoint(cookie, at, tuple(sizes), tuple(k == _UK_STRING for k in types),
                        tp), size, None


def parse_definitions(data: bytes, address: int, header: HeaderLayout = DEFAULT_HEADER,
                      source: str = "") -> UkTracepoints:
    """The TPde records of a section's bytes ``data`` linked at ``address``. A record is
    looked for at every 4-byte step after the last one; bytes skipped that are not zero
    padding are reported."""
    warnings: list[str] = []
    by_cookie: dict[int, UkTracepoint] = {}
    at = 0
    quiet = 0  # warnings not given beyond MAX_WARNINGS
    while at < len(data) and len(by_cookie) < RESERVED_FIRST:
        if len(warnings) > MAX_WARNINGS:
            quiet += len(warnings) - MAX_WARNINGS
            del warnings[MAX_WARNINGS:]
        found = data.find(DEF_MAGIC, at)
        while found != -1 and found % 4:
            found = data.find(DEF_MAGIC, found + 1)
        end = len(data) if found == -1 else found
        if data.count(0, at, end) != end - at:
            warnings.append(f"{SECTION}: {end - at} bytes at offset {at} are not a "
                            "tracepoint record, skipped")
        if found == -1:
            break
        uk, size, problem = _record(data, found, address, len(by_cookie))
        if uk is None:
            warnings.append(f"{SECTION}: the record at offset {found} is skipped: {problem}")
        else:
            by_cookie[uk.cookie] = uk
        at = found + max(size, 4)
    quiet += max(len(warnings) - MAX_WARNINGS, 0)
    del warnings[MAX_WARNINGS:]
    if quiet:
        warnings.append(f"{SECTION}: {quiet} more damaged record(s) or region(s) skipped")
    if at < len(data) and len(by_cookie) >= RESERVED_FIRST:
        warnings.append(f"{SECTION}: more than {RESERVED_FIRST} records; the rest ignored")
    tps = Tracepoints(None, len(by_cookie), {u.tracepoint.id: u.tracepoint
                                             for u in by_cookie.values()}, [], source)
    return UkTracepoints(tps, by_cookie, header, None, warnings)


def header_layout(elf: ElfFile, warnings: list[str]) -> HeaderLayout:
    """``struct uk_tracepoint_header`` from the DWARF (0.17's 64-bit layout without it)."""
    layout = elf.struct("uk_tracepoint_header")
    if layout is None:
        if elf.architecture not in ("x86_64", "aarch64"):
            raise UsageError(f"{elf.path} has no DWARF for struct uk_tracepoint_header and "
                             f"is {elf.architecture}: its sample layout is unknown",
                             hint="pass the image's debug ELF (IMAGE.dbg) with --elf")
        warnings.append(f"{elf.path} has no DWARF for struct uk_tracepoint_header: "
                        "assuming Unikraft 0.17's 64-bit layout (24 bytes)")
        return DEFAULT_HEADER
    m = {name: layout.members.get(name) for name in ("magic", "size", "time", "cookie")}
    widths = {"magic": (4,), "size": (4,), "time": (8,), "cookie": (4, 8)}
    for name, member in m.items():
        if member is None or member.size not in widths[name] or \
                member.offset + member.size > layout.size or layout.size > 64:
            raise UsageError(f"struct uk_tracepoint_header in {elf.path} is not Unikraft's "
                             f"(member {name!r} is missing or has an impossible size)",
                             hint="pass the image's own debug ELF")
    assert m["magic"] and m["size"] and m["time"] and m["cookie"]
    return HeaderLayout(layout.size, m["magic"].offset, m["size"].offset, m["time"].offset,
                        m["cookie"].offset, m["cookie"].size)


def _section_bytes(elf: ElfFile, name: str) -> tuple[bytes, int] | None:
    """A section's bytes and address, bounded by the file and :data:`MAX_SECTION`."""
    section = elf.section(name)
    if section is None:
        return None
    if section.size > MAX_SECTION:
        raise UsageError(f"{elf.path}: section {name} is {section.size} bytes (at most "
                         f"{MAX_SECTION}): the ELF is corrupt")
    try:
        with open(elf.path, "rb") as f:
            f.seek(section.file_offset)
            data = f.read(section.size)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {name} of {elf.path}: {exc}") from None
    if len(data) != section.size:
        raise UsageError(f"{elf.path}: section {name} lies outside the file (truncated?)")
    return data, section.address


def _format_version(elf: ElfFile, warnings: list[str]) -> int | None:
    found = _section_bytes(elf, KEYVALS)
    if found is None:
        return None
    version = None
    for entry in found[0].split(b"\0"):
        key, sep, value = entry.decode("utf-8", "replace").partition(" = ")
        if sep and key.strip() == "format_version" and value.strip().isdigit():
            version = int(value.strip())
    if version is not None and version > FORMAT_VERSION:
        warnings.append(f"{KEYVALS} says format_version = {version}; this undebug reads "
                        f"{FORMAT_VERSION}: samples may be misread")
    return version


def has_unikraft_tracepoints(elf: ElfFile) -> bool:
    """True when the ELF was built with Unikraft's tracepoints (and has their buffer)."""
    return elf.symbol(BUFFER_SYMBOL) is not None and elf.section(SECTION) is not None


def load_unikraft(elf: ElfFile) -> UkTracepoints:
    """The definitions of a Unikraft debug ELF (UsageError if it has none)."""
    found = _section_bytes(elf, SECTION)
    if found is None:
        raise UsageError(f"{elf.path} has no {SECTION} section: not a Unikraft image built "
                         "with CONFIG_LIBUKDEBUG_TRACEPOINTS, or not its debug ELF",
                         hint="pass the image's debug ELF (IMAGE.dbg) with --elf")
    warnings: list[str] = []
    header = header_layout(elf, warnings)
    version = _format_version(elf, warnings)
    uk = parse_definitions(found[0], found[1], header, str(elf.path))
    uk.format_version = version
    uk.warnings = warnings + uk.warnings
    return uk
