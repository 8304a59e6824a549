"""Docker-like lifecycle of guests: ``ps``, ``stop`` (pause), ``cont``, ``kill``."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable

from undebug.commands import command
from undebug.commands.live_export import export_state
from undebug.commands.verdict import os_outcome
from undebug.errors import SessionError
from undebug.output import Report
from undebug.session.client import SupervisorClient, live_status
from undebug.session.replies import GuestStatus
from undebug.session.store import SessionDir, sessions
from undebug.text import escape


def _name_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the guest's name (see undebug ps)")


def _uptime(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def _cost(g: GuestStatus) -> str:
    """The supervisor's CPU time and RSS: "1.24s 23M" ("-" for a record without them)."""
    if g.cost is None:
        return "-"
    rss = g.cost.supervisor_rss_bytes
    return f"{g.cost.supervisor_cpu_s:.2f}s {rss >> 20 if rss is not None else '?'}M"


def _ports(g: GuestStatus) -> str:
    """run --forward as docker ps shows it: "127.0.0.1:41234->7/tcp" ("-" for none)."""
    shown = []
    for forward in g.forwards:
        proto, host, guest = [*forward.split(":"), "", ""][:3]
        shown.append(f"127.0.0.1:{host}->{guest}/{proto}")
    return escape(",".join(shown)) or "-"


@command("ps", "list guests and their state")
def ps(args: argparse.Namespace) -> Report:
    guests, warnings = [], []
    for session in sessions():
        try:
            guest = live_status(session)
            if guest.outcome is not None:  # in the OS's words (a crash: what and where)
                guest = dataclasses.replace(guest, outcome=os_outcome(
                    guest.outcome, guest.name, guest.elf))
            guests.append(guest)
            warnings += [f"{guest.name}: {w}" for w in guest.warnings]
        except SessionError as exc:
            warnings.append(exc.message)

    def render() -> list[str]:
        rows = [("NAME", "STATE", "ACCEL", "CPUS", "MEM", "UPTIME", "SUPERVISOR", "PORTS",
                 "IMAGE")]
        for g in guests:
            state = g.state
            if g.outcome and state != "running":
                state = f"{state} ({g.outcome.kind})"
            memory = f"{g.memory_mb}M" if g.memory_mb else "-"
            rows.append((escape(g.name), escape(state), str(g.accel or "-"), str(g.smp or "-"),
                         memory, _uptime(g.uptime_s), _cost(g), _ports(g), escape(g.image or "")))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]
                 for r in rows]
        for g in guests:  # a live export's counts, under the table
            e = export_state(g.name)
            if e is not None:
                lines.append(f"{escape(g.name)}: trace export to {escape(str(e.get('endpoint')))}"
                             f": {e.get('exported')} exported, {e.get('not_exported')} not "
                             f"exported, {e.get('dropped')} dropped")
        return lines

    return Report(data={"guests": [{**g.to_json(), "export": export_state(g.name)}
                                   for g in guests]}, warnings=warnings, render=render)


def _run_control(act: Callable[[SupervisorClient], GuestStatus],
                 verb: str) -> Callable[[argparse.Namespace], Report]:
    def run(args: argparse.Namespace) -> Report:
        with SupervisorClient(SessionDir.named(args.name)) as client:
            status = act(client)
        return Report(data={"name": args.name, "status": status.to_json()},
                      render=lambda: [f"{escape(args.name)}: {verb} ({escape(status.state)})"])
    return run


command("stop", "pause a guest (it stays paused until cont)", _name_argument)(
    _run_control(SupervisorClient.pause, "paused"))
command("cont", "resume a paused guest", _name_argument)(
    _run_control(SupervisorClient.resume, "resumed"))


@command("kill", "end a guest and forget it", _name_argument,
         description="End the guest's QEMU (or detach from an attached one) and remove its "
         "session, console log included.")
def kill(args: argparse.Namespace) -> Report:
    session = SessionDir.named(args.name)
    session.read_record()  # "no guest named ..." if none
    outcome = None
    try:
        with SupervisorClient(session) as client:
            outcome = client.kill()
    except SessionError:
        pass  # already ended: only the directory is left
    session.remove_ended(wait=10)  # the supervisor writes its last record on the way out
    return Report(data={"name": args.name, "outcome": outcome.to_json() if outcome else None},
                  render=lambda: [f"{escape(args.name)}: killed"])
