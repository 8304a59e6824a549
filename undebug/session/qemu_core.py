"""QEMU's own ELF dump of the guest (``dump-guest-memory``), for ``undebug dump
--qemu-core``: the supervisor runs it because it owns QMP.

``paging=false`` always: with paging QEMU walks the guest's page tables itself, which
garbled the identity-mapped reference guest and can make it allocate gigabytes. The dump
runs detached and is followed with ``query-dump`` (its progress in bytes), at most
``timeout`` seconds: QEMU has no way to cancel it, so a dump still running then is
reported as such and QEMU finishes it on its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from undebug.session.protocol import ErrorCode
from undebug.session.qmp_link import QmpLink, request
from undebug.session.runcontrol import RequestError

__all__ = ["MAX_WAIT", "qemu_core"]

MAX_WAIT = 45.0  # below the client's 60 s socket timeout
POLL = 0.05


async def qemu_core(qmp: QmpLink | None, path: str, timeout: float) -> dict[str, Any]:
    """Have QEMU write its ELF core to ``path`` (absolute; the caller made the file);
    ``status`` (``completed``), ``completed`` and ``total`` bytes, ``seconds``. An error
    when QEMU refuses, fails or is still writing after ``timeout``."""
    if not path.startswith("/") or "\n" in path:
        raise RequestError(ErrorCode.BAD_REQUEST, "the core file must be an absolute path")
    started = time.monotonic()
    await request(qmp, "dump-guest-memory", paging=False, protocol=f"file:{path}",
                  detach=True, format="elf")
    deadline = started + min(max(timeout, 0.1), MAX_WAIT)
    while True:
        progress = await request(qmp, "query-dump")
        status = progress.get("status") if isinstance(progress, dict) else None
        if status == "completed":
            break
        if status == "failed":
            raise RequestError(ErrorCode.INTERNAL, "QEMU's dump-guest-memory failed")
        if time.monotonic() > deadline:
            raise RequestError(ErrorCode.INTERNAL, f"QEMU's dump-guest-memory was still "
                               f"writing after {deadline - started:.0f} s ({status}, "
                               f"{progress.get('completed')} of {progress.get('total')} "
                               "bytes): QEMU finishes it on its own")
        await asyncio.sleep(POLL)
    return {"file": path, "status": status, "completed": progress.get("completed"),
            "total": progress.get("total"),
            "seconds": round(time.monotonic() - started, 3)}
