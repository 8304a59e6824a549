"""Where a user means: ``0x100150``, ``checksum_block`` or ``main.c:87`` to an address."""

from __future__ import annotations

from undebug.elf import ElfFile
from undebug.errors import UsageError

__all__ = ["resolve_location"]


def resolve_location(elf: ElfFile, text: str, load_offset: int = 0) -> int:
    """The runtime address of a location (functions: their first instruction)."""
    if text[:1].isdigit():
        try:
            return int(text, 0)
        except ValueError:
            raise UsageError(f"bad address {text!r}") from None
    file, sep, line = text.rpartition(":")
    if sep and line.isdigit():
        address = elf.line_address(file, int(line))
        if address is None:
            hint = None if elf.has_dwarf else "the ELF has no DWARF line table"
            raise UsageError(f"no code at {text} in {elf.path}", hint=hint)
        return address + load_offset
    symbol = elf.symbol(text)
    if symbol is None:
        raise UsageError(f"no function or symbol {text!r} in {elf.path}",
                         hint="give a function name, FILE:LINE or an address")
    return symbol.address + load_offset
