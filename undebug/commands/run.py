"""``undebug run``: boot an image under a supervisor, detached, in the foreground, or as a
CI check that exits 0 on a clean shutdown and 1 on a crash, a non-zero exit or a hang
(with a dump bundle of the failure, and JUnit / GitHub reports: commands/ci_report.py)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from undebug.commands import command, number_at_least, session_name
from undebug.commands.boot import boot_choices, split_debug_elfs
from undebug.commands.preflight import prepare_guest
from undebug.commands.trace import trace_size
from undebug.commands.verdict import os_outcome
from undebug.console import ConsoleFollower, tail_lines
from undebug.errors import EXIT_CHECK_FAILED, UsageError
from undebug.output import Report
from undebug.session.client import SupervisorClient
from undebug.session.outcome import Outcome, from_silence, from_timeout
from undebug.session.store import SessionClaim, SessionDir
from undebug.text import escape
from undebug.vm.qemu import DISK_INTERFACES, MACHINES

if TYPE_CHECKING:  # the launcher is imported when a guest is started, not before
    from pathlib import Path

    from undebug.session.launcher import Launched

CONSOLE_TAIL = 20
EXPORT_WAIT_S = 90.0  # run --otlp: how long the end waits for the live export to finish
POLL_S = 0.05


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("image", metavar="IMAGE", type=Path,
                   help="the kernel image to boot (ELF), or a bootable disk image")
    p.add_argument("--debug-elf", action="append", default=[], metavar="FILE[@ADDR]",
                   help="an ELF with symbols and DWARF (repeatable): the kernel's, when IMAGE "
                   "is stripped or a disk (default: IMAGE.dbg beside IMAGE if it exists, else "
                   "IMAGE), and the programs' (a static program at its link address, a PIE "
                   "where the OS provider finds it, or at @ADDR); every later command uses them")
    p.add_argument("--sysroot", type=Path, metavar="DIR",
                   help="where a dynamically linked program's libraries are on this host "
                   "(default /): each one's path in the guest, under DIR, as gdb's sysroot")
    p.add_argument("--disk", action="append", default=[], type=Path, metavar="FILE",
                   help="another raw disk image (repeatable); disks are opened with "
                   "snapshot=on: the guest's writes never reach the file")
    p.add_argument("--disk-if", choices=DISK_INTERFACES, default=None,
                   help="how the disks are attached (default: the OS's, else virtio-blk)")
    p.add_argument("--machine", choices=MACHINES, default=None,
                   help="QEMU's machine (default: the OS's for a disk image, else pc)")
    p.add_argument("--kernel", type=Path, metavar="FILE",
                   help="boot FILE with -kernel while IMAGE is the disk")
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
    p.add_argument("--otlp", metavar="URL",
                   help="start `undebug trace export NAME --otlp URL --follow` beside the "
                   "guest, in its own process: its spans reach the collector while it runs "
                   "(counts in ps)")
    p.add_argument("--no-trace", action="store_true",
                   help="no virtio-serial trace port (for guests that mind the device)")
    p.add_argument("--ci", action="store_true",
                   help="exit 0 on a clean shutdown, 1 on a crash, non-zero exit or timeout")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="with --ci: wall-clock limit in seconds (default 300)")
    p.add_argument("--dump-dir", type=Path, default=None, metavar="DIR",
                   help="with --ci: where a failure's dump bundle goes (default "
                   "$UNDEBUG_DUMP_DIR, else ./undebug-dumps), one <name>-<UTC time>/ per "
                   "failure")
    p.add_argument("--junit", type=Path, default=None, metavar="FILE",
                   help="with --ci: write a JUnit XML report to FILE")
    p.add_argument("--expect-exit", type=int, default=None, metavar="N",
                   help="with --ci: the guest's exit code that passes (default: 0, or what "
                   "its OS calls a clean exit)")
    p.add_argument("--hang-after", type=number_at_least(0.1, float), default=None,
                   metavar="S", help="with --ci: a hang when no trace record arrives for S "
                   "seconds (needs the tracing stub; default off)")
    p.add_argument("--qemu-core", action="store_true", default=None,
                   help="with --ci: a failure's bundle also holds QEMU's own "
                   "dump-guest-memory ELF (qemu-core.elf), for tools that want QEMU's format")


def launch(args: argparse.Namespace) -> Launched:
    from undebug.session.launcher import LaunchRequest, launch_guest

    for option in ("timeout", "dump_dir", "junit", "expect_exit", "hang_after", "qemu_core"):
        if getattr(args, option) is not None and not args.ci:
            raise UsageError(f"--{option.replace('_', '-')} goes with --ci")
    if args.otlp is not None and args.no_trace:
        raise UsageError("--otlp exports the guest's trace: it cannot go with --no-trace")
    if args.ci and args.detach:
        raise UsageError("--ci runs in the foreground; drop -d")
    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be a positive number of seconds")
    boot = boot_choices(args.image, args.machine, args.disk_if)
    kernels, programs = split_debug_elfs(args.debug_elf)
    return launch_guest(LaunchRequest(
        image=args.image, name=args.name, accel=args.accel, memory_mb=args.memory,
        smp=args.smp, append=args.append, forwards=tuple(args.forward), paused=True,
        trace=not args.no_trace, trace_file=args.trace_file,
        trace_max_size=args.trace_max_size, debug_elfs=kernels,
        traceparent=args.traceparent or None, machine=boot.machine, kernel=args.kernel,
        disks=tuple(args.disk), disk_if=boot.disk_if, devices=boot.devices,
        programs=programs, sysroot=args.sysroot))


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
    quiet = _QuietTrace(session.trace_file, args.hang_after) if args.ci and args.hang_after \
        else None
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
        if quiet is not None and quiet.silent():
            client.pause()
            state = client.status().qemu_state or "paused"
            line = (tail_lines(session.console_log, 1) or [b""])[0]
            return from_silence(quiet.seconds, escape(line) or "(console empty)", state)
        if deadline is not None and time.monotonic() > deadline:
            client.pause()
            state = client.status().qemu_state or "paused"
            line = (tail_lines(session.console_log, 1) or [b""])[0]
            return from_timeout(args.timeout or 300.0, escape(line) or "(console empty)", state)


class _QuietTrace:
    """``--hang-after S``: the trace recording has not grown for S seconds (a guest whose
    stub streams records and then goes silent; counted from the start, so a guest that
    never sends one is a hang too)."""

    def __init__(self, recording: Path, seconds: float) -> None:
        self.recording = recording
        self.seconds = seconds
        self.size = -1
        self.since = time.monotonic()

    def silent(self) -> bool:
        try:
            size = self.recording.stat().st_size
        except OSError:
            size = 0
        now = time.monotonic()
        if size != self.size:
            self.size, self.since = size, now
        return now - self.since > self.seconds


def _expected(outcome: Outcome, expect: int | None) -> Outcome:
    """``--expect-exit N``: an exit passes with code N, and only with N."""
    if expect is None or outcome.kind != "exit" or outcome.exit_code is None:
        return outcome
    if outcome.exit_code == expect:
        return dataclasses.replace(outcome, ok=True,
                                   reason=f"guest exited with code {expect}, as expected")
    return dataclasses.replace(outcome, ok=False, reason=f"guest exited with code "
                               f"{outcome.exit_code}, expected {expect}")


def _finish_ci(claim: SessionClaim, client: SupervisorClient, outcome: Outcome,
               args: argparse.Namespace, started: float) -> tuple[dict[str, Any], list[str]]:
    """The verdict with the console tail and, for a failure, a bundle written while the
    guest is still there (paused); then the CI reports; then end the guest."""
    from undebug.commands.ci_report import Failure, crash_screen, github_annotations, junit_xml

    session = claim.session
    tail = [escape(line) for line in tail_lines(session.console_log, CONSOLE_TAIL)]
    data: dict[str, Any] = {"name": session.name, "outcome": outcome.to_json(),
                            "console_tail": tail}
    summary, bundle = None, None
    if not outcome.ok:
        from undebug.dump.bundle import BundleRequest, write_bundle

        result = write_bundle(BundleRequest(
            session.name, args.dump_dir or Path(os.environ.get("UNDEBUG_DUMP_DIR")
                                                or "undebug-dumps"), sparse=True,
            qemu_core=bool(args.qemu_core),
            reason={"kind": outcome.kind, "text": outcome.reason, "source": "run"}))
        summary, bundle = result.summary, result.path
        data["bundle"] = str(bundle)
        data["signature"] = summary.get("signature")
        if args.qemu_core:
            data["qemu_core"] = summary.get("qemu_core")
    if outcome.run_state is not None:
        client.kill()
    claim.remove()
    failure = Failure(session.name, args.image, outcome.to_json(), summary, bundle,
                      time.monotonic() - started, tail)
    if args.junit is not None:
        _write_private(args.junit, junit_xml(failure))
    screen = [] if outcome.ok else crash_screen(failure)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        notes = github_annotations(failure)
        if args.json:
            sys.stderr.write("".join(line + "\n" for line in notes))
        else:
            screen = notes + screen
        step = os.environ.get("GITHUB_STEP_SUMMARY")
        if step:
            from undebug.commands.ci_report import step_summary

            step_summary(failure, Path(step))
    return data, screen


def _write_private(path: Path, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


def _note_os(warnings: list[str], *recordings: Path | None) -> None:
    """The guest's OS in its recordings' FILE.origin (tracers/origin.py): the launcher
    writes them but does not pick OS providers."""
    from tracers.origin import note_os, read_origin
    from undebug.commands.trace_export import guest_os

    for recording in {r for r in recordings if r is not None}:
        origin = read_origin(recording)
        name = guest_os(origin.elf) if origin else None
        try:
            if name is not None:
                note_os(recording, name)
        except OSError as exc:
            warnings.append(f"cannot add the guest's OS to {recording}.origin: {exc.strerror}")


@command("run", "boot a unikernel image under undebug", _arguments,
         description="Boot IMAGE in QEMU under a per-guest supervisor. In the foreground the "
         "console streams to stdout and Ctrl-C ends the guest; with -d it runs on, named; "
         "with --ci the exit code tells whether it shut down cleanly.")
def run(args: argparse.Namespace) -> Report:
    launched = launch(args)
    claim, session = launched.claim, launched.claim.session
    _note_os(launched.warnings, session.trace_file, args.trace_file)
    prepare_guest(launched, args.force, args.paused)
    exporter = None
    if args.otlp is not None:
        from undebug.commands.live_export import start_live_export

        exporter = start_live_export(session, args.otlp)
    if args.detach:
        claim.release()  # the supervisor holds the session now
        return Report(data={"name": session.name, "status": launched.status.to_json()},
                      warnings=launched.warnings, render=lambda: [session.name])
    for warning in launched.warnings if not args.json else []:  # now, not after the run
        sys.stderr.write(f"warning: {escape(warning)}\n")
    started = time.monotonic()
    screen: list[str] = []
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
                outcome = _expected(outcome, args.expect_exit)
                data, screen = _finish_ci(claim, client, outcome, args, started)
            else:
                data = {"name": session.name, "outcome": outcome.to_json()}
    finally:
        claim.release()
    if exporter is not None:  # the guest has ended: the export sends what is left, then ends
        import subprocess

        try:
            exporter.wait(timeout=EXPORT_WAIT_S)
        except subprocess.TimeoutExpired:
            late = (f"the live export (pid {exporter.pid}) is still sending after "
                    f"{EXPORT_WAIT_S:g} s; its output: {session.export_log}")
            if args.json:
                launched.warnings.append(late)
            else:
                sys.stderr.write(f"warning: {escape(late)}\n")
    verdict = "PASS" if outcome.ok else "FAIL"
    return Report(
        data=data, warnings=launched.warnings if args.json else [],
        exit_code=0 if outcome.ok else EXIT_CHECK_FAILED,
        render=lambda: [*screen, f"undebug: {verdict}: {escape(outcome.reason)}"])
