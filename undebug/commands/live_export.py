"""The live export's footprint in a guest's session: ``run --otlp`` starts
``trace export NAME --otlp URL --follow`` in a process of its own (the supervisor imports
no exporter), which keeps its counts in the session's ``export.json`` for ``ps``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from undebug.session.store import SessionDir

if TYPE_CHECKING:
    import subprocess

    from tracers.export.otlp import OtlpDelivery

__all__ = ["export_state", "progress", "start_live_export"]


def progress(args: argparse.Namespace) -> Callable[[OtlpDelivery], None] | None:
    """Following a guest: its session's export state, rewritten after each request (0600,
    replaced whole), for ``ps``; None for a file."""
    from undebug.commands.trace import _is_file

    if not args.follow or _is_file(args.source):
        return None
    path = SessionDir.named(args.source).export_state

    def write(delivery: OtlpDelivery) -> None:
        doc = {"pid": os.getpid(), "endpoint": delivery.endpoint,
               "exported": delivery.exported, "not_exported": delivery.not_exported,
               "dropped": delivery.dropped, "retries": delivery.retries,
               "last_error": delivery.last_error}
        tmp = path.with_name(path.name + ".tmp")
        with contextlib.suppress(OSError):  # the guest's directory may be gone: no matter
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(doc) + "\n")
            os.replace(tmp, path)
    return write


def start_live_export(session: SessionDir, url: str) -> subprocess.Popen[bytes]:
    """``run --otlp``: the live export in a process of its own (the supervisor imports no
    exporter), its output in the session's export.log; it ends with the guest."""
    import subprocess  # only run --otlp needs it (startup: tests/test_startup.py)
    import sys

    fd = os.open(session.export_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "undebug.cli", "trace", "export",
                                 session.name, "--otlp", url, "--follow"],
                                stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                start_new_session=True)
    finally:
        os.close(fd)
    return proc


def export_state(name: str) -> dict[str, object] | None:
    """The live export's counts (``trace export NAME --follow``, ``run --otlp``), or None."""
    try:
        with open(SessionDir.named(name).export_state, "rb") as f:
            doc = json.loads(f.read(1 << 16))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None
