"""The supervisor's QMP connection to QEMU: run-state events, queries, ``quit``.

QMP is how the supervisor hears that the guest panicked (pvpanic), reset or powered off,
and how it learns what an adopted QEMU's machine is. ``qemu.qmp`` is imported only when
a connection is made (start-up time of everything else).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

from undebug.errors import UndebugError
from undebug.session.adopted_ram import peer_pid
from undebug.session.machine_map import DeviceRange, machine_map
from undebug.session.protocol import ErrorCode
from undebug.session.ram import pmemsave
from undebug.session.runcontrol import RequestError

__all__ = ["EVENTS", "QmpLink", "request"]

log = logging.getLogger("undebug.supervisor")

EVENTS = ("STOP", "RESUME", "GUEST_PANICKED", "SHUTDOWN")
CONNECT_TIMEOUT = 10.0


class QmpLink:
    """One QMP connection (a ``qemu.qmp.QMPClient``); ``peer_pid`` is QEMU's pid when the
    socket is a unix one (its peer credentials), else None."""

    def __init__(self, client: Any, peer_pid: int | None = None) -> None:
        self.client = client
        self.peer_pid = peer_pid

    @classmethod
    async def connect(cls, name: str, address: str | tuple[str, int]) -> QmpLink:
        from qemu.qmp import QMPClient

        client = QMPClient(name)
        pid = None
        try:
            if isinstance(address, str):  # our own socket, to ask who is at the other end
                sock = socket.socket(socket.AF_UNIX)
                sock.setblocking(False)
                try:
                    await asyncio.wait_for(asyncio.get_running_loop().sock_connect(
                        sock, address), CONNECT_TIMEOUT)
                    pid = peer_pid(sock)
                except BaseException:
                    sock.close()
                    raise
                await asyncio.wait_for(client.connect(sock), CONNECT_TIMEOUT)
            else:
                await asyncio.wait_for(client.connect(address), CONNECT_TIMEOUT)
        except Exception as exc:
            shown = address if isinstance(address, str) else f"{address[0]}:{address[1]}"
            raise UndebugError(f"cannot connect to QMP at {shown}: {exc}") from None
        return cls(client, pid)

    async def hmp(self, command: str) -> str:
        """An HMP command's text answer (``human-monitor-command``): text for humans, to
        be parsed defensively."""
        reply = await self.client.execute("human-monitor-command", {"command-line": command})
        return reply if isinstance(reply, str) else ""

    async def events(self) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """(name, data) of each run-state event (:data:`EVENTS`), as QEMU sends them."""
        from qemu.qmp import EventListener

        listener = EventListener(EVENTS)
        self.client.register_listener(listener)
        async for event in listener:
            raw = event.get("data")
            data: dict[str, Any] = raw if isinstance(raw, dict) else {}
            log.info("QMP event %s %s", event["event"], data)
            yield str(event["event"]), data

    async def machine(self) -> dict[str, Any]:
        """What an adopted QEMU runs (our spec does not say): accelerator, vCPUs, RAM."""
        kvm = await self.client.execute("query-kvm")
        cpus = await self.client.execute("query-cpus-fast")
        memory = await self.client.execute("query-memory-size-summary")
        return {"accel": "kvm" if kvm.get("enabled") else "tcg",
                "accel_reason": "as the adopted QEMU runs", "smp": len(cpus),
                "memory_mb": int(memory.get("base-memory", 0)) >> 20}

    async def status(self, timeout: float | None = None) -> dict[str, Any]:
        """``query-status``: ``running`` and ``status`` (QEMU's run state)."""
        reply: dict[str, Any] = await asyncio.wait_for(
            self.client.execute("query-status"), timeout)
        return reply

    async def quit(self, timeout: float) -> None:
        await asyncio.wait_for(self.client.execute("quit"), timeout)

    async def pmemsave(self, address: int, size: int) -> bytes:
        return await pmemsave(self.client, address, size)

    async def machine_map(self, timeout: float = 10.0) -> list[DeviceRange]:
        return await asyncio.wait_for(machine_map(self.client), timeout)

    async def disconnect(self, timeout: float) -> None:
        await asyncio.wait_for(self.client.disconnect(), timeout)


async def request(qmp: QmpLink | None, command: str, **args: Any) -> Any:
    """A QMP command for a client's request: its answer, or the RequestError the
    client is sent (no QMP connection; QEMU refused it)."""
    if qmp is None:
        raise RequestError(ErrorCode.UNSUPPORTED, "no QMP connection to this guest's QEMU")
    from qemu.qmp import ExecuteError

    try:
        return await qmp.client.execute(command, args or None)
    except ExecuteError as exc:
        raise RequestError(ErrorCode.BAD_REQUEST, f"QEMU refused {command}: {exc}") \
            from None
