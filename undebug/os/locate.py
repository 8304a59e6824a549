"""Where a symbol the user types is in a running guest: one look-up for every command
that takes one (break, watch, mem, sym, the Python API), so a program's function is
found as surely as the kernel's."""

from __future__ import annotations

from pathlib import Path

from undebug.errors import UsageError
from undebug.locations import Location, resolve_in
from undebug.target import Target, guest_elf, open_target

__all__ = ["guest_location", "locate"]


def locate(target: Target, text: str) -> Location:
    """The runtime address of an address, symbol or FILE:LINE: the kernel's at its load
    offset (a KASLR slide) first, else its programs' and their libraries' at the load
    biases the OS awareness finds in the guest (a PIE's, a library's ``l_addr``). The
    error names every ELF searched."""
    if text[:1].isdigit() or not target.programs:
        return resolve_in(target.modules, text)
    try:
        return resolve_in([(target.elf, target.load_offset)], text)
    except UsageError:
        from undebug.os import provider_for

        provider_for(target)  # places the PIEs, finds the libraries
        return resolve_in(target.modules, text)


def guest_location(name: str, location: str, elf_path: Path | None = None) -> Location:
    """Where a breakpoint or watchpoint LOCATION is in guest ``name``: an address as
    given (the guest untouched); else :func:`locate`'s, the guest paused to look."""
    if location[:1].isdigit():
        return resolve_in([], location)
    guest_elf(name, elf_path)  # no ELF: said before the guest is stopped
    with open_target(name, elf_path, force=True) as target:
        return locate(target, location)
