"""The per-guest supervisor process: a :class:`~undebug.session.guest.Guest` and the
control server that lets any number of front ends use it over a 0600 unix socket
(protocol: docs/protocol.md). Clients come and go without disturbing the guest: what a
client held (a freeze, its ``gdb`` breakpoints) is released when it goes, and only an
``own`` client's end ends the guest.

Run it as ``python -m undebug.session.supervisor SESSION_DIR LOCK_FD``; the directory
holds ``spec.json`` written by the CLI, the fd the session's lock the CLI holds (store.py).
The first line on stdout says ready or why not.
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import json
import logging
import math
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from undebug.errors import UndebugError
from undebug.session import nethost, qemu_core
from undebug.session.breakpoints import MAX_WATCH, OWNERS, WATCHES
from undebug.session.guest import Guest
from undebug.session.protocol import (
    MAX_LINE,
    PROTOCOL_VERSION,
    ErrorCode,
    ProtocolError,
    decode,
    encode,
)
from undebug.session.runcontrol import RequestError
from undebug.session.spec import SessionSpec
from undebug.session.store import SessionDir

log = logging.getLogger("undebug.supervisor")

MAX_READ = 16 << 20
MAX_WHEN_VALUES = 64  # a crash breakpoint condition's values (signals: < 65)


class ControlServer:
    """Serves one guest's clients: each request becomes a call on the :class:`Guest`."""

    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        self._pumps: set[asyncio.Task[None]] = set()  # each subscriber's event sender

    async def quiesce(self, timeout: float) -> None:
        """Let the last events (the guest's end) and replies out before the process
        ends: the pumps finish once they have sent the end; a few loop turns flush the
        replies already written."""
        pumps = [task for task in self._pumps if not task.done()]
        if pumps:
            await asyncio.wait(pumps, timeout=timeout)
        for _ in range(3):
            await asyncio.sleep(0)

    async def handle(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        guest = self.guest
        if op == "hello":
            return {"protocol": PROTOCOL_VERSION, "name": guest.session.name}
        if op == "status":
            return await guest.live_status()
        if op == "pause":
            await guest.pause()
            return guest.status()
        if op == "resume":
            await guest.resume()
            return guest.status()
        if op in ("read_memory", "read_physical"):
            address = _int_arg(args, "address", 0, 2**64 - 1)
            size = _int_arg(args, "size", 0, MAX_READ)
            read = guest.read_memory if op == "read_memory" else guest.read_physical
            data = await read(address, size)
            return {"address": address, "data": base64.b64encode(data).decode()}
        if op == "read_registers":
            cpu = None if args.get("cpu") is None else _int_arg(args, "cpu", 0, 4095)
            return {"cpus": await guest.read_registers(cpu)}
        if op == "break_insert":
            address = _int_arg(args, "address", 0, 2**64 - 1)
            owner = args.get("owner", "cli")
            if owner not in OWNERS:
                raise RequestError(ErrorCode.BAD_REQUEST, f"owner must be one of {OWNERS}")
            when, when_memory = None, None
            if args.get("when_register") is not None:
                when = (str(args["when_register"]), _int_arg(args, "when_value", 0, 2**64 - 1))
                when_memory = _when_memory(args)
            watch = args.get("watch")
            if watch is not None and watch not in WATCHES:
                raise RequestError(ErrorCode.BAD_REQUEST, f"watch must be one of {WATCHES}")
            length = _int_arg(args, "length", 1, MAX_WATCH) if watch is not None else 1
            bp = await guest.insert_breakpoint(address, bool(args.get("hardware")),
                                               str(args.get("location") or hex(address)), owner,
                                               when, watch, length, when_memory)
            return bp.to_json()
        if op == "break_delete":
            return (await guest.delete_breakpoint(_int_arg(args, "id", 1, 2**31))).to_json()
        if op == "step":
            cpu = _int_arg(args, "cpu", 0, 4095) if args.get("cpu") is not None else \
                (guest.last_stop or {}).get("cpu") or 0
            return await guest.step(cpu)
        if op == "write_memory":
            address = _int_arg(args, "address", 0, 2**64 - 1)
            try:
                data = base64.b64decode(str(args.get("data", "")), validate=True)
            except ValueError:
                raise RequestError(ErrorCode.BAD_REQUEST, "data must be base64") from None
            await guest.write_memory(address, data)
            return {"address": address, "size": len(data)}
        if op == "write_registers":
            cpu = _int_arg(args, "cpu", 0, 4095)
            values = args.get("registers")
            if not isinstance(values, dict) or not all(
                    isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                    and v >= 0 for k, v in values.items()):
                raise RequestError(ErrorCode.BAD_REQUEST,
                                   "registers must map names to non-negative integers")
            await guest.write_registers(cpu, values)
            return {"cpu": cpu}
        if op == "target_xml":
            return {"files": await guest.target_xml()}
        if op == "machine_map":
            return {"ranges": [r.to_json() for r in await guest.machine_map()]}
        if op == "net_host":
            return await nethost.host_view(guest.qmp)
        if op == "capture_start":
            return await nethost.capture_start(guest.qmp, str(args.get("file", "")),
                                               str(args.get("netdev", "net0")))
        if op == "capture_stop":
            return await nethost.capture_stop(guest.qmp)
        if op == "qemu_core":
            timeout = args.get("timeout", qemu_core.MAX_WAIT)
            if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or \
                    not math.isfinite(timeout):
                raise RequestError(ErrorCode.BAD_REQUEST, "timeout must be a number")
            return await qemu_core.qemu_core(guest.qmp, str(args.get("file", "")),
                                             float(timeout))
        if op == "process_ram":
            return guest.process_ram()
        if op == "kill":
            await guest.shutdown()
            return {"outcome": guest.outcome.to_json() if guest.outcome else None}
        raise RequestError(ErrorCode.BAD_REQUEST, f"unknown op {op!r}")

    async def serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        owner = False
        freezes = 0  # this connection's holds on the guest, released when it goes
        breakpoints: set[int] = set()  # this connection's "gdb" breakpoints, deleted then
        live = False  # this connection holds a live-trace lease (trace_live), ended then
        events: asyncio.Queue[dict[str, Any] | None] | None = None
        write_lock = asyncio.Lock()

        async def send(message: dict[str, Any], fds: list[int] | None = None) -> None:
            async with write_lock:
                if fds:
                    await writer.drain()
                    await _send_with_fds(writer, encode(message), fds)
                else:
                    writer.write(encode(message))
                    await writer.drain()

        async def pump(queue: asyncio.Queue[dict[str, Any] | None]) -> None:
            while (event := await queue.get()) is not None:
                await send({"event": event})

        pump_task: asyncio.Task[None] | None = None
        try:
            while line := await reader.readline():
                try:
                    request = decode(line)
                    request_id, op = request.get("id"), request.get("op")
                    args = request.get("args") or {}
                    if not isinstance(op, str) or not isinstance(args, dict):
                        raise RequestError(ErrorCode.BAD_REQUEST, "a request needs op and args")
                    result: dict[str, Any] = {}
                    fds: list[int] = []
                    if op == "own":
                        owner = True
                    elif op == "freeze":
                        await self.guest.freeze()
                        freezes += 1
                        result = {"run_token": self.guest.run_token}
                    elif op == "thaw":
                        if freezes:
                            freezes -= 1
                            await self.guest.thaw()
                    elif op == "memory_fd":
                        result, fds = self.guest.memory_fd()
                    elif op == "trace_live":
                        leases = self.guest.live_trace
                        if leases is None:
                            raise RequestError(ErrorCode.UNSUPPORTED,
                                               "this guest's trace is not recorded")
                        if not live:
                            leases.acquire()
                            live = True
                            self.guest.write_record()
                        result = leases.status()
                    elif op == "subscribe":
                        if events is None:
                            events = asyncio.Queue()
                            self.guest.subscribers.add(events)
                    else:
                        result = await self.handle(op, args)
                    if op == "break_insert" and result.get("owner") == "gdb":
                        breakpoints.add(result["id"])
                    await send({"id": request_id, "ok": True, "result": result}, fds)
                    if op == "subscribe" and pump_task is None and events is not None:
                        pump_task = asyncio.create_task(pump(events))
                        self._pumps.add(pump_task)
                        pump_task.add_done_callback(self._pumps.discard)
                        if self.guest.ended.is_set():
                            events.put_nowait(None)
                except (ProtocolError, RequestError) as exc:
                    code = exc.code if isinstance(exc, RequestError) else ErrorCode.BAD_REQUEST
                    await send({"id": None if isinstance(exc, ProtocolError) else request_id,
                                "ok": False, "error": {"code": code, "message": str(exc)}})
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            if events is not None:
                self.guest.subscribers.discard(events)
            if pump_task is not None:
                pump_task.cancel()
            writer.close()
            if live and self.guest.live_trace is not None:
                self.guest.live_trace.release()
                self.guest.write_record()
            for bp_id in sorted(breakpoints):  # unless deleted meanwhile
                with contextlib.suppress(RequestError):
                    await self.guest.delete_breakpoint(bp_id)
            for _ in range(freezes):
                with contextlib.suppress(RequestError):
                    await self.guest.thaw()
            if owner and not self.guest.ended.is_set():
                log.info("the owning client went away: ending the guest")
                self.guest.spawn(self.guest.shutdown())


async def _send_with_fds(writer: asyncio.StreamWriter, data: bytes, fds: list[int]) -> None:
    """Send ``data`` with ``fds`` attached (SCM_RIGHTS) on the stream's socket."""
    sock = writer.get_extra_info("socket").dup()
    try:
        sent = 0
        while sent == 0:
            try:
                sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                              array.array("i", fds))])
            except BlockingIOError:
                await asyncio.sleep(0.001)
        if sent < len(data):
            writer.write(data[sent:])
            await writer.drain()
    finally:
        sock.close()


def _when_memory(args: dict[str, Any]) -> tuple[int, tuple[int, ...]] | None:
    """A crash breakpoint's condition on memory: (offset, values), at most 64 values."""
    if args.get("when_offset") is None:
        return None
    values = args.get("when_values") or []
    if not isinstance(values, list) or len(values) > MAX_WHEN_VALUES:
        raise RequestError(ErrorCode.BAD_REQUEST,
                           f"when_values must be a list of at most {MAX_WHEN_VALUES} integers")
    checked = tuple(_int_arg({"when_values": v}, "when_values", 0, 2**32 - 1) for v in values)
    return _int_arg(args, "when_offset", 0, 2**32 - 1), checked


def _int_arg(args: dict[str, Any], key: str, low: int, high: int) -> int:
    value = args.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RequestError(ErrorCode.BAD_REQUEST, f"{key} must be an integer in [{low}, {high}]")
    return value


async def run(session: SessionDir) -> int:
    spec = SessionSpec.load(session.path)
    guest = Guest(session, spec)
    server_for_clients = ControlServer(guest)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, lambda: guest.spawn(guest.shutdown()))
    server = None
    try:
        await guest.start()
        server = await asyncio.start_unix_server(
            server_for_clients.serve_client, path=str(session.control_socket), limit=MAX_LINE)
        _report_ready({"ready": True, "status": guest.status()})
        await guest.ended.wait()
        await server_for_clients.quiesce(0.5)
        return 0
    except (UndebugError, RequestError) as exc:
        message = exc.message if isinstance(exc, UndebugError) else str(exc)
        log.error("start failed: %s", message)
        _report_ready({"ready": False, "error": message,
                       "hint": exc.hint if isinstance(exc, UndebugError) else None})
        return 1
    except Exception as exc:
        log.exception("supervisor failed")
        _report_ready({"ready": False, "internal": True,
                       "error": f"internal error in the supervisor: {exc!r}"})
        return 1
    finally:
        if server is not None:
            server.close()
        if not guest.ended.is_set():
            await guest.shutdown()
        await guest.close()
        guest.write_record()
        with contextlib.suppress(FileNotFoundError):
            session.control_socket.unlink()


def _report_ready(message: dict[str, Any]) -> None:
    """Tell the CLI that started us, then let go of its pipe."""
    with contextlib.suppress(OSError):
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)


def main() -> int:
    """``SESSION_DIR LOCK_FD``: the fd holds the session's lock (store.py); it stays open,
    never inherited by QEMU, until this process ends."""
    os.umask(0o077)
    session = SessionDir(Path(sys.argv[1]))
    os.set_inheritable(int(sys.argv[2]), False)
    logging.basicConfig(filename=session.supervisor_log, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    return asyncio.run(run(session))


if __name__ == "__main__":
    sys.exit(main())
