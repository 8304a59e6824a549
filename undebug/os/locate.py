"""Where a symbol the user types is in a running guest: one look-up for every command
that takes one (break, watch, mem, sym, the Python API), so a program's function is
found as surely as the kernel's."""

from __future__ import annotations

from pathlib import Path

from undebug.locations import Location, resolve_in
from undebug.target import Target, guest_elf, open_target

__all__ = ["ambiguity", "guest_location", "locate"]


def locate(target: Target, text: str) -> Location:
    """The runtime address of an address, symbol or FILE:LINE: the kernel's at its load
    offset (a KASLR slide) first, else its programs' and their libraries' at the load
    biases the OS awareness finds in the guest (a PIE's, a library's ``l_addr``);
    ``MODULE:SYMBOL`` in that ELF. The error names every ELF searched."""
    if not text[:1].isdigit() and target.programs:
        from undebug.os import provider_for

        provider_for(target)  # places the PIEs, finds the libraries
    return resolve_in(target.modules, text)


def ambiguity(found: Location) -> list[str]:
    """The warning for a name more than one ELF has (the kernel and libc both have
    ``clock_nanosleep`` on Nanos): which was taken, how to name another."""
    if not found.also or found.elf is None or found.symbol is None:
        return []
    name = found.symbol.name
    return [f"{name} is in {found.elf.code_path.name} (taken) and in "
            f"{', '.join(found.also)}: give {found.also[0]}:{name} for that one"]


def guest_location(name: str, location: str,
                   elf_path: Path | None = None) -> tuple[Location, list[str]]:
    """Where a breakpoint or watchpoint LOCATION is in guest ``name``: an address as
    given (the guest untouched); else :func:`locate`'s, the guest paused to look. With
    what is uncertain about it (a PIE's bias not found, a name in two ELFs)."""
    if location[:1].isdigit():
        return resolve_in([], location), []
    guest_elf(name, elf_path)  # no ELF: said before the guest is stopped
    with open_target(name, elf_path, force=True) as target:
        found = locate(target, location)
        return found, [*target.warnings, *ambiguity(found)]
