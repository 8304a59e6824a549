"""One guest as its supervisor holds it: QEMU, the single gdbstub connection, QMP.

QEMU's gdbstub takes a single client, pauses the guest when one connects and resumes it
(and drops its breakpoints) on detach. So the :class:`Guest` is the one owner: it starts
QEMU (or adopts one), keeps the run state the user chose, tells the guest's end from
QMP events and QEMU's exit, and reads memory and registers with the guest held still.
The control server (``supervisor.py``) turns client requests into calls on it. The
parts it holds are modules of their own: the QEMU child (``qemu_process.py``), QMP
(``qmp_link.py``), guest RAM (``ram.py``) and run control (``runcontrol.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from undebug.console import crash_line
from undebug.errors import UndebugError
from undebug.gdb.packets import ThreadId
from undebug.gdb.rsp import RspClient, RspException
from undebug.session import outcome as outcomes
from undebug.session.adopted_ram import AdoptedRam, RamUnavailable, locate
from undebug.session.breakpoints import Breakpoint
from undebug.session.live_trace import LiveTrace
from undebug.session.machine_map import DeviceRange
from undebug.session.outcome import Outcome
from undebug.session.protocol import ErrorCode
from undebug.session.qemu_process import QemuProcess
from undebug.session.qmp_link import QmpLink
from undebug.session.ram import memory_fd_reply
from undebug.session.recorder import TraceRecorder
from undebug.session.runcontrol import RequestError, RunControl
from undebug.session.spec import SessionSpec
from undebug.session.store import SessionDir
from undebug.text import escape

__all__ = ["Guest"]

log = logging.getLogger("undebug.supervisor")


PMEMSAVE_MIN = 64 << 10  # below this one gdbstub round trip is cheaper
_PROC = os.path.isdir("/proc/self")
_TICKS = os.sysconf("SC_CLK_TCK") if _PROC else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if _PROC else 4096


def _proc_cost(pid: int) -> tuple[float | None, int | None]:
    """(CPU seconds, resident bytes) of process ``pid`` from /proc; None where unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # after the (comm): state is [0]
        with open(f"/proc/{pid}/statm", "rb") as f:
            resident = int(f.read().split()[1]) * _PAGE
        return round((int(fields[11]) + int(fields[12])) / _TICKS, 3), resident
    except (OSError, IndexError, ValueError):
        return None, None
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
        self.qemu: QemuProcess | None = None  # the QEMU we started (None: adopted)
        self.qmp: QmpLink | None = None
        self.machine: dict[str, Any] = {
            "accel": spec.accel, "accel_reason": spec.accel_reason, "smp": spec.smp,
            "memory_mb": spec.memory_mb} if spec.mode == "launch" else {
            "accel": None, "accel_reason": "unknown without --qmp", "smp": None, "memory_mb": None}
        self._shutting_down = False
        self.subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._target_xml: dict[str, str] = {}
        self.last_stop: dict[str, Any] | None = None  # why the guest stopped by itself
        self._vcpus: list[ThreadId] = []  # the stub's thread id of each vCPU, by index
        self.recorder: TraceRecorder | None = None
        self.live_trace: LiveTrace | None = None  # the live readers' leases (trace_live)
        self.record_error: str | None = None  # why session.json could not be written
        self.adopted_ram: AdoptedRam | None = None  # an adopted QEMU's RAM, read in place
        self.no_adopted_ram: str | None = None  # why not (attach only)

    async def start(self) -> None:
        if self.spec.mode == "launch":
            await self._launch_qemu()
        await self._connect_qmp()
        if self.spec.mode == "attach":
            await self._locate_ram()
        await self._connect_trace()
        await self._connect_rsp()
        if self.spec.mode == "launch" and not self.spec.start_paused:
            await self._resume()
        self.write_record()

    async def _launch_qemu(self) -> None:
        self.qemu = QemuProcess(self.session.path / "qemu.stderr")
        await self.qemu.start(self.spec.qemu_config(self.session))
        self.spawn(self._watch_qemu())
        files = self.session.qemu_files
        traced = (files.trace_socket,) if self.spec.trace else ()
        await self.qemu.wait_for_sockets(files.qmp_socket, files.gdb_socket, *traced)

    async def _connect_qmp(self) -> None:
        address = self.spec.qmp_address(self.session)
        if address is None:
            return
        try:
            self.qmp = await QmpLink.connect(self.session.name, address)
        except UndebugError:
            if self.qemu is not None and (reason := await self.qemu.failed()):
                raise UndebugError(reason) from None  # not QMP's "connection refused"
            raise
        self.spawn(self._watch_qmp(self.qmp))
        if self.spec.mode == "attach":
            self.machine = await self.qmp.machine()

    async def _locate_ram(self) -> None:
        """Find an adopted QEMU's RAM for clients to read in place (adopted_ram.py)."""
        how = "pass QEMU's QMP unix socket (-qmp unix:PATH,server=on,wait=off) to --qmp"
        try:
            if self.qmp is None:
                raise RamUnavailable(f"no QMP: {how}")
            if self.spec.qmp is not None and not isinstance(
                    self.spec.qmp_address(self.session), str):
                raise RamUnavailable(f"QMP at {self.spec.qmp} is TCP, whose peer does not tell "
                                     f"QEMU's pid: {how}")
            self.adopted_ram = await locate(self.qmp.hmp, self.qmp.peer_pid)
        except RamUnavailable as exc:
            self.no_adopted_ram = f"bulk reads of guest RAM go through the supervisor (slow): {exc}"
            log.warning("%s", self.no_adopted_ram)
        except Exception as exc:  # QMP refused an HMP command: the slow path still works
            self.no_adopted_ram = ("bulk reads of guest RAM go through the supervisor (slow): "
                                   f"QEMU's monitor did not answer: {exc}")
            log.warning("%s", self.no_adopted_ram)
        else:
            log.info("guest RAM read in place from QEMU pid %d: %s", self.adopted_ram.pid,
                     self.adopted_ram.layout)

    async def _connect_trace(self) -> None:
        """Connect the trace port before the guest's first instruction: QEMU discards
        what a guest writes to a port nobody is connected to."""
        if self.spec.mode != "launch" or not self.spec.trace:
            return
        path = self.session.qemu_files.trace_socket
        outputs = [self.session.trace_file]
        if self.spec.trace_file:
            outputs.append(Path(self.spec.trace_file))
        self.recorder = TraceRecorder(outputs, self.spec.trace_max_size)
        self.live_trace = LiveTrace(self.recorder.send)
        self.spawn(self.recorder.record(str(path)))

    async def _connect_rsp(self) -> None:
        address = self.spec.gdb_address(self.session)
        was_running = False
        if self.spec.mode == "attach" and self.qmp is not None:
            was_running = bool((await self.qmp.status()).get("running"))
        try:
            self.rsp = await asyncio.to_thread(RspClient.connect, address, 10.0)
        except (OSError, RspException) as exc:
            # The client's own message already says "cannot connect ...": say it once,
            # with the address as the user wrote it and the system's reason.
            cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
            reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else exc
            shown = self.spec.gdb if self.spec.mode == "attach" else address
            raise UndebugError(
                f"cannot connect to the gdbstub at {shown}: {reason}",
                hint="is QEMU running with -gdb tcp::PORT (or a unix socket) there?"
                if self.spec.mode == "attach" else None) from None
        self._vcpus = await self._stub(self.rsp.threads)
        # Connecting paused a running guest (QEMU then sends an unsolicited stop reply);
        # an attach puts it back as it was.
        stopped_by_connect = self.rsp.drain_stops()
        self.rsp.on_stop = self._stop_arrived
        self.rsp.on_close = self._stub_closed_elsewhere
        if self.spec.mode == "attach" and (was_running or stopped_by_connect):
            self.user_paused = False
            await self._resume()

    async def _watch_qmp(self, qmp: QmpLink) -> None:
        async for name, data in qmp.events():
            if name == "GUEST_PANICKED":
                self._set_outcome(outcomes.from_panic(self._console_crash(), "guest-panicked"))
            elif name == "SHUTDOWN":
                # Unikraft powers off right after its pvpanic write: that shutdown is
                # part of the crash, and the guest stays paused as crashed (shutdown=pause).
                crashed = self.outcome is not None and self.outcome.kind == "panic"
                result = outcomes.from_shutdown(data, self._console_crash(), "shutdown")
                self._set_outcome(result)
                if not data.get("guest") or (result.kind == "shutdown" and not crashed):
                    self.spawn(self.shutdown())
            if name == "RESUME":
                self.run_token += 1
            self.broadcast({"type": name.lower()})

    async def _watch_qemu(self) -> None:
        assert self.qemu is not None
        status = await self.qemu.wait()
        if self.outcome is None:  # the guest's own exit, or QEMU's failure
            self.outcome = outcomes.from_exit_status(status, self.qemu.error(),
                                                     self._console_crash())
        elif self.outcome.run_state is not None:  # a crash it was paused at: now gone too
            self.outcome = dataclasses.replace(self.outcome, run_state=None)
        self._finish()

    def _stub_closed_elsewhere(self, reason: str) -> None:
        """on_close runs on the RSP reader thread: go to the loop."""
        self._loop.call_soon_threadsafe(self._stub_closed, reason)

    def _stub_closed(self, reason: str) -> None:
        """The gdbstub connection went. A QEMU we started is watched as our child; an
        adopted one has ended when its stub closes on us (it exited or was killed)."""
        if self.spec.mode != "attach" or self._shutting_down or self.ended.is_set():
            return
        log.info("gdbstub connection lost: %s", reason)
        if self.outcome is None:
            self.outcome = outcomes.from_adopted_exit(reason)
        elif self.outcome.run_state is not None:
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

    def crash_stopped(self, bp: Breakpoint) -> None:
        self._set_outcome(outcomes.from_crash_stop(bp.location, self._console_crash()))

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
                files = await self._stub(rsp.target_xml_files)  # bounded: the stub is untrusted
            self._target_xml = {annex: text.decode("utf-8", "replace")
                                for annex, text in files.items()}
        return dict(self._target_xml)

    async def write_memory(self, address: int, data: bytes) -> None:
        """For debuggers that patch variables; breakpoints never write memory."""
        async with self.paused() as rsp:
            await self._stub(rsp.write_memory, address, data)
        self.run_token += 1  # what clients cached is stale now

    async def read_physical(self, address: int, size: int) -> bytes:
        async with self.paused() as rsp:
            if self.qmp is not None and size >= PMEMSAVE_MIN:
                return await self.qmp.pmemsave(address, size)
            data: bytes = await self._stub(rsp.read_physical, address, size)
        return data

    async def machine_map(self) -> list[DeviceRange]:
        """What backs guest-physical memory: RAM, ROM, device MMIO (QEMU's own map)."""
        if self.qmp is None:
            raise RequestError(ErrorCode.UNSUPPORTED, "no QMP connection (attach without "
                               "--qmp): QEMU's physical map is unknown")
        try:
            return await self.qmp.machine_map()
        except Exception as exc:  # QMP's own errors, a QEMU that went away, a timeout
            raise RequestError(ErrorCode.UNSUPPORTED,
                               f"QEMU did not describe its physical map: {exc!r}") from None

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
        if self.qemu is None or self.qemu.ram_fd is None or self.ended.is_set():
            raise RequestError(ErrorCode.UNSUPPORTED, "guest RAM is not shared with undebug")
        return memory_fd_reply(self.qemu.ram_fd, int(self.machine["memory_mb"]),
                               self.spec.machine)

    def process_ram(self) -> dict[str, Any]:
        """Where an adopted QEMU holds guest RAM, for clients' ``process_vm_readv``."""
        if self.adopted_ram is None or self.ended.is_set():
            raise RequestError(ErrorCode.UNSUPPORTED, self.no_adopted_ram
                               or "guest RAM is shared as a file (memory_fd)")
        return self.adopted_ram.reply()

    def _ram_read(self) -> str:
        if self.qemu is not None and self.qemu.ram_fd is not None:
            return "shared-file"
        return "qemu-process" if self.adopted_ram is not None else "supervisor"

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
            "elf": self.spec.elf or (None if self.spec.image_is_disk else self.spec.image),
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
            "paused_cpu": self.paused_cpu,
            "breakpoints": [bp.to_json() for bp in self.breakpoints.all()],
            "frozen": self._freezes > 0,
            "shared_ram": self.qemu is not None and self.qemu.ram_fd is not None,
            "ram_read": self._ram_read(),
            "trace": {**self.recorder.status(), "flush": self.live_trace.status()}
            if self.recorder and self.live_trace else None,
            "cost": self._cost(),
            "warnings": (self.recorder.warnings() if self.recorder else [])
            + ([self.record_error] if self.record_error else [])
            + ([self.no_adopted_ram] if self.no_adopted_ram else []),
        }

    def _cost(self) -> dict[str, Any]:
        """What this guest costs the host: the supervisor's CPU time and RSS (its own, an
        SRE's question with dozens of guests per host), and its QEMU's, from /proc."""
        times = os.times()
        qemu = _proc_cost(self.qemu.pid) if self.qemu is not None and self.qemu.pid else None
        return {"supervisor_cpu_s": round(times.user + times.system, 3),
                "supervisor_rss_bytes": _proc_cost(os.getpid())[1] if _PROC else None,
                "qemu_cpu_s": qemu[0] if qemu else None,
                "qemu_rss_bytes": qemu[1] if qemu else None}

    async def live_status(self) -> dict[str, Any]:
        """:meth:`status` with what QEMU itself says its run state is."""
        status = self.status()
        if self.qmp is not None and not self.ended.is_set():
            with contextlib.suppress(Exception):
                status["qemu_state"] = (await self.qmp.status(timeout=2)).get("status")
        return status

    def write_record(self) -> None:
        """Keep session.json current; a failure (a full disk; the directory removed as the
        guest ends) is logged and a warning in the status, never a failed stop or cont."""
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
        if self.qemu is not None and self.qemu.running:
            if self.qmp is not None:
                with contextlib.suppress(Exception):
                    await self.qmp.quit(timeout=2)
            try:
                await asyncio.wait_for(self.ended.wait(), QEMU_QUIT_TIMEOUT)
            except TimeoutError:
                self.qemu.kill()
        await self.ended.wait()

    async def close(self) -> None:
        if self.rsp is not None:
            self.rsp.on_close = None
            self.rsp.close()
        if self.qemu is not None:
            self.qemu.close()
        if self.qmp is not None:
            with contextlib.suppress(Exception):
                await self.qmp.disconnect(timeout=2)
        for task in list(self._tasks):
            task.cancel()
