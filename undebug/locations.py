"""Where a user means: ``0x100150``, ``checksum_block`` or ``main.c:87`` to an address."""

from __future__ import annotations

from undebug.elf import ElfFile
from undebug.errors import UsageError

__all__ = ["resolve_location"]


def resolve_location(elf: ElfFile | None, text: str, load_offset: int = 0) -> int:
    """The runtime address of a location (functions: their first instruction); an
    address needs no ELF."""
    if text[:1].isdigit():
        try:
            address = int(text, 0)
        except ValueError:
            raise UsageError(f"bad address {text!r}") from None
        if not 0 <= address < 1 << 64:
            raise UsageError(f"address {text} does not fit in 64 bits")
        return address
    if elf is None:
        raise UsageError(f"{text!r} is not an address, and no ELF is known to look it up in",
                         hint="pass --elf")
    file, sep, line = text.rpartition(":")
    if sep and line.isdigit():
        at_line = elf.line_address(file, int(line))
        if at_line is None:
            hint = None if elf.has_dwarf else "the ELF has no DWARF line table"
            raise UsageError(f"no code at {text} in {elf.path}", hint=hint)
        return at_line + load_offset
    symbol = elf.symbol(text)
    if symbol is None:
        raise UsageError(f"no function or symbol {text!r} in {elf.path}",
                         hint="give a function name, FILE:LINE or an address")
    return symbol.address + load_offset
