"""``undebug run``: boot an image under a supervisor, detached, in the foreground, or as a
CI check that exits 0 on a clean shutdown and 1 on a crash, a non-zero exit or a hang."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from undebug.commands import command, session_name
from undebug.commands.preflight import prepare_guest
from undebug.commands.trace import trace_size
from undebug.commands.verdict import os_outcome
from undebug.console import ConsoleFollower, tail_lines
from undebug.errors import EXIT_CHECK_FAILED, UsageError
from undebug.output import Report
from undebug.session.client import SupervisorClient
from undebug.session.outcome import Outcome, from_timeout
from undebug.session.store import SessionClaim, SessionDir
from undebug.text import escape

if TYPE_CHECKING:  # the launcher is imported when a guest is started, not before
    from undebug.session.launcher import Launched

CONSOLE_TAIL = 20
POLL_S = 0.05


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", type=Path, help="the kernel image to boot (ELF)")
    p.add_argument("--debug-elf", action="append", default=[], type=Path, metavar="FILE",
                   help="the ELF with the guest's symbols and DWARF, when IMAGE is stripped "
                   "(default: IMAGE.dbg beside IMAGE if it exists, else IMAGE); every later "
                   "command uses it")
    p.add_argument("--force", action="store_true",
                   help="boot even when the debug ELF does not match the guest's memory")
    p.add_argument("-d", "--detach", action="store_true",
                   help="start the guest and return; inspect it by name later")
    p.add_argument("--name", type=session_name,
                   help="the guest's name (default: from the image file name)")
    p.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"),
                   help="auto = KVM when the host has hardware KVM, else TCG (default: auto)")
    p.add_argument("--memory", type=int, default=128, metavar="MB", help="RAM in MiB (128)")
    p.add_argument("--smp", type=int, default=1, metavar="N", help="number of vCPUs (1)")
    p.add_argument("--append", default="", metavar="ARGS", help="the guest's kernel command line")
    p.add_argument("--forward", action="append", default=[], metavar="tcp:HOSTPORT:GUESTPORT",
                   help="forward 127.0.0.1:HOSTPORT to the guest's GUESTPORT (tcp or udp; "
                   "repeatable; HOSTPORT 0 or empty: a free port, shown by status and ps); "
                   "the guest gets a virtio-net device on QEMU user networking")
    p.add_argument("--paused", action="store_true",
                   help="hold the guest before its first instruction (resume with cont)")
    p.add_argument("--trace-file", type=Path, metavar="FILE",
                   help="also write the guest's trace stream to FILE as it arrives")
    p.add_argument("--trace-max-size", type=trace_size, default=trace_size("256M"),
                   metavar="SIZE", help="keep at most SIZE bytes of each trace recording "
                   "(K, M, G suffixes; default 256M; 0: no limit): the oldest chunks go first")
    p.add_argument("--traceparent", metavar="TP", default=os.environ.get("TRACEPARENT"),
                   help="a W3C traceparent (default $TRACEPARENT) kept with the recording: "
                   "trace export makes it the parent of the guest's outermost spans")
    p.add_argument("--no-trace", action="store_true",
                   help="no virtio-serial trace port (for guests that mind the device)")
    p.add_argument("--ci", action="store_true",
                   help="exit 0 on a clean shutdown, 1 on a crash, non-zero exit or timeout")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="with --ci: wall-clock limit in seconds (default 300)")


def launch(args: argparse.Namespace) -> Launched:
    from undebug.session.launcher import LaunchRequest, launch_guest

    if args.timeout is not None and not args.ci:
        raise UsageError("--timeout goes with --ci")
    if args.ci and args.detach:
        raise UsageError("--ci runs in the foreground; drop -d")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    return launch_guest(LaunchRequest(
        image=args.image, name=args.name, accel=args.accel, memory_mb=args.memory,
        smp=args.smp, append=args.append, forwards=tuple(args.forward), paused=True,
        trace=not args.no_trace, trace_file=args.trace_file,
        trace_max_size=args.trace_max_size, debug_elfs=tuple(args.debug_elf),
        traceparent=args.traceparent or None))


def _print_console(lines: list[bytes], stream: Any) -> None:
    for line in lines:
        stream.write(escape(line) + "\n")
    stream.flush()


def _watch(session: SessionDir, client: SupervisorClient, args: argparse.Namespace,
           elf: str | None) -> Outcome:
    """Stream the console until the guest ends, crashes (CI) or the timeout passes (CI)."""
    follower = ConsoleFollower(session.console_log)
    show = not args.json
    stream = sys.stdout if not args.ci else sys.stderr
    deadline = time.monotonic() + (args.timeout or 300.0) if args.ci else None
    told_crash = False
    while True:
        event = client.next_event(POLL_S)
        if show:
            _print_console(follower.poll(), stream)
        if event is not None and event.outcome is not None:
            outcome = os_outcome(event.outcome, session.name, elf)
            if event.type == "ended" or args.ci:
                if show:
                    _print_console(follower.poll(flush_partial=True), stream)
                if event.type != "ended":  # what QEMU says now, not what we assume
                    state = client.status().qemu_state or outcome.run_state
                    outcome = dataclasses.replace(outcome, run_state=state)
                return outcome
            if not told_crash:
                told_crash = True
                sys.stderr.write(
                    f"undebug: {escape(outcome.reason)}\nundebug: the guest is paused for "
                    f"inspection as {session.name!r}; press Ctrl-C to end it\n")
        if deadline is not None and time.monotonic() > deadline:
            client.pause()
            state = client.status().qemu_state or "paused"
            line = (tail_lines(session.console_log, 1) or [b""])[0]
            return from_timeout(args.timeout or 300.0, escape(line) or "(console empty)", state)


def _finish_ci(claim: SessionClaim, client: SupervisorClient, outcome: Outcome) -> dict[str, Any]:
    """The verdict with the console tail; then end the guest (dump bundles come later)."""
    session = claim.session
    tail = [escape(line) for line in tail_lines(session.console_log, CONSOLE_TAIL)]
    if outcome.run_state is not None:
        client.kill()
    claim.remove()
    return {"name": session.name, "outcome": outcome.to_json(), "console_tail": tail}


@command("run", "boot a unikernel image under undebug", _arguments,
         description="Boot IMAGE in QEMU under a per-guest supervisor. In the foreground the "
         "console streams to stdout and Ctrl-C ends the guest; with -d it runs on, named; "
         "with --ci the exit code tells whether it shut down cleanly.")
def run(args: argparse.Namespace) -> Report:
    launched = launch(args)
    claim, session = launched.claim, launched.claim.session
    prepare_guest(launched, args.force, args.paused)
    if args.detach:
        claim.release()  # the supervisor holds the session now
        return Report(data={"name": session.name, "status": launched.status.to_json()},
                      warnings=launched.warnings, render=lambda: [session.name])
    for warning in launched.warnings if not args.json else []:  # now, not after the run
        sys.stderr.write(f"warning: {escape(warning)}\n")
    try:
        with SupervisorClient(session) as client:
            client.own()
            client.subscribe()
            try:
                outcome = _watch(session, client, args, launched.status.elf)
            except KeyboardInterrupt:
                client.kill()
                raise
            if args.ci:
                data = _finish_ci(claim, client, outcome)
            else:
                data = {"name": session.name, "outcome": outcome.to_json()}
    finally:
        claim.release()
    verdict = "PASS" if outcome.ok else "FAIL"
    return Report(
        data=data, warnings=launched.warnings if args.json else [],
        exit_code=0 if outcome.ok else EXIT_CHECK_FAILED,
        render=lambda: [f"undebug: {verdict}: {escape(outcome.reason)}"])
