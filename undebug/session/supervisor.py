"""The per-guest supervisor: the one process that owns QEMU, its gdbstub and QMP.

QEMU's gdbstub takes a single client, pauses the guest when one connects and resumes it
(and drops its breakpoints) on detach. So one long-lived process per guest holds that
connection and QMP, keeps the run state the user chose, watches for the guest's end, and
serves every front end over a 0600 unix socket (protocol: docs/protocol.md).

Run it as ``python -m undebug.session.supervisor SESSION_DIR``; the directory holds
``spec.json`` written by the CLI. The first line on stdout says ready or why not.
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

from undebug.console import crash_line
from undebug.errors import UndebugError
from undebug.gdb.rsp import RspClient, RspException
from undebug.session import outcome as outcomes
from undebug.session.outcome import Outcome
from undebug.session.protocol import MAX_LINE, ErrorCode, ProtocolError, decode, encode
from undebug.session.spec import SessionSpec
from undebug.session.store import SessionDir, shared_memory_dir
from undebug.text import escape
from undebug.vm.qemu import find_qemu, ram_layout

log = logging.getLogger("undebug.supervisor")

MAX_READ = 16 << 20
QEMU_START_TIMEOUT = 10.0
QEMU_QUIT_TIMEOUT = 5.0
PAUSE_TIMEOUT = 5.0
PR_SET_PDEATHSIG = 1


class RequestError(Exception):
    """A request that fails with a protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _die_with_parent() -> None:
    """In QEMU's child process: get SIGKILL when the supervisor dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Supervisor:
    """Holds one guest. Every request handler runs on the event loop; blocking RSP calls
    run in a worker thread under ``_lock`` so only one conversation with the stub is open."""

    def __init__(self, session: SessionDir, spec: SessionSpec) -> None:
        self.session = session
        self.spec = spec
        self.started = time.time()
        self.qemu: asyncio.subprocess.Process | None = None
        self.qmp: Any = None  # qemu.qmp.QMPClient, imported lazily
        self.rsp: RspClient | None = None
        self.user_paused = spec.start_paused
        self.outcome: Outcome | None = None
        self.machine: dict[str, Any] = {
            "accel": spec.accel, "accel_reason": spec.accel_reason, "smp": spec.smp,
            "memory_mb": spec.memory_mb} if spec.mode == "launch" else {
            "accel": None, "accel_reason": "unknown without --qmp", "smp": None, "memory_mb": None}
        self.ended = asyncio.Event()
        self.ram_path: Path | None = None
        self.ram_fd: int | None = None
        self.run_token = 0  # changes whenever the guest has run: clients' caches key on it
        self._freezes = 0
        self._resume_after_freeze = False
        self._lock = asyncio.Lock()
        self._shutting_down = False
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._tasks: list[asyncio.Task[Any]] = []

    # ---- start-up -------------------------------------------------------------------

    async def start(self) -> None:
        if self.spec.mode == "launch":
            await self._launch_qemu()
        await self._connect_qmp()
        self._take_ram_file()
        await self._connect_rsp()
        if self.spec.mode == "launch" and not self.spec.start_paused:
            await self._resume()
        self.write_record()

    async def _launch_qemu(self) -> None:
        shm = shared_memory_dir()
        if shm is not None:
            self.ram_path = shm / f"{self.session.name}-{os.getpid()}.ram"
        config = dataclasses.replace(self.spec.qemu_config(self.session.path),
                                     ram_file=self.ram_path)
        command = config.command_line(find_qemu())
        log.info("starting %s", " ".join(command))
        stderr = (self.session.path / "qemu.stderr").open("wb")
        self.qemu = await asyncio.create_subprocess_exec(
            *command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr, preexec_fn=_die_with_parent)
        stderr.close()
        self._tasks.append(asyncio.create_task(self._watch_qemu()))
        deadline = time.monotonic() + QEMU_START_TIMEOUT
        while not (config.qmp_socket.exists() and config.gdb_socket.exists()):
            if self.qemu.returncode is not None or self.ended.is_set():
                raise UndebugError(f"QEMU failed to start: {self._qemu_error() or 'no message'}")
            if time.monotonic() > deadline:
                raise UndebugError("QEMU did not open its sockets within 10 s")
            await asyncio.sleep(0.01)

    async def _connect_qmp(self) -> None:
        address = self.spec.qmp_address(self.session.path)
        if address is None:
            return
        from qemu.qmp import QMPClient

        self.qmp = QMPClient(self.session.name)
        try:
            await asyncio.wait_for(self.qmp.connect(address), 10)
        except (TimeoutError, OSError, Exception) as exc:
            raise UndebugError(f"cannot connect to QMP at {address}: {exc}") from None
        self._tasks.append(asyncio.create_task(self._watch_qmp()))
        if self.spec.mode == "attach":
            await self._describe_adopted()

    def _take_ram_file(self) -> None:
        """Keep an fd of QEMU's RAM file and unlink it: clients get the fd, and the RAM
        can never outlive QEMU and us in tmpfs, even after a kill -9."""
        if self.ram_path is None:
            return
        try:
            self.ram_fd = os.open(self.ram_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            log.warning("no shared RAM (%s): reads go through the gdbstub", exc)
        finally:
            with contextlib.suppress(OSError):
                self.ram_path.unlink()

    async def _describe_adopted(self) -> None:
        """An adopted QEMU's machine is not in our spec: ask QMP what it is."""
        kvm = await self.qmp.execute("query-kvm")
        cpus = await self.qmp.execute("query-cpus-fast")
        memory = await self.qmp.execute("query-memory-size-summary")
        self.machine = {"accel": "kvm" if kvm.get("enabled") else "tcg",
                        "accel_reason": "as the adopted QEMU runs", "smp": len(cpus),
                        "memory_mb": int(memory.get("base-memory", 0)) >> 20}

    async def _connect_rsp(self) -> None:
        address = self.spec.gdb_address(self.session.path)
        was_running = False
        if self.spec.mode == "attach" and self.qmp is not None:
            status = await self.qmp.execute("query-status")
            was_running = bool(status.get("running"))
        try:
            self.rsp = await asyncio.to_thread(RspClient.connect, address, 10.0)
        except (OSError, RspException) as exc:
            raise UndebugError(f"cannot connect to the gdbstub at {address}: {exc}") from None
        # Connecting paused a running guest (QEMU then sends an unsolicited stop reply);
        # an attach puts it back as it was.
        if self.spec.mode == "attach" and (was_running or self.rsp.drain_stops()):
            self.user_paused = False
            await self._resume()

    # ---- watching the guest ---------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether the guest runs, as the gdbstub sees it: after our ``c``, until a stop."""
        return self.rsp is not None and self.rsp.is_running and not self.ended.is_set()

    async def _watch_qmp(self) -> None:
        from qemu.qmp import EventListener

        listener = EventListener(("STOP", "RESUME", "GUEST_PANICKED", "SHUTDOWN"))
        self.qmp.register_listener(listener)
        async for event in listener:
            name = str(event["event"])
            raw = event.get("data")
            data: dict[str, Any] = raw if isinstance(raw, dict) else {}
            log.info("QMP event %s %s", name, data)
            if name == "GUEST_PANICKED":
                self._set_outcome(outcomes.from_panic(self._console_crash(), "guest-panicked"))
            elif name == "SHUTDOWN":
                result = outcomes.from_shutdown(data, self._console_crash(), "shutdown")
                self._set_outcome(result)
                if result.kind == "shutdown" or not data.get("guest"):
                    self._spawn(self.shutdown())
            if name == "RESUME":
                self.run_token += 1
            self.broadcast({"type": name.lower()})

    async def _watch_qemu(self) -> None:
        assert self.qemu is not None
        status = await self.qemu.wait()
        log.info("QEMU exited with status %s", status)
        if self.outcome is None or self.outcome.run_state is not None:
            # The guest's own exit (or a crash QEMU was then quit from): keep the first
            # verdict, but record that QEMU is gone.
            first = self.outcome
            ended = outcomes.from_exit_status(status, self._qemu_error(), self._console_crash())
            self.outcome = ended if first is None else Outcome(
                first.kind, first.reason, first.ok, first.exit_code, None)
        self._finish()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks.append(asyncio.create_task(coro))

    def _set_outcome(self, result: Outcome) -> None:
        if self.outcome is None:
            self.outcome = result
            self.write_record()
            self.broadcast({"type": "ended" if result.run_state is None else "crashed",
                            "outcome": result.to_json()})

    def _finish(self) -> None:
        if self.ended.is_set():
            return
        self.ended.set()
        self.write_record()
        self.broadcast({"type": "ended", "outcome": self.outcome.to_json() if self.outcome else None})
        for queue in self._subscribers:
            queue.put_nowait(None)

    def _console_crash(self) -> str | None:
        line = crash_line(self.session.console_log)
        return escape(line) if line is not None else None

    def _qemu_error(self) -> str | None:
        try:
            text = (self.session.path / "qemu.stderr").read_bytes()[-2000:]
        except OSError:
            return None
        lines = [escape(line) for line in text.decode(errors="replace").splitlines() if line]
        return lines[-1] if lines else None

    # ---- run control ----------------------------------------------------------------

    def _check_alive(self) -> RspClient:
        if self.ended.is_set() or self.rsp is None:
            raise RequestError(ErrorCode.GUEST_ENDED, "the guest has ended")
        return self.rsp

    async def _resume(self) -> None:
        rsp = self._check_alive()
        if self.outcome is not None:
            raise RequestError(ErrorCode.GUEST_CRASHED,
                               f"the guest cannot run on: {self.outcome.reason}")
        await self._stub(rsp.cont)
        self.run_token += 1

    async def _pause(self) -> None:
        rsp = self._check_alive()
        if self.running:
            await self._stub(rsp.interrupt, PAUSE_TIMEOUT)

    @contextlib.asynccontextmanager
    async def paused(self) -> AsyncIterator[RspClient]:
        """Hold the guest still for a read and put it back as the user left it."""
        async with self._lock:
            rsp = self._check_alive()
            was_running = self.running
            await self._pause()
            try:
                yield rsp
            finally:
                if was_running and not self.ended.is_set() and self.outcome is None:
                    await self._resume()

    # ---- requests -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        if self.ended.is_set():
            state = "ended"
        elif self.outcome is not None:
            state = self.outcome.run_state or "ended"
        else:
            state = "running" if self.running else "paused"
        return {
            "name": self.session.name,
            "state": state,
            "user_paused": self.user_paused,
            "mode": self.spec.mode,
            "image": self.spec.image,
            "elf": self.spec.elf or self.spec.image,
            **self.machine,
            "append": self.spec.append,
            "forwards": self.spec.forwards,
            "supervisor_pid": os.getpid(),
            "qemu_pid": self.qemu.pid if self.qemu else None,
            "started": self.started,
            "uptime_s": round(time.time() - self.started, 3),
            "outcome": self.outcome.to_json() if self.outcome else None,
            "console": str(self.session.console_log),
            "run_token": self.run_token,
            "frozen": self._freezes > 0,
            "shared_ram": self.ram_fd is not None,
        }

    def write_record(self) -> None:
        self.session.write_record(self.status())

    async def handle(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        handler = self._handlers().get(op)
        if handler is None:
            raise RequestError(ErrorCode.BAD_REQUEST, f"unknown op {op!r}")
        result: dict[str, Any] = await handler(args)
        return result

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {"hello": self._op_hello, "status": self._op_status, "pause": self._op_pause,
                "resume": self._op_resume, "read_memory": self._op_read_memory,
                "read_registers": self._op_read_registers, "kill": self._op_kill,
                "read_physical": self._op_read_physical}

    async def _op_hello(self, args: dict[str, Any]) -> dict[str, Any]:
        from undebug.session.protocol import PROTOCOL_VERSION

        return {"protocol": PROTOCOL_VERSION, "name": self.session.name}

    async def _op_status(self, args: dict[str, Any]) -> dict[str, Any]:
        status = self.status()
        if self.qmp is not None and not self.ended.is_set():
            with contextlib.suppress(Exception):
                reply = await asyncio.wait_for(self.qmp.execute("query-status"), 2)
                status["qemu_state"] = reply.get("status")
        return status

    async def _op_pause(self, args: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            await self._pause()
            self.user_paused = True
            self._resume_after_freeze = False
        self.write_record()
        return self.status()

    async def _op_resume(self, args: dict[str, Any]) -> dict[str, Any]:
        async with self._lock:
            self.user_paused = False
            if self._freezes:
                self._resume_after_freeze = True  # once the inspecting clients let go
            elif not self.running:
                await self._resume()
        self.write_record()
        return self.status()

    async def freeze(self) -> None:
        """Hold the guest still across many requests (one inspection command)."""
        async with self._lock:
            self._check_alive()
            if self._freezes == 0:
                self._resume_after_freeze = self.running
                await self._pause()
            self._freezes += 1

    async def thaw(self) -> None:
        async with self._lock:
            self._freezes = max(0, self._freezes - 1)
            if self._freezes or not self._resume_after_freeze:
                return
            self._resume_after_freeze = False
            if not self.ended.is_set() and self.outcome is None and not self.user_paused:
                await self._resume()

    async def _op_read_physical(self, args: dict[str, Any]) -> dict[str, Any]:
        address, size = _int_arg(args, "address", 0, 2**64 - 1), _int_arg(args, "size", 0, MAX_READ)
        async with self.paused() as rsp:
            data = await self._stub(rsp.read_physical, address, size)
        return {"address": address, "data": base64.b64encode(data).decode()}

    async def _op_read_memory(self, args: dict[str, Any]) -> dict[str, Any]:
        address, size = _int_arg(args, "address", 0, 2**64 - 1), _int_arg(args, "size", 0, MAX_READ)
        async with self.paused() as rsp:
            data = await self._stub(rsp.read_memory, address, size)
        return {"address": address, "data": base64.b64encode(data).decode()}

    async def _op_read_registers(self, args: dict[str, Any]) -> dict[str, Any]:
        async with self.paused() as rsp:
            threads = await self._stub(rsp.threads)
            wanted = range(len(threads)) if args.get("cpu") is None else [
                _int_arg(args, "cpu", 0, len(threads) - 1)]
            cpus = []
            for cpu in wanted:
                registers = await self._stub(rsp.registers, threads[cpu])
                cpus.append({"cpu": cpu, "stub_thread": str(threads[cpu]),
                             "registers": registers})
        return {"cpus": cpus}

    async def _op_kill(self, args: dict[str, Any]) -> dict[str, Any]:
        await self.shutdown()
        return {"outcome": self.outcome.to_json() if self.outcome else None}

    def _memory_fd(self) -> tuple[dict[str, Any], list[int]]:
        if self.ram_fd is None or self.ended.is_set():
            raise RequestError(ErrorCode.UNSUPPORTED, "guest RAM is not shared with undebug")
        layout = ram_layout(int(self.machine["memory_mb"]))
        return {"size": os.fstat(self.ram_fd).st_size,
                "layout": [[r.physical, r.offset, r.size] for r in layout]}, [self.ram_fd]

    async def _stub(self, func: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(func, *args)
        except RspException as exc:
            raise RequestError(ErrorCode.STUB, str(exc)) from None

    # ---- clients --------------------------------------------------------------------

    def broadcast(self, event: dict[str, Any]) -> None:
        event = {"time": time.time(), **event}
        for queue in self._subscribers:
            queue.put_nowait(event)

    async def serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        owner = False
        freezes = 0  # this connection's holds on the guest, released when it goes
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
                        await self.freeze()
                        freezes += 1
                        result = {"run_token": self.run_token}
                    elif op == "thaw":
                        if freezes:
                            freezes -= 1
                            await self.thaw()
                    elif op == "memory_fd":
                        result, fds = self._memory_fd()
                    elif op == "subscribe":
                        if events is None:
                            events = asyncio.Queue()
                            self._subscribers.add(events)
                    else:
                        result = await self.handle(op, args)
                    await send({"id": request_id, "ok": True, "result": result}, fds)
                    if op == "subscribe" and pump_task is None and events is not None:
                        pump_task = asyncio.create_task(pump(events))
                        if self.ended.is_set():
                            events.put_nowait(None)
                except (ProtocolError, RequestError) as exc:
                    code = exc.code if isinstance(exc, RequestError) else ErrorCode.BAD_REQUEST
                    await send({"id": None if isinstance(exc, ProtocolError) else request_id,
                                "ok": False, "error": {"code": code, "message": str(exc)}})
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            if events is not None:
                self._subscribers.discard(events)
            if pump_task is not None:
                pump_task.cancel()
            writer.close()
            for _ in range(freezes):
                with contextlib.suppress(RequestError):
                    await self.thaw()
            if owner and not self.ended.is_set():
                log.info("the owning client went away: ending the guest")
                self._spawn(self.shutdown())

    # ---- the end --------------------------------------------------------------------

    async def shutdown(self) -> None:
        """End the guest: quit QEMU we started, or detach from one we adopted."""
        if self._shutting_down:
            await self.ended.wait()
            return
        self._shutting_down = True
        if self.spec.mode == "attach":
            if self.rsp is not None:
                with contextlib.suppress(RspException, OSError):
                    await asyncio.to_thread(self.rsp.detach)
            if self.outcome is None:
                self.outcome = Outcome("killed", "detached; the guest runs on", True)
            self._finish()
            return
        if self.outcome is None:
            self.outcome = Outcome("killed", "killed by undebug", False)
        if self.qemu is not None and self.qemu.returncode is None:
            if self.qmp is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.qmp.execute("quit"), 2)
            try:
                await asyncio.wait_for(self.ended.wait(), QEMU_QUIT_TIMEOUT)
            except TimeoutError:
                self.qemu.kill()
        await self.ended.wait()

    async def close(self) -> None:
        if self.rsp is not None:
            self.rsp.close()
        if self.ram_fd is not None:
            os.close(self.ram_fd)
            self.ram_fd = None
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.qmp.disconnect(), 2)
        for task in self._tasks:
            task.cancel()


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


def _int_arg(args: dict[str, Any], key: str, low: int, high: int) -> int:
    value = args.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RequestError(ErrorCode.BAD_REQUEST, f"{key} must be an integer in [{low}, {high}]")
    return value


async def run(session: SessionDir) -> int:
    spec = SessionSpec.load(session.path)
    supervisor = Supervisor(session, spec)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, lambda: supervisor._spawn(supervisor.shutdown()))
    server = None
    try:
        await supervisor.start()
        server = await asyncio.start_unix_server(
            supervisor.serve_client, path=str(session.control_socket), limit=MAX_LINE)
        _report_ready({"ready": True, "status": supervisor.status()})
        await supervisor.ended.wait()
        await asyncio.sleep(0.2)  # let the last events reach their subscribers
        return 0
    except (UndebugError, RequestError) as exc:
        message = exc.message if isinstance(exc, UndebugError) else str(exc)
        log.error("start failed: %s", message)
        _report_ready({"ready": False, "error": message})
        return 1
    except Exception as exc:
        log.exception("supervisor failed")
        _report_ready({"ready": False, "error": f"internal error in the supervisor: {exc!r}"})
        return 1
    finally:
        if server is not None:
            server.close()
        if not supervisor.ended.is_set():
            await supervisor.shutdown()
        await supervisor.close()
        supervisor.write_record()
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
    os.umask(0o077)
    session = SessionDir(Path(sys.argv[1]))
    logging.basicConfig(filename=session.supervisor_log, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    return asyncio.run(run(session))


if __name__ == "__main__":
    sys.exit(main())
