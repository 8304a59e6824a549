"""Where a user means: ``0x100150``, ``checksum_block`` or ``main.c:87`` to an address."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from undebug.elf import ElfFile, Symbol
from undebug.errors import UsageError

__all__ = ["Location", "resolve_in"]

MASK = (1 << 64) - 1


@dataclass(frozen=True)
class Location:
    """A runtime address, and for a symbol or FILE:LINE the ELF it was found in (with the
    offset the guest runs that ELF at) and the symbol (None for FILE:LINE or a number)."""

    address: int
    elf: ElfFile | None = None
    offset: int = 0
    symbol: Symbol | None = None
    also: tuple[str, ...] = ()  # the other ELFs with a symbol of that name (file names)


def _address(text: str) -> int:
    try:
        address = int(text, 0)
    except ValueError:
        raise UsageError(f"bad address {text!r}") from None
    if not 0 <= address < 1 << 64:
        raise UsageError(f"address {text} does not fit in 64 bits")
    return address


def resolve_in(modules: Sequence[tuple[ElfFile, int]], text: str) -> Location:
    """Where ``text`` is in the first of ``modules`` (ELFs with their load offsets: a
    kernel, then its programs and libraries) that has it; ``MODULE:SYMBOL`` (an ELF's
    file name: ``libc.so.6:clock_nanosleep``) in that one; an address needs none."""
    if text[:1].isdigit():
        return Location(_address(text))
    if not modules:
        raise UsageError(f"{text!r} is not an address, and no ELF is known to look it up in",
                         hint="pass --elf")
    module, sep, name = text.partition(":")
    named = [(e, o) for e, o in modules if module in (e.code_path.name, e.path.name)]
    if sep and named and name and not name[:1].isdigit() and ":" not in name:
        modules, text = named, name
    file, sep, line = text.rpartition(":")
    searched = ", ".join(str(elf.code_path) for elf, _ in modules)
    if sep and line.isdigit():
        for elf, offset in modules:
            at_line = elf.line_address(file, int(line))
            if at_line is not None:
                return Location((at_line + offset) & MASK, elf, offset)
        hint = None if any(elf.has_dwarf for elf, _ in modules) else \
            "the ELF has no DWARF line table"
        raise UsageError(f"no code at {text} in {searched}", hint=hint)
    for i, (elf, offset) in enumerate(modules):
        symbol = elf.symbol(text)
        if symbol is not None:
            also = tuple(e.code_path.name for e, _ in modules[i + 1:] if e.symbol(text))
            return Location((symbol.address + offset) & MASK, elf, offset, symbol, also)
    raise UsageError(f"no symbol {text!r} (function or variable) in {searched}",
                     hint="give a function name, FILE:LINE or an address")

