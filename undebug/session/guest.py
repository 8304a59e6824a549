"""One guest as its supervisor holds it: QEMU, the single gdbstub connection, QMP.

QEMU's gdbstub takes a single client, pauses the guest when one connects and resumes it
(and drops its breakpoints) on detach. So the :class:`Guest` is the one owner: it starts
QEMU (or adopts one), keeps the run state the user chose, tells the guest's end from
QMP events and QEMU's exit, and reads memory and registers with the guest held still.
The control server (``supervisor.py``) turns client requests into calls on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import logging
import os
import re
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from undebug.console import crash_line
from undebug.errors import UndebugError
from undebug.gdb.packets import ThreadId
from undebug.gdb.rsp import RspClient, RspException
from undebug.session import outcome as outcomes
from undebug.session.outcome import Outcome
from undebug.session.protocol import ErrorCode
from undebug.session.recorder import TraceRecorder
from undebug.session.runcontrol import RequestError, RunControl
from undebug.session.spec import SessionSpec
from undebug.session.store import SessionDir, shared_memory_dir
from undebug.text import escape
from undebug.vm.qemu import find_qemu, ram_layout

__all__ = ["Guest"]

log = logging.getLogger("undebug.supervisor")


def _die_with_parent() -> None:
    """In QEMU's child process: get SIGKILL when the supervisor dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


PR_SET_PDEATHSIG = 1
PMEMSAVE_MIN = 64 << 10  # below this one gdbstub round trip is cheaper
QEMU_START_TIMEOUT = 10.0
QEMU_QUIT_TIMEOUT = 5.0


class Guest(RunControl):
    """Holds one guest: starts QEMU (or adopts it), connects QMP, the gdbstub and the trace
    port, tells the guest's end, reads its memory. Everything runs on the event loop;
    blocking RSP calls run in a worker thread under ``_lock``."""

    def __init__(self, session: SessionDir, spec: SessionSpec) -> None:
        super().__init__(spec.start_paused)
        self.session = session
        self.spec = spec
        self.started = time.time()
        self.qemu: asyncio.subprocess.Process | None = None
        self.qmp: Any = None  # qemu.qmp.QMPClient, imported lazily
        self.machine: dict[str, Any] = {
            "accel": spec.accel, "accel_reason": spec.accel_reason, "smp": spec.smp,
            "memory_mb": spec.memory_mb} if spec.mode == "launch" else {
            "accel": None, "accel_reason": "unknown without --qmp", "smp": None, "memory_mb": None}
        self.ram_path: Path | None = None
        self.ram_fd: int | None = None
        self._shutting_down = False
        self.subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._target_xml: dict[str, str] = {}
        self.last_stop: dict[str, Any] | None = None  # why the guest stopped by itself
        self._vcpus: list[ThreadId] = []  # the stub's thread id of each vCPU, by index
        self.recorder: TraceRecorder | None = None
        self.record_error: str | None = None  # why session.json could not be written

    async def start(self) -> None:
        if self.spec.mode == "launch":
            await self._launch_qemu()
        await self._connect_qmp()
        self._take_ram_file()
        await self._connect_trace()
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
        self.spawn(self._watch_qemu())
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
        self.spawn(self._watch_qmp())
        if self.spec.mode == "attach":
            await self._describe_adopted()

    async def _connect_trace(self) -> None:
        """Connect the trace port before the guest's first instruction: QEMU discards
        what a guest writes to a port nobody is connected to."""
        if self.spec.mode != "launch" or not self.spec.trace:
            return
        path = self.spec.qemu_config(self.session.path).trace_socket
        reader, writer = await asyncio.open_unix_connection(str(path))
        outputs = [self.session.trace_file]
        if self.spec.trace_file:
            outputs.append(Path(self.spec.trace_file))
        self.recorder = TraceRecorder(outputs, self.spec.trace_max_size)
        self.spawn(self.recorder.record(reader, writer))

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
        self._vcpus = await self._stub(self.rsp.threads)
        # Connecting paused a running guest (QEMU then sends an unsolicited stop reply);
        # an attach puts it back as it was.
        stopped_by_connect = self.rsp.drain_stops()
        self.rsp.on_stop = self._stop_arrived
        if self.spec.mode == "attach" and (was_running or stopped_by_connect):
            self.user_paused = False
            await self._resume()

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
                    self.spawn(self.shutdown())
            if name == "RESUME":
                self.run_token += 1
            self.broadcast({"type": name.lower()})

    async def _watch_qemu(self) -> None:
        assert self.qemu is not None
        status = await self.qemu.wait()
        log.info("QEMU exited with status %s", status)
        if self.outcome is None:  # the guest's own exit, or QEMU's failure
            self.outcome = outcomes.from_exit_status(status, self._qemu_error(),
                                                     self._console_crash())
        elif self.outcome.run_state is not None:  # a crash it was paused at: now gone too
            self.outcome = dataclasses.replace(self.outcome, run_state=None)
        self._finish()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        for queue in self.subscribers:
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

    async def read_memory(self, address: int, size: int) -> bytes:
        """Guest-virtual memory through the gdbstub (the vCPU's page tables)."""
        async with self.paused() as rsp:
            data: bytes = await self._stub(rsp.read_memory, address, size)
        return data

    async def target_xml(self) -> dict[str, str]:
        """QEMU's target description files (target.xml and what it includes), for a
        gdbserver proxy to hand to gdb unchanged."""
        if not self._target_xml:
            async with self.paused() as rsp:
                pending = ["target.xml"]
                while pending:
                    annex = pending.pop()
                    text = (await self._stub(rsp.read_xfer, "features", annex)).decode()
                    self._target_xml[annex] = text
                    pending += [href for href in re.findall(r'href="([^"]+)"', text)
                                if href not in self._target_xml][:16]
        return dict(self._target_xml)

    async def write_memory(self, address: int, data: bytes) -> None:
        """For debuggers that patch variables; breakpoints never write memory."""
        async with self.paused() as rsp:
            await self._stub(rsp.write_memory, address, data)
        self.run_token += 1  # what clients cached is stale now

    async def read_physical(self, address: int, size: int) -> bytes:
        async with self.paused() as rsp:
            if self.qmp is not None and size >= PMEMSAVE_MIN:
                return await self._pmemsave(address, size)
            data: bytes = await self._stub(rsp.read_physical, address, size)
        return data

    async def _pmemsave(self, address: int, size: int) -> bytes:
        """Bulk physical reads through QMP: QEMU writes the range into tmpfs at memory
        speed, where the gdbstub would take a packet per 2 KiB."""
        directory = shared_memory_dir() or self.session.path
        path = directory / f"{self.session.name}-{os.getpid()}.pmem"
        try:
            await self.qmp.execute("pmemsave", {"val": address, "size": size,
                                                "filename": str(path)})
            return path.read_bytes()
        except Exception as exc:
            raise RequestError(ErrorCode.STUB, f"pmemsave of {size} bytes at {address:#x} "
                               f"failed: {exc}") from None
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    async def read_registers(self, cpu: int | None) -> list[dict[str, Any]]:
        """Registers of one vCPU (or all), by the names of the stub's target description."""
        async with self.paused() as rsp:
            threads = await self._stub(rsp.threads)
            if cpu is not None and not 0 <= cpu < len(threads):
                raise RequestError(ErrorCode.BAD_REQUEST,
                                   f"no vCPU {cpu}: the guest has {len(threads)}")
            cpus = []
            for index in range(len(threads)) if cpu is None else [cpu]:
                registers = await self._stub(rsp.registers, threads[index])
                cpus.append({"cpu": index, "stub_thread": str(threads[index]),
                             "registers": registers})
        return cpus

    def memory_fd(self) -> tuple[dict[str, Any], list[int]]:
        if self.ram_fd is None or self.ended.is_set():
            raise RequestError(ErrorCode.UNSUPPORTED, "guest RAM is not shared with undebug")
        layout = ram_layout(int(self.machine["memory_mb"]))
        return {"size": os.fstat(self.ram_fd).st_size,
                "layout": [[r.physical, r.offset, r.size] for r in layout]}, [self.ram_fd]

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
            "last_stop": self.last_stop,
            "breakpoints": [bp.to_json() for bp in self.breakpoints.all()],
            "frozen": self._freezes > 0,
            "shared_ram": self.ram_fd is not None,
            "trace": self.recorder.status() if self.recorder else None,
            "warnings": (self.recorder.warnings() if self.recorder else [])
            + ([self.record_error] if self.record_error else []),
        }

    async def live_status(self) -> dict[str, Any]:
        """:meth:`status` with what QEMU itself says its run state is."""
        status = self.status()
        if self.qmp is not None and not self.ended.is_set():
            with contextlib.suppress(Exception):
                reply = await asyncio.wait_for(self.qmp.execute("query-status"), 2)
                status["qemu_state"] = reply.get("status")
        return status

    def write_record(self) -> None:
        """Keep session.json current; a failure (a full disk) is a warning in the status,
        never a failed stop or cont."""
        try:
            self.session.write_record(self.status())
        except OSError as exc:
            self.record_error = f"cannot write {self.session.record_file}: {exc.strerror}"
            log.warning("%s", self.record_error)
        else:
            self.record_error = None

    def broadcast(self, event: dict[str, Any]) -> None:
        event = {"time": time.time(), **event}
        for queue in self.subscribers:
            queue.put_nowait(event)

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
        for task in list(self._tasks):
            task.cancel()
