"""Run control of one guest through its single gdbstub connection.

"Running" is what the gdbstub sees: after our ``c``, until a stop reply. Reads hold the
guest still and put it back as the user left it; a freeze holds it across many requests;
breakpoints are kept here so they outlive every client. Stop replies that nobody waited
for under ``_lock`` are the guest stopping by itself (a breakpoint, a watchpoint): it then
stays stopped until the user resumes it. The user's pause remembers the vCPU the stub's
interrupt reply names (``paused_cpu``), so a debugger is told that vCPU's thread stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from undebug.arch.x86_64 import is_canonical
from undebug.gdb.packets import BreakpointType, StopReply, ThreadId
from undebug.gdb.rsp import RspClient, RspException
from undebug.session.breakpoints import MAX_WATCH, Breakpoint, BreakpointTable, Owner, Watch
from undebug.session.outcome import Outcome
from undebug.session.protocol import ErrorCode

__all__ = ["RequestError", "RunControl"]

PAUSE_TIMEOUT = 5.0
STEP_TRIES = 3  # a step QEMU reports without running anything is taken again (see below)
MASK64 = (1 << 64) - 1
SIGINT, SIGTRAP = 2, 5  # GDB signal numbers in stop replies: our interrupt, a debug stop


class RequestError(Exception):
    """A request that fails with a protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


_WATCH_TYPES = {"write": BreakpointType.WRITE_WATCH, "read": BreakpointType.READ_WATCH,
                "access": BreakpointType.ACCESS_WATCH}
_STOP_KEYS: dict[str, Watch] = {"watch": "write", "rwatch": "read", "awatch": "access"}


def _kind(bp: Breakpoint) -> BreakpointType:
    if bp.watch is not None:
        return _WATCH_TYPES[bp.watch]
    return BreakpointType.HARDWARE if bp.hardware else BreakpointType.SOFTWARE


def _watch_hit(reply: StopReply) -> tuple[Watch, int] | None:
    """The kind and address of a watchpoint hit (``watch:ADDR`` and its r/a forms)."""
    for key, watch in _STOP_KEYS.items():
        if key in reply.info:
            try:
                return watch, int(reply.info[key], 16)
            except ValueError:
                return None
    return None


class RunControl(ABC):
    """The run state of a guest; :class:`~undebug.session.guest.Guest` adds its life."""

    def __init__(self, start_paused: bool) -> None:
        self.rsp: RspClient | None = None
        self.outcome: Outcome | None = None
        self.ended = asyncio.Event()
        self.user_paused = start_paused
        self.run_token = 0  # changes whenever the guest has run: clients' caches key on it
        self.breakpoints = BreakpointTable()
        self.last_stop: dict[str, Any] | None = None  # why the guest stopped by itself
        self.paused_cpu: int | None = None  # the vCPU QEMU named when the user's pause stopped it
        self._vcpus: list[ThreadId] = []  # the stub's thread id of each vCPU, by index
        self._freezes = 0
        self._resume_after_freeze = False
        self._lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()

    @abstractmethod
    def write_record(self) -> None: ...

    @abstractmethod
    def crash_stopped(self, bp: Breakpoint) -> None:
        """The guest stopped in its OS's crash path (a ``crash`` breakpoint)."""

    @abstractmethod
    def broadcast(self, event: dict[str, Any]) -> None: ...

    @abstractmethod
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None: ...

    @property
    def running(self) -> bool:
        """Whether the guest runs, as the gdbstub sees it: after our ``c``, until a stop."""
        return self.rsp is not None and self.rsp.is_running and not self.ended.is_set()

    def _check_alive(self) -> RspClient:
        if self.ended.is_set() or self.rsp is None:
            raise RequestError(ErrorCode.GUEST_ENDED, "the guest has ended")
        return self.rsp

    async def _resume(self) -> None:
        rsp = self._check_alive()
        if self.outcome is not None:
            raise RequestError(ErrorCode.GUEST_CRASHED,
                               f"the guest cannot run on: {self.outcome.reason}")
        if self.last_stop is not None and self.last_stop.get("cpu") is not None:
            await self._step_over_breakpoint(rsp, self.last_stop["cpu"])
        self.last_stop = self.paused_cpu = None
        await self._stub(rsp.cont)
        self.run_token += 1

    async def _pause(self) -> int | None:
        """Stop the running guest; the vCPU the stub's interrupt reply names (None: it was
        stopped already, or it had stopped by itself just before: a breakpoint)."""
        rsp = self._check_alive()
        if self.running:
            reply = await self._stub(rsp.interrupt, PAUSE_TIMEOUT)
            if reply.signal != SIGINT:
                await self._guest_stopped(reply)
            elif reply.thread in self._vcpus:
                return self._vcpus.index(reply.thread)
        return None

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
                if was_running and not self.user_paused and not self.ended.is_set() \
                        and self.outcome is None:
                    await self._resume()

    async def pause(self) -> None:
        """The user's pause: the guest stays paused until :meth:`resume`."""
        async with self._lock:
            cpu = await self._pause()
            if cpu is not None:
                self.paused_cpu = cpu
            self.user_paused = True
            self._resume_after_freeze = False
        self.write_record()
        self.broadcast({"type": "user_paused", "cpu": self.paused_cpu})

    async def resume(self) -> None:
        async with self._lock:
            self.user_paused = False
            if self._freezes:
                self._resume_after_freeze = True  # once the inspecting clients let go
            elif not self.running:
                await self._resume()
        self.write_record()

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

    def _stop_arrived(self, reply: StopReply) -> None:
        """On the RSP reader thread: a stop reply. Ours are taken by whoever waits for
        them under ``_lock``; what is left in the queue then, the guest did by itself."""
        self._loop.call_soon_threadsafe(self.spawn, self._collect_stops())

    async def _collect_stops(self) -> None:
        async with self._lock:
            if self.rsp is not None and not self.ended.is_set():
                for reply in self.rsp.drain_stops():
                    await self._guest_stopped(reply)

    async def _guest_stopped(self, reply: StopReply) -> None:
        """A breakpoint, or QEMU pausing the guest: it stays paused until ``resume``."""
        rsp = self._check_alive()
        cpu = self._vcpus.index(reply.thread) if reply.thread in self._vcpus else None
        registers: dict[str, int] = {}
        if cpu is not None:
            registers = await self._stub(rsp.registers, reply.thread)
        pc = registers.get("rip")
        hit = _watch_hit(reply)
        bp = None
        if reply.signal == SIGTRAP:
            bp = self.breakpoints.at(pc) if hit is None else \
                self.breakpoints.watching(hit[1], hit[0])
        reason = ("watchpoint" if hit else "breakpoint") if bp else f"signal {reply.signal}"
        self.last_stop = {"cpu": cpu, "pc": pc, "signal": reply.signal, "reason": reason,
                          "breakpoint": bp.id if bp else None}
        if hit is not None:
            self.last_stop |= {"watch": hit[0], "data_address": hit[1]}
        if bp is not None and bp.owner == "crash":
            if bp.when_register is not None and not await self._holds(rsp, bp, registers):
                await self._resume()  # the same path without a crash (a clean halt)
                return
            self.last_stop["reason"] = "crash"
            self.crash_stopped(bp)
        self.user_paused = True
        self._resume_after_freeze = False
        self.write_record()
        self.broadcast({"type": "stopped", **self.last_stop})

    async def _holds(self, rsp: RspClient, bp: Breakpoint, registers: dict[str, int]) -> bool:
        """A crash breakpoint's condition, on its register or on the u32 it points to (an
        unreadable one holds: a crash path with a broken argument is still a crash)."""
        value = registers.get(bp.when_register or "")
        if bp.when_offset is not None and value is not None:
            try:
                raw = await self._stub(rsp.read_memory, (value + bp.when_offset) & MASK64, 4)
            except RequestError:
                return True
            value = int.from_bytes(raw[:4], "little")
        return value == bp.when_value or value in bp.when_values

    async def _step_over_breakpoint(self, rsp: RspClient, cpu: int) -> StopReply:
        """Single-step vCPU ``cpu``; QEMU would re-report a breakpoint under its pc, so
        that one is lifted for the step.

        QEMU 7.2 under TCG sometimes answers the first step after a breakpoint hit with a
        SIGTRAP stop while nothing ran (every register as before: ~1 step in 15 here, right
        after the breakpoint is lifted): such a step is taken again, a bounded number of
        times, so neither ``step`` nor ``cont`` stands still. An instruction that really
        changes nothing (``jmp .``) is stepped :data:`STEP_TRIES` times, which is the same."""
        thread = self._vcpus[cpu]
        before = await self._stub(rsp.registers, thread)
        bp = self.breakpoints.at(before.get("rip"))
        if bp is not None:
            await self._stub(rsp.remove_breakpoint, bp.address, _kind(bp))
        try:
            for _ in range(STEP_TRIES):
                reply: StopReply = await self._stub(rsp.step, thread, PAUSE_TIMEOUT)
                if reply.signal != SIGTRAP or reply.thread not in (None, thread) or \
                        await self._stub(rsp.registers, thread) != before:
                    break
        finally:
            if bp is not None:
                await self._stub(rsp.add_breakpoint, bp.address, _kind(bp))
        self.run_token += 1
        return reply

    def _stopped_vcpu(self, cpu: int) -> RspClient:
        """The stub, if the guest is stopped and has vCPU ``cpu``; else a clear error."""
        rsp = self._check_alive()
        if self.running:
            raise RequestError(ErrorCode.BAD_REQUEST, "the guest is running: stop it first")
        if not 0 <= cpu < len(self._vcpus):
            raise RequestError(ErrorCode.BAD_REQUEST,
                               f"no vCPU {cpu}: the guest has {len(self._vcpus)}")
        return rsp

    async def step(self, cpu: int) -> dict[str, Any]:
        """One instruction on vCPU ``cpu`` of a stopped guest; the others stay stopped."""
        async with self._lock:
            rsp = self._stopped_vcpu(cpu)
            await self._step_over_breakpoint(rsp, cpu)
            pc = (await self._stub(rsp.registers, self._vcpus[cpu])).get("rip")
            self.last_stop = {"cpu": cpu, "pc": pc, "signal": SIGTRAP, "reason": "step",
                              "breakpoint": None}
            self.user_paused = True
        self.write_record()
        self.broadcast({"type": "stopped", **self.last_stop})
        return self.last_stop

    async def write_registers(self, cpu: int, values: dict[str, int]) -> None:
        """Set registers of vCPU ``cpu`` of a stopped guest (a debugger's ``set $rax``)."""
        async with self._lock:
            rsp = self._stopped_vcpu(cpu)
            await self._stub(rsp.select_thread, self._vcpus[cpu], "g")
            for name, value in values.items():
                try:
                    await self._stub(rsp.write_register, name, value)
                except KeyError:
                    raise RequestError(ErrorCode.BAD_REQUEST, f"no register {name!r}") from None
            self.run_token += 1  # what clients cached is stale now

    async def insert_breakpoint(self, address: int, hardware: bool, location: str,
                                owner: Owner = "cli", when: tuple[str, int] | None = None,
                                watch: Watch | None = None, length: int = 1,
                                when_memory: tuple[int, tuple[int, ...]] | None = None) \
            -> Breakpoint:
        """A breakpoint, or with ``watch`` a watchpoint on ``length`` bytes."""
        what = "code" if watch is None else "data"
        if not is_canonical(address, five_level=True):  # no paging mode maps it
            raise RequestError(ErrorCode.BAD_REQUEST,
                               f"{address:#x} is not a canonical x86-64 address: no {what} "
                               "can be there")
        if watch is not None and not 1 <= length <= MAX_WATCH:
            raise RequestError(ErrorCode.BAD_REQUEST,
                               f"a watchpoint covers 1 to {MAX_WATCH} bytes, not {length}")
        async with self.paused() as rsp:
            there = self.breakpoints.at(address) if watch is None else \
                self.breakpoints.watching(address, watch)
            if there is not None and there.address == address:
                kind = "a breakpoint" if watch is None else \
                    f"{'an' if watch == 'access' else 'a'} {watch} watchpoint"
                raise RequestError(ErrorCode.BAD_REQUEST,
                                   f"{kind} at {address:#x} exists already")
            bp = self.breakpoints.add(address, hardware, location, owner, when, watch,
                                      length if watch is not None else 1, when_memory)
            try:
                await self._stub(rsp.add_breakpoint, address, _kind(bp), bp.length)
            except RequestError:
                self.breakpoints.remove(bp.id)
                raise
        self.write_record()
        return bp

    async def delete_breakpoint(self, bp_id: int) -> Breakpoint:
        async with self.paused() as rsp:
            bp = self.breakpoints.remove(bp_id)
            if bp is None:
                raise RequestError(ErrorCode.BAD_REQUEST, f"no breakpoint {bp_id}")
            await self._stub(rsp.remove_breakpoint, bp.address, _kind(bp), bp.length)
        self.write_record()
        return bp

    async def _stub(self, func: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(func, *args)
        except RspException as exc:
            raise RequestError(ErrorCode.STUB, str(exc)) from None
