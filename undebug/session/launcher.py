"""Start a supervisor process for a session and wait until it holds the guest.

The supervisor runs in its own session (``start_new_session``) so a Ctrl-C meant for a
detached ``run -d`` never reaches it; a foreground ``run`` ties the guest's life to its
own with the ``own`` request instead.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from undebug.errors import InternalError, UndebugError, UsageError
from undebug.session.replies import GuestStatus, Reply, parse_status
from undebug.session.spec import SessionSpec
from undebug.session.store import SessionClaim, SessionDir, claim_default_name, keep_log
from undebug.text import escape
from undebug.vm.accel import choose_accel
from undebug.vm.image import (
    BootImage,
    check_debug_elf,
    debug_elf_beside,
    inspect_disk,
    inspect_image,
)
from undebug.vm.qemu import Forward, check_machine, find_qemu

__all__ = ["LaunchRequest", "Launched", "launch_guest", "start_supervisor"]

READY_TIMEOUT = 30.0


def start_supervisor(claim: SessionClaim, spec: SessionSpec) -> GuestStatus:
    """Launch the supervisor for ``spec`` in the claimed session and return its first
    status. It inherits the claim's lock, so the session stays held as long as it lives."""
    session = claim.session
    spec.save(session.path)
    log = os.fdopen(os.open(session.supervisor_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                            0o600), "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "undebug.session.supervisor", str(session.path), str(claim.fd)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, pass_fds=(claim.fd,),
        start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    try:
        line = _ready_line(process)
    except BaseException:  # Ctrl-C while it starts: no guest is left running unowned
        _reap(process, 0)
        raise
    if line is None:
        _reap(process, 0)
        raise _failed(session, f"the supervisor did not start within {READY_TIMEOUT:g} s")
    try:
        message = json.loads(line)
    except ValueError:
        _reap(process, 5)
        raise _failed(session, "the supervisor failed to start") from None
    if not message.get("ready"):
        _reap(process, 5)
        raise _failed(session, str(message.get("error", "unknown error")), message.get("hint"),
                      internal=bool(message.get("internal")))
    try:
        return parse_status(Reply(message.get("status"), f"guest {session.name!r}: the "
                                  "supervisor's first status"))
    except UndebugError:  # it runs a guest no one could use: end it, as on Ctrl-C
        _reap(process, 0)
        raise


def _ready_line(process: subprocess.Popen[bytes]) -> bytes | None:
    """The supervisor's first line on stdout (b"" or a partial line if it died first), or
    None when :data:`READY_TIMEOUT` passed."""
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    line = b""
    try:
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([process.stdout], [], [], max(0.0, remaining))
            if not ready:
                return None
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                break
            line += chunk
    finally:
        process.stdout.close()
    return line


def _reap(process: subprocess.Popen[bytes], grace: float) -> None:
    """Wait ``grace`` seconds for a supervisor that failed to go, then kill it."""
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _failed(session: SessionDir, message: str, hint: str | None = None,
            internal: bool = False) -> UndebugError:
    """The error for a supervisor that did not start (an internal one is undebug's own
    failure, exit 4); its log is kept (the session directory goes) and named only if
    there is one."""
    kept = keep_log(session.supervisor_log, f"{session.name}-supervisor")
    if kept is not None:
        hint = f"{hint}; supervisor log: {kept}" if hint else f"supervisor log: {kept}"
    return (InternalError if internal else UsageError)(message, hint=hint)


@dataclass(frozen=True)
class LaunchRequest:
    """A guest to boot, as a user asked for it (``undebug run`` or ``demo``)."""

    image: Path
    name: str | None = None
    accel: str = "auto"
    memory_mb: int = 128
    smp: int = 1
    append: str = ""
    forwards: tuple[str, ...] = ()
    paused: bool = False
    trace: bool = True
    trace_file: Path | None = None
    trace_max_size: int = 256 << 20  # run --trace-max-size (0: no limit)
    debug_elfs: tuple[Path, ...] = ()  # run --debug-elf (default: IMAGE.dbg, else IMAGE)
    traceparent: str | None = None  # run --traceparent: kept in the recordings' .origin
    machine: str = "pc"
    kernel: Path | None = None  # run --kernel: -kernel with a disk IMAGE
    disks: tuple[Path, ...] = ()  # run --disk
    disk_if: str = "virtio-blk"
    devices: tuple[str, ...] = ()  # more -device arguments (the OS's defaults)
    programs: tuple[str, ...] = ()  # program ELFs beside the kernel's, "PATH[@ADDR]"
    sysroot: Path | None = None  # run --sysroot: where the programs' libraries are


def _check_trace_file(path: Path) -> None:
    """What the supervisor would fail on later, said now: it opens the file for writing."""
    where = f"--trace-file {path}"
    if path.is_dir():
        raise UsageError(f"{where} is a directory", hint="name a file to write the stream to")
    if not path.parent.is_dir():
        raise UsageError(f"{where}: no directory {path.parent}")
    if path.exists() and not path.is_file():
        raise UsageError(f"{where} is not a regular file")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise UsageError(f"{where} is not writable")


def _program(spec: str) -> str:
    """A ``--debug-elf FILE[@ADDR]`` of a program: FILE checked, ADDR a number."""
    path, at, address = spec.rpartition("@") if "@" in spec else (spec, "", "")
    if at and not Path(spec).exists():
        try:
            if int(address, 0) < 0:
                raise ValueError(address)
        except ValueError:
            raise UsageError(f"--debug-elf {spec}: {address!r} is not a load address",
                             hint="write it as FILE@0x400000") from None
    else:
        path, address = spec, ""
    resolved = str(check_debug_elf(Path(path), "--debug-elf"))
    return f"{resolved}@{address}" if address else resolved


def _disks(request: LaunchRequest, image: BootImage) -> None:
    """``--disk`` files are disk images; ``--kernel`` boots beside a disk IMAGE only."""
    for disk in request.disks:
        inspect_disk(disk, "--disk")
    if request.kernel is not None:
        if not image.is_disk:
            raise UsageError("--kernel goes with a disk IMAGE: this IMAGE is a kernel already")
        inspect_image(request.kernel)


def _debug_elf(request: LaunchRequest) -> Path | None:
    """The ELF with the guest's symbols, when it is not the image: ``--debug-elf``, else
    ``IMAGE.dbg`` beside the image. The session remembers it for every later command."""
    if len(request.debug_elfs) > 1:
        raise UsageError("more than one kernel ELF among the --debug-elf files",
                         hint="pass one kernel; the others must be programs")
    for given in request.debug_elfs:
        if "@" in given.name and not given.exists():
            raise UsageError(f"--debug-elf {given}: load addresses (FILE@ADDR) are not "
                             "supported yet", hint="pass the ELF alone")
        return check_debug_elf(given, "--debug-elf")
    beside = debug_elf_beside(request.image)
    return check_debug_elf(beside, "the debug ELF") if beside is not None else None


def _claim(request: LaunchRequest) -> SessionClaim:
    if request.name is not None:
        return SessionDir.named(request.name).claim()
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", request.image.stem).lstrip("-._")[:40] or "guest"
    return claim_default_name(stem)


@dataclass
class Launched:
    """A started guest: the caller holds ``claim`` (releasing it leaves the session to the
    supervisor); ``warnings`` are what looked wrong but did not stop the start."""

    claim: SessionClaim
    status: GuestStatus
    warnings: list[str]


def launch_guest(request: LaunchRequest) -> Launched:
    """Check everything a user could get wrong, then start the guest's supervisor."""
    image = inspect_image(request.image)
    warnings = []
    if image.cmdline_max is not None and len(request.append.encode()) > image.cmdline_max:
        warnings.append(f"--append is {len(request.append.encode())} bytes but this "
                        f"{image.description} takes at most {image.cmdline_max}: the rest "
                        "is dropped")
    forwards = [str(Forward.parse(forward).bound()) for forward in request.forwards]
    check_machine(request.memory_mb, request.smp, request.machine, request.disk_if)
    _disks(request, image)
    programs = [_program(p) for p in request.programs]
    if request.sysroot is not None and not request.sysroot.is_dir():
        raise UsageError(f"--sysroot {request.sysroot} is not a directory")
    find_qemu()
    accel = choose_accel(request.accel)
    if request.trace_file is not None:
        if not request.trace:
            raise UsageError("--trace-file needs the trace port: drop --no-trace")
        _check_trace_file(request.trace_file)
    debug_elf = _debug_elf(request)
    claim = _claim(request)
    spec = SessionSpec(
        mode="launch", image=str(image.path.resolve()),
        elf=str(debug_elf) if debug_elf is not None else None, accel=accel.name,
        accel_reason=accel.reason, memory_mb=request.memory_mb, smp=request.smp,
        append=request.append, forwards=forwards, start_paused=request.paused,
        trace=request.trace,
        trace_file=str(request.trace_file.resolve()) if request.trace_file else None,
        trace_max_size=request.trace_max_size, machine=request.machine,
        image_is_disk=image.is_disk,
        kernel=str(request.kernel.resolve()) if request.kernel else None,
        disks=[str(d.resolve()) for d in request.disks], disk_if=request.disk_if,
        devices=list(request.devices), programs=programs,
        sysroot=str(request.sysroot.resolve()) if request.sysroot else None)
    try:
        launched = Launched(claim, start_supervisor(claim, spec), warnings)
    except BaseException:
        claim.remove()
        raise
    if request.traceparent is not None:
        from tracers.export.traceparent import parse_traceparent

        if isinstance(problem := parse_traceparent(request.traceparent), str):
            warnings.append(f"--traceparent {escape(request.traceparent)!r}: {problem}; "
                            "trace export will give the guest's spans no parent")
    if request.trace:
        for recording in (claim.session.trace_file, request.trace_file):
            if recording is not None and (debug_elf is not None or not image.is_disk):
                _write_origin(recording, debug_elf or image.path, image.path,
                              claim.session.name, request.traceparent, warnings)
    return launched


def _write_origin(trace_file: Path, elf: Path, image: Path, name: str,
                  traceparent: str | None, warnings: list[str]) -> None:
    """``FILE.origin`` beside a recording: later commands on the file find the ELF
    there, and export the trace parent (tracers/origin.py)."""
    from tracers.origin import write_origin

    try:
        write_origin(trace_file, elf=elf, image=image, session=name, traceparent=traceparent)
    except OSError as exc:
        warnings.append(f"cannot write {trace_file}.origin: {exc.strerror}; trace commands "
                        "on the file will need --elf")
