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
from typing import Any

from undebug.errors import UndebugError, UsageError
from undebug.session.spec import SessionSpec
from undebug.session.store import SessionDir, validate_name
from undebug.vm.accel import choose_accel
from undebug.vm.image import inspect_image
from undebug.vm.qemu import Forward, QemuConfig, find_qemu

__all__ = ["LaunchRequest", "launch_guest", "start_supervisor"]

READY_TIMEOUT = 30.0


def start_supervisor(session: SessionDir, spec: SessionSpec) -> dict[str, Any]:
    """Launch the supervisor for ``spec`` in ``session`` and return its first status."""
    spec.save(session.path)
    log = os.fdopen(os.open(session.supervisor_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                            0o600), "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "undebug.session.supervisor", str(session.path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
        start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    log.close()
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        ready, _, _ = select.select([process.stdout], [], [], max(0.0, remaining))
        if not ready:
            process.kill()
            raise UndebugError(f"the supervisor did not start within {READY_TIMEOUT:g} s "
                               f"(log: {session.supervisor_log})")
        chunk = os.read(process.stdout.fileno(), 4096)
        if not chunk:
            break
        line += chunk
    process.stdout.close()
    try:
        message = json.loads(line)
    except ValueError:
        process.wait(5)
        raise UndebugError(f"the supervisor failed to start (log: {session.supervisor_log})") \
            from None
    if not message.get("ready"):
        process.wait(5)
        raise UsageError(str(message.get("error", "unknown error")),
                         hint=f"supervisor log: {session.supervisor_log}")
    status: dict[str, Any] = message["status"]
    return status


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


def _default_name(image: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]", "-", image.stem).lstrip("-._")[:40] or "guest"
    for n in range(1, 1000):
        name = stem if n == 1 else f"{stem}-{n}"
        session = SessionDir.named(name)
        if not session.path.exists() or not session.is_alive():
            return name
    raise UsageError(f"no free name for {image.stem}; pass --name")


def launch_guest(request: LaunchRequest) -> tuple[SessionDir, dict[str, Any]]:
    """Check everything a user could get wrong, then start the guest's supervisor."""
    image = inspect_image(request.image)
    forwards = tuple(Forward.parse(f) for f in request.forwards)
    find_qemu()
    accel = choose_accel(request.accel)
    if request.trace_file is not None:
        if not request.trace:
            raise UsageError("--trace-file needs the trace port: drop --no-trace")
        if not request.trace_file.parent.is_dir():
            raise UsageError(f"--trace-file {request.trace_file}: no directory "
                             f"{request.trace_file.parent}")
    name = validate_name(request.name) if request.name else _default_name(request.image)
    session = SessionDir.named(name)
    QemuConfig(image.path, accel, session.path, request.memory_mb, request.smp,
               request.append, forwards).validate()
    session.create()
    spec = SessionSpec(
        mode="launch", image=str(image.path.resolve()), accel=accel.name,
        accel_reason=accel.reason, memory_mb=request.memory_mb, smp=request.smp,
        append=request.append, forwards=list(request.forwards), start_paused=request.paused,
        trace=request.trace,
        trace_file=str(request.trace_file.resolve()) if request.trace_file else None,
        trace_max_size=request.trace_max_size)
    try:
        return session, start_supervisor(session, spec)
    except BaseException:
        if not session.is_alive():
            session.remove()
        raise
