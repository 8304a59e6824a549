"""Run control through the supervisor: ``break``, ``delete``, ``step``, ``wait``.

The supervisor owns breakpoints, so they persist across CLI calls and front ends. A stop
is reported with the guest thread running on the vCPU that stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from undebug.commands import add_elf_arguments, command, number_at_least
from undebug.commands.verdict import os_outcome
from undebug.errors import EXIT_CHECK_FAILED, SessionError, UsageError
from undebug.output import Report
from undebug.session.breakpoints import Breakpoint
from undebug.session.client import SupervisorClient
from undebug.session.replies import Stop
from undebug.session.store import SessionDir
from undebug.text import escape

if TYPE_CHECKING:
    from undebug.os.provider import ThreadSnapshot


def _name(p: argparse.ArgumentParser, elf: bool = True) -> None:
    p.add_argument("target", metavar="TARGET", help="a guest's name (see undebug ps)")
    if elf:
        add_elf_arguments(p, force=False)


def _describe_stop(session: SessionDir, stop: Stop, elf: Path | None) -> dict[str, Any]:
    """The stop with the guest thread on its vCPU and the source location of its pc."""
    from undebug.os import provider_for
    from undebug.target import open_target

    info = stop.to_json()
    with open_target(session.name, elf) as target:
        try:  # first: it places the programs the pc may be in
            snapshot: ThreadSnapshot | None = provider_for(target).threads()
        except UsageError:
            snapshot = None
        pc = stop.pc
        if pc is not None:
            info["function"] = target.symbolize(pc)
            line = target.line_at(pc)
            info["file"], info["line"] = line if line else (None, None)
        thread = None
        if snapshot is not None and stop.cpu is not None:
            thread_id = snapshot.vcpus.get(stop.cpu)
            thread = snapshot.find(thread_id) if thread_id is not None else None
        info["thread"] = {"id": thread.id, "name": thread.name} if thread else None
    return info


def _stop_line(info: dict[str, Any]) -> str:
    where = escape(info.get("function") or (hex(info["pc"]) if info.get("pc") else "?"))
    if info.get("file"):
        where += f" at {escape(info['file'])}:{info['line']}"
    thread = info.get("thread")
    who = f" in thread {thread['id']} {escape(thread['name'])}" if thread else ""
    bp = f" {info['breakpoint']}" if info.get("breakpoint") else ""
    if info.get("watch") and info.get("data_address") is not None:
        bp += f" ({info['watch']} at {info['data_address']:#x})"
    return f"stopped: {info['reason']}{bp} on vCPU {info['cpu']}{who}: {where}"


# ---- break / delete -------------------------------------------------------------------

def _break_arguments(p: argparse.ArgumentParser) -> None:
    _name(p)
    p.add_argument("location", metavar="LOCATION", nargs="?",
                   help="a function (its first instruction: the kernel's, else a program's "
                   "or library's at its load bias; MODULE:FUNCTION for one file's, e.g. "
                   "libc.so.6:clock_nanosleep), FILE:LINE or an address")
    p.add_argument("--hardware", action="store_true",
                   help="a hardware breakpoint (debug registers) instead of a software one")
    p.add_argument("--list", action="store_true",
                   help="list the guest's breakpoints instead (yours, gdb's and run's crash stops)")


def breakpoint_line(bp: Breakpoint) -> str:
    """One breakpoint or watchpoint as ``break --list`` and ``watch --list`` print it."""
    if bp.watch is not None:
        return f"watchpoint {bp.id} on {bp.address:#x} ({escape(bp.location)}, {bp.length} " \
            f"bytes, {bp.watch}, set by {bp.owner})"
    kind = "hardware" if bp.hardware else "software"
    return f"breakpoint {bp.id} at {bp.address:#x} ({escape(bp.location)}, {kind}, " \
        f"set by {bp.owner})"


@command("break", "set a breakpoint the supervisor keeps (or --list them)", _break_arguments,
         description="Set a breakpoint in the guest. It stays until `undebug delete`, across "
         "CLI calls. When it is hit the whole guest stops; see `undebug wait`, then `undebug "
         "cont`. --list shows every breakpoint with who set it: cli (undebug break), gdb "
         "(a debugger through undebug gdbserver; those go when it disconnects) or crash "
         "(the OS's crash stops run armed; delete --all keeps them).")
def break_(args: argparse.Namespace) -> Report:
    if args.list == (args.location is not None) or (args.list and args.hardware):
        raise UsageError("give a LOCATION to set a breakpoint, or --list (alone) to list them")
    session = SessionDir.named(args.target)
    with SupervisorClient(session) as client:
        if args.list:
            bps = client.status().breakpoints
            return Report(data={"breakpoints": [bp.to_json() for bp in bps]}, render=lambda: [
                breakpoint_line(bp) for bp in bps] or ["no breakpoints"])
        from undebug.os.locate import guest_location

        found, warnings = guest_location(args.target, args.location, args.elf)
        bp = client.insert_breakpoint(found.address, args.hardware, args.location)
    return Report(data={"breakpoint": bp.to_json()}, warnings=warnings,
                  render=lambda: [breakpoint_line(bp)])


def _delete_arguments(p: argparse.ArgumentParser) -> None:
    _name(p, elf=False)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=int, nargs="?", metavar="ID",
                       help="the breakpoint to delete (see undebug break TARGET --list)")
    which.add_argument("--all", action="store_true",
                       help="delete every breakpoint and watchpoint set by break, watch or a "
                       "debugger (run's crash stops stay: ID deletes one)")


@command("delete", "delete a breakpoint (or --all)", _delete_arguments)
def delete(args: argparse.Namespace) -> Report:
    with SupervisorClient(SessionDir.named(args.target)) as client:
        # --all keeps the crash stops run armed: without them a crash ends the guest
        # before it can be inspected (a Nanos fatal signal exits QEMU with the RAM)
        ids = [args.id] if args.id is not None else [
            bp.id for bp in client.status().breakpoints if bp.owner != "crash"]
        deleted = [client.delete_breakpoint(bp_id) for bp_id in ids]
    return Report(data={"deleted": [bp.to_json() for bp in deleted]},
                  render=lambda: [f"deleted {'watchpoint' if bp.watch else 'breakpoint'} "
                                  f"{bp.id}" for bp in deleted])


# ---- step / wait ----------------------------------------------------------------------

def _step_arguments(p: argparse.ArgumentParser) -> None:
    _name(p)
    p.add_argument("--thread", type=int, metavar="ID",
                   help="the guest thread to step; it must be on a vCPU (default: the vCPU "
                   "that stopped last)")


@command("step", "execute one instruction on a stopped guest's vCPU", _step_arguments)
def step(args: argparse.Namespace) -> Report:
    session = SessionDir.named(args.target)
    cpu = None
    if args.thread is not None:
        from undebug.os import provider_for
        from undebug.target import open_target

        with open_target(args.target, args.elf) as target:
            thread = provider_for(target).threads().find(args.thread)
        if thread.cpu is None:
            raise UsageError(f"thread {args.thread} is not on a vCPU ({thread.state}): only a "
                             "running thread can be stepped")
        cpu = thread.cpu
    with SupervisorClient(session) as client:
        stop = client.step(cpu)
    info = _describe_stop(session, stop, args.elf)
    return Report(data={"stop": info}, render=lambda: [_stop_line(info)])


def _wait_arguments(p: argparse.ArgumentParser) -> None:
    _name(p)
    p.add_argument("--timeout", type=number_at_least(0, float), default=None, metavar="S",
                   help="give up after S seconds (exit 1)")


@command("wait", "wait until the guest stops (a breakpoint, a crash, its end)", _wait_arguments,
         description="Return when the guest has stopped by itself: at once if it is stopped "
         "at a breakpoint now, else at the next stop. Prints the reason and the guest thread. "
         "Exit 0 on a stop, 1 when the guest crashed or ended, or on --timeout.")
def wait(args: argparse.Namespace) -> Report:
    session = SessionDir.named(args.target)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    with SupervisorClient(session) as client:
        client.subscribe()
        status = client.status()
        stop, outcome = status.last_stop, status.outcome
        while stop is None and outcome is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return Report(data={"stop": None, "timeout": args.timeout},
                              exit_code=EXIT_CHECK_FAILED,
                              render=lambda: [f"no stop within {args.timeout:g} s"])
            event = client.next_event(left)
            if event is None:
                continue
            if event.stop is not None:
                stop = event.stop
            elif event.outcome is not None:
                outcome = event.outcome
        if outcome is None and not status.ended:
            with contextlib.suppress(SessionError):  # a panic stops before QMP says why
                time.sleep(0.1)
                outcome = client.status().outcome
    if outcome is not None:
        outcome = os_outcome(outcome, args.target, status.elf)
        return Report(data={"stop": None, "outcome": outcome.to_json()},
                      exit_code=EXIT_CHECK_FAILED,
                      render=lambda: [f"guest {'ended' if outcome.run_state is None else 'crashed'}"
                                      f": {escape(outcome.reason)}"])
    assert stop is not None
    info = _describe_stop(session, stop, args.elf)
    return Report(data={"stop": info}, render=lambda: [_stop_line(info)])
