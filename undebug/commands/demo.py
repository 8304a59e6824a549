"""``undebug demo``: build the reference guest, boot it, and show what undebug sees.

On a terminal it opens ``undebug tui`` on the guest (a plugin command: run as a program,
never imported), or, when the TUI is not installed, a summary refreshed once a second; the
guest ends when you leave. Without a terminal (or with ``--once``/``--json``) it prints
one summary and ends the guest.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from undebug.commands import command, session_name
from undebug.console import tail_lines
from undebug.errors import EnvironmentMissing, SessionError
from undebug.output import Report
from undebug.session.client import SupervisorClient
from undebug.session.store import SessionDir
from undebug.text import escape

SOURCE_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT = 60.0
PLANTED_GLOBALS = ("planted_counter", "requests_handled")


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default="demo", type=session_name,
                   help="the guest's name (default: demo)")
    p.add_argument("--threads", type=int, default=8, help="worker threads in the guest (8)")
    p.add_argument("--smp", type=int, default=2, help="vCPUs (2)")
    p.add_argument("--once", action="store_true", help="print one summary and end the guest")


def build_guest() -> Path:
    """Build build/refguest.elf from the source tree (make is incremental)."""
    import subprocess  # here, not at the top: every command's start-up imports this module

    source = SOURCE_ROOT / "guest-stubs" / "refguest"
    if not source.is_dir():
        raise EnvironmentMissing(
            "undebug demo needs a source checkout (guest-stubs/refguest is missing)")
    for tool in ("make", "gcc"):
        if shutil.which(tool) is None:
            raise EnvironmentMissing(f"{tool} is not installed",
                                     hint="install it with: sudo apt-get install make gcc")
    out = SOURCE_ROOT / "build"
    sys.stderr.write("demo: building the reference guest ...\n")
    result = subprocess.run(["make", "-s", "-C", str(source), f"OUT={out}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if result.returncode != 0:
        raise EnvironmentMissing(f"building the reference guest failed:\n{result.stderr[-2000:]}")
    return out / "refguest.elf"


def _wait_ready(session: SessionDir) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if any(line.startswith(b"refguest: ready") for line in tail_lines(session.console_log, 50)):
            return
        time.sleep(0.1)
    tail = "\n".join(escape(line) for line in tail_lines(session.console_log, 10))
    raise SessionError(f"the reference guest did not report ready within {READY_TIMEOUT:g} s; "
                       f"console tail:\n{tail or '(empty)'}")


def summarize(session: SessionDir) -> dict[str, Any]:
    """Read the guest from outside at one moment (it is held still for the read): run
    state, the guest's own threads and what each vCPU runs, the planted globals."""
    from undebug.os import provider_for
    from undebug.target import open_target

    with SupervisorClient(session) as client:
        status = client.status()
    with open_target(session.name) as target:
        snapshot = provider_for(target).threads()
        names = {t.id: t.name for t in snapshot.threads}
        threads = [{"id": t.id, "name": t.name, "state": t.state, "cpu": t.cpu,
                    "function": target.symbolize(t.registers.get("rip", 0))}
                   for t in snapshot.threads]
        cpus = []
        for cpu in range(target.cpu_count()):
            rip = target.registers(cpu).get("rip", 0)
            on = snapshot.vcpus.get(cpu)
            cpus.append({"cpu": cpu, "rip": rip, "function": target.symbolize(rip),
                         "thread": names.get(on) if on is not None else None})
        planted = {name: target.read_int(address) for name in PLANTED_GLOBALS
                   if (address := target.address_of(name)) is not None}
        warnings = [*target.warnings, *snapshot.warnings]
    console = [escape(line) for line in tail_lines(Path(status.console), 5)]
    return {"status": status.to_json(), "cpus": cpus, "threads": threads, "globals": planted,
            "console_tail": console, "warnings": warnings}


def render(summary: dict[str, Any]) -> list[str]:
    status = summary["status"]
    lines = [f"guest {escape(status['name'])}: {status['state']}, {status['smp']} vCPU, "
             f"{status['memory_mb']} MiB, {status['accel']} ({escape(status['accel_reason'])}), "
             f"up {status['uptime_s']:.1f} s", ""]
    for c in summary["cpus"]:
        who = f"thread {escape(c['thread'])}" if c["thread"] else "no known thread"
        lines.append(f"  vCPU {c['cpu']}: {who}, rip {c['rip']:#x} in "
                     f"{escape(c['function'] or '?')}")
    states: dict[str, int] = {}
    for t in summary["threads"]:
        states[t["state"]] = states.get(t["state"], 0) + 1
    lines += ["", f"  {len(summary['threads'])} guest threads: " +
              ", ".join(f"{n} {state}" for state, n in sorted(states.items()))]
    lines += [f"    {t['id']:>4}  {escape(t['name']):<22} {t['state']:<9} "
              f"{escape(t['function'] or '?')}" for t in summary["threads"][:10]]
    if len(summary["threads"]) > 10:
        lines.append(f"    ... {len(summary['threads']) - 10} more (undebug threads NAME)")
    lines += [""] + [f"  {name} = {value:#x} ({value})"
                     for name, value in summary["globals"].items()]
    lines += ["", "  console:"] + [f"    {line}" for line in summary["console_tail"]]
    return lines


def _tui(name: str) -> bool:
    """Run ``undebug tui NAME`` on this terminal until the user quits it; False when it
    is not there (the tui plugin not installed: argparse refuses the command)."""
    import subprocess  # only here: every command's start-up imports this module

    return subprocess.run([sys.executable, "-m", "undebug.cli", "tui", name]).returncode == 0


@command("demo", "build and boot the reference guest and show what undebug sees", _arguments)
def demo(args: argparse.Namespace) -> Report:
    from undebug.session.launcher import LaunchRequest, launch_guest

    image = build_guest()
    old = SessionDir.named(args.name)
    if old.path.exists() and old.is_alive():
        with SupervisorClient(old) as client:
            client.kill()
        old.remove_ended(wait=10)
    claim = launch_guest(LaunchRequest(
        image=image, name=args.name, smp=args.smp, append=f"threads={args.threads}")).claim
    session = claim.session
    live = sys.stdout.isatty() and not args.once and not args.json
    try:
        with SupervisorClient(session) as client:
            client.own()  # the guest ends with this command
            _wait_ready(session)
            summary = summarize(session)
            try:
                if live and _tui(args.name):
                    live = False
                    summary = summarize(session)
                while live:
                    sys.stdout.write("\x1b[H\x1b[2J" + "\n".join(render(summary)) +
                                     "\n\n  (Ctrl-C ends the guest)\n")
                    sys.stdout.flush()
                    time.sleep(1.0)
                    summary = summarize(session)
            except KeyboardInterrupt:  # the way a live demo ends: not an error
                sys.stdout.write("\n")
            client.kill()
    finally:
        claim.remove()
    warnings = summary.pop("warnings")
    return Report(data=summary, warnings=warnings, render=lambda: render(summary))
