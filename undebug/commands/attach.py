"""``undebug attach``: adopt a QEMU that is already running, through its gdbstub (and QMP)."""

from __future__ import annotations

import argparse
from pathlib import Path

from undebug.commands import command, session_name
from undebug.commands.preflight import arm_adopted_guest
from undebug.errors import UsageError
from undebug.output import Report
from undebug.session.store import SessionDir
from undebug.text import escape


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", required=True, type=session_name, help="the name to give the guest")
    p.add_argument("--gdb", required=True, metavar="HOST:PORT",
                   help="QEMU's gdbstub (its -gdb tcp::PORT), or a unix socket path")
    p.add_argument("--qmp", metavar="PATH", help="QEMU's QMP unix socket, for events, status "
                   "and fast reads of guest RAM (HOST:PORT for a TCP one: no fast reads)")
    p.add_argument("--elf", required=True, type=Path, help="the guest's ELF with symbols")


@command("attach", "adopt an already running QEMU guest", _arguments,
         description="Take over a running QEMU through its gdbstub (and QMP if given). The "
         "guest keeps running; `undebug kill NAME` detaches and leaves it running. With QMP's "
         "unix socket, undebug reads guest RAM in place from QEMU's memory (process_vm_readv: "
         "it needs ptrace access to QEMU); otherwise, with a warning, through QMP pmemsave and "
         "the gdbstub (slow). "
         "Where the ELF's OS has a crash path undebug knows (Unikraft), a breakpoint there keeps a "
         "crashing guest stopped for inspection.")
def attach(args: argparse.Namespace) -> Report:
    from undebug.session.launcher import start_supervisor
    from undebug.session.spec import SessionSpec, socket_address
    from undebug.vm.image import check_debug_elf

    elf = check_debug_elf(args.elf, "--elf")
    if args.qmp and isinstance(socket_address(args.qmp), str) and not Path(args.qmp).exists():
        raise UsageError(f"--qmp {args.qmp} does not exist")
    claim = SessionDir.named(args.name).claim()
    session = claim.session
    spec = SessionSpec(mode="attach", elf=str(elf), gdb=args.gdb, qmp=args.qmp)
    try:
        status = start_supervisor(claim, spec)
    except BaseException:
        claim.remove()
        raise
    claim.release()  # the supervisor holds the session now
    warnings = arm_adopted_guest(session.name)  # with why RAM is not read in place, if not
    return Report(data={"name": session.name, "status": status.to_json()}, warnings=warnings,
                  render=lambda: [f"{escape(session.name)}: attached ({escape(status.state)})"])
