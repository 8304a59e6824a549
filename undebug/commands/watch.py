"""``undebug watch``: a watchpoint the supervisor keeps, like ``undebug break``'s
breakpoints (the same table, ids and owners: ``undebug delete`` removes either)."""

from __future__ import annotations

import argparse

from undebug.commands import add_elf_arguments, command, number_at_least
from undebug.commands.control import breakpoint_line
from undebug.errors import UsageError
from undebug.output import Report
from undebug.session.breakpoints import MAX_WATCH, Watch
from undebug.session.client import SupervisorClient
from undebug.session.store import SessionDir

WORD = 8  # bytes watched at a bare address when --len is not given


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="TARGET", help="a guest's name (see undebug ps)")
    p.add_argument("location", metavar="SYMBOL|ADDR", nargs="?",
                   help="a variable (its symbol, the kernel's or a program's or library's, "
                   "MODULE:SYMBOL for one file's: watches its whole size) or an address")
    access = p.add_mutually_exclusive_group()
    access.add_argument("--read", action="store_true", help="stop when the guest reads it")
    access.add_argument("--access", action="store_true",
                        help="stop when the guest reads or writes it")
    p.add_argument("--len", type=number_at_least(1), metavar="N", dest="length",
                   help=f"bytes to watch (default: the symbol's size; {WORD} at an address; "
                   f"at most {MAX_WATCH})")
    p.add_argument("--list", action="store_true", help="list the guest's watchpoints instead")
    add_elf_arguments(p, force=False)


@command("watch", "set a watchpoint the supervisor keeps (or --list them)", _arguments,
         description="Stop the guest when it writes (default), reads (--read) or accesses "
         "(--access) a variable or the bytes at an address, through QEMU's gdbstub. The "
         "watchpoint stays until `undebug delete`, across CLI calls; when it fires the whole "
         "guest stops after the access: see `undebug wait`, then `undebug cont`.")
def watch(args: argparse.Namespace) -> Report:
    if args.list == (args.location is not None) or (args.list and (
            args.read or args.access or args.length is not None)):
        raise UsageError("give a SYMBOL or ADDR to watch, or --list (alone) to list watchpoints")
    session = SessionDir.named(args.target)
    with SupervisorClient(session) as client:
        if args.list:
            wps = [bp for bp in client.status().breakpoints if bp.watch is not None]
            return Report(data={"watchpoints": [wp.to_json() for wp in wps]}, render=lambda: [
                breakpoint_line(wp) for wp in wps] or ["no watchpoints"])
        address, length, warnings = _where(args)
        if not 1 <= length <= MAX_WATCH:
            raise UsageError(f"--len {length}: a watchpoint covers 1 to {MAX_WATCH} bytes")
        kind: Watch = "read" if args.read else "access" if args.access else "write"
        wp = client.insert_breakpoint(address, False, args.location, watch=kind, length=length)
    return Report(data={"watchpoint": wp.to_json()}, warnings=warnings,
                  render=lambda: [breakpoint_line(wp)])


def _where(args: argparse.Namespace) -> tuple[int, int, list[str]]:
    """The address and the length to watch: a symbol's own (the kernel's, a program's or
    a library's: :func:`undebug.os.locate.guest_location`), an address's ``--len``."""
    from undebug.os.locate import guest_location

    found, warnings = guest_location(args.target, args.location, args.elf)
    if found.symbol is None and found.elf is not None:
        raise UsageError(f"{args.location} is a line of code, not a variable",
                         hint="give a global variable's name or an address")
    size = found.symbol.size if found.symbol is not None else WORD
    return found.address, args.length or size or WORD, warnings
