"""One debugger's session with the gdbserver: the packets, answered.

Thread ids are translated at this edge: the debugger sees guest threads (see
:mod:`undebug.gdbserver.threads`), the backend is asked about vCPUs. Reads come from the
backend's Target, run control and breakpoints from the backend too. The server is all-stop,
like QEMU: a stop stops every vCPU, and it reports the guest thread running on the vCPU
that stopped.

Ending a session: ``D`` (detach; also ``k``, which never kills the guest) deletes the
server's breakpoints and lets the guest run, as gdb's detach does. A debugger that goes
away without detaching (killed, or the server is stopped) also loses its breakpoints, but
the guest stays as it was left (stopped, if it was): ``undebug cont`` resumes it. The
breakpoints belong to the backend's connection too, so they go even when the server is
killed (the supervisor deletes a connection's ``gdb`` breakpoints when it closes).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from undebug.errors import SessionError, UndebugError, UsageError
from undebug.gdb.packets import RspException, ThreadId, decode, parse_features
from undebug.gdb.registers import (
    decode_register,
    decode_registers,
    encode_register,
    encode_registers,
)
from undebug.gdb.tdesc import Register, TargetDescription
from undebug.gdbserver.backend import SIGTRAP, Backend, Stop, ThreadProvider
from undebug.gdbserver.memorymap import memory_map_xml
from undebug.gdbserver.monitor import MonitorCommand, monitor_text
from undebug.gdbserver.runstate import wait_for_stop
from undebug.gdbserver.stopinfo import stop_reply, thread_stop_info, threads_info
from undebug.gdbserver.stoppoints import Stoppoints
from undebug.gdbserver.threads import ProxyThread, ThreadView
from undebug.gdbserver.wire import BadPacket, ClientGone, GdbConnection, to_hex_text
from undebug.target import ReadError, Target

__all__ = ["GdbSession"]

log = logging.getLogger("undebug.gdbserver")

PACKET_SIZE = 0x4000
MAX_MEMORY = (PACKET_SIZE - 32) // 2  # bytes in one m reply
PAGE = 4096
EPERM, EFAULT, EINVAL = 0x01, 0x0E, 0x16
MONITOR_CHUNK = (PACKET_SIZE - 16) // 8  # characters per O packet (UTF-8, then hex)


class PacketError(Exception):
    """A request the proxy refuses: ``E nn`` (or ``E.message`` when the client takes it)."""

    def __init__(self, message: str, code: int = EPERM, quiet: bool = False) -> None:
        super().__init__(message)
        self.message, self.code, self.quiet = message, code, quiet


class GdbSession:
    """Answers one connected debugger until it detaches or goes away."""

    def __init__(self, conn: GdbConnection, backend: Backend, provider: ThreadProvider,
                 layout: TargetDescription, xml_files: dict[str, str],
                 monitor: Mapping[str, MonitorCommand] | None = None,
                 symbol_file: Path | None = None) -> None:
        self.conn = conn
        self.symbol_file = symbol_file  # the ELF gdb was given (None: the kernel's)
        self.backend = backend
        self.provider = provider
        self.monitor = monitor or {}
        self.layout = layout
        self.xml_files = {name: text.encode() for name, text in xml_files.items()}
        self.done = False
        self.error_messages = False  # the client understands E.message
        self.swbreak = False  # the client understands swbreak:/hwbreak: stop reasons
        self.current = 0  # the thread of the last stop (gdb id)
        self.g_thread = 0  # Hg: registers of this thread (0: the current one)
        self.c_thread = -1  # Hc: s/c of this thread (-1: all, 0: any)
        self.points = Stoppoints(backend)  # the debugger's breakpoints and watchpoints
        self.last_stop = Stop(SIGTRAP)  # what ? reports
        self._view: ThreadView | None = None
        self._view_of: Target | None = None
        self._listed: list[int] = []  # qsThreadInfo continues this list
        self._map: bytes | None = None  # the memory map of the stop of _map_of
        self._map_of: Target | None = None

    # ---- the loop -----------------------------------------------------------------------

    def run(self) -> None:
        try:
            self._attach()
            while not self.done:
                try:
                    packet = self.conn.receive(0.5)
                except BadPacket as exc:
                    self.conn.send(self._error(PacketError(str(exc), EINVAL)))
                    continue
                if packet is None:
                    self._check_guest()
                    continue
                reply = self.handle(packet)
                if reply is not None:
                    self.conn.send(reply)
        except ClientGone as exc:
            log.info("debugger gone: %s", exc)
        finally:
            self._cleanup()

    def _attach(self) -> None:
        """The debugger expects a stopped target: stop the guest (all vCPUs)."""
        state = self.backend.state()
        if state.ended:
            self.done = True
            return
        if state.running:
            self.backend.pause()
            state = self.backend.state()
        if state.stop is not None and state.stop.exit_reply is None:
            self.last_stop = state.stop

    def _check_guest(self) -> None:
        """While the debugger is idle: notice the guest's end and let it know."""
        while (event := self.backend.next_event(0.001)) is not None:
            if event.kind == "ended":
                log.info("the guest has ended: closing the debugger's connection")
                self.done = True
                return

    def _cleanup(self) -> None:
        self.points.remove_all()
        self.backend.release()
        self.conn.close()

    # ---- dispatch -----------------------------------------------------------------------

    def handle(self, packet: bytes) -> bytes | None:
        """The reply to one packet (None: no reply, or it has been sent already)."""
        text = packet.decode("latin-1")
        log.debug("<- %s", text[:200])
        try:
            reply = self._dispatch(text, packet)
        except PacketError as exc:
            reply = self._error(exc)
        except (ValueError, IndexError, KeyError, OverflowError, RspException):
            reply = self._error(PacketError(f"malformed packet {text[:40]!r}", EINVAL))
        except UndebugError as exc:
            reply = self._error(PacketError(exc.message))
        if reply is not None:
            log.debug("-> %s", reply[:200].decode("latin-1"))
        return reply

    def _error(self, exc: PacketError) -> bytes:
        (log.debug if exc.quiet else log.warning)("%s", exc.message)
        if self.error_messages:
            return b"E." + exc.message.encode("utf-8", "backslashreplace")
        return b"E%02x" % (exc.code & 0xFF)

    def _dispatch(self, text: str, packet: bytes) -> bytes | None:
        kind = text[:1]
        if kind in ("q", "j"):  # j: LLDB's JSON queries
            return self._query(text)
        if text == "QStartNoAckMode":
            self.conn.send(b"OK")
            self.conn.no_ack = True
            return None
        if kind == "?":  # the target is stopped: no console text
            return self._report(self.last_stop, running=False)
        if kind == "H":
            return self._set_thread(text[1:2], ThreadId.parse(text[2:]).tid)
        if kind == "T":
            return b"OK" if self._views().get(ThreadId.parse(text[1:]).tid) else b"E01"
        if kind == "g":
            return encode_registers(self._selected().registers, self.layout.registers).encode()
        if kind == "p":
            return self._read_register(int(text[1:], 16))
        if kind in ("G", "P"):
            return self._write_registers(kind, text[1:])
        if kind == "m":
            return self._read_memory(text[1:])
        if kind in ("M", "X"):
            return self._write_memory(kind, packet[1:])
        if kind in ("Z", "z"):
            try:
                return self.points.handle(text)
            except UsageError as exc:
                raise PacketError(exc.message) from None
        if kind in ("c", "C"):
            return self._resume(None)
        if kind in ("s", "S"):
            return self._resume(self.c_thread if self.c_thread > 0 else self.current)
        if text == "vCont?":
            return b"vCont;c;C;s;S"
        if text.startswith("vCont;"):
            return self._vcont(text[6:])
        if kind == "D" or text.startswith("vKill"):
            self._detach()
            return b"OK"
        if kind == "k":
            self._detach()
            return None
        return b""  # not supported (vMustReplyEmpty, vFile, QNonStop, ...)

    def _query(self, text: str) -> bytes:
        name, _, args = text.partition(":")
        if name == "qSupported":
            features = parse_features(args.encode("latin-1"))
            self.error_messages = features.get("error-message") is True
            self.swbreak = features.get("swbreak") is True
            return (f"PacketSize={PACKET_SIZE:x};qXfer:features:read+;qXfer:threads:read+;"
                    "qXfer:memory-map:read+;QStartNoAckMode+;vContSupported+;swbreak+;"
                    "hwbreak+").encode()
        if name == "qXfer" and args.startswith("features:read:"):
            annex, _, span = args.removeprefix("features:read:").partition(":")
            if annex not in self.xml_files:
                raise PacketError(f"no target description file {annex!r}", EINVAL)
            return _xfer(self.xml_files[annex], span)
        if name == "qXfer" and args.startswith("memory-map:read::"):
            return _xfer(self._memory_map(), args.removeprefix("memory-map:read::"))
        if name == "qXfer" and args.startswith("threads:read::"):
            return _xfer(self._views().xml(), args.removeprefix("threads:read::"))
        if text == "qfThreadInfo":
            self._listed = [t.gdb_id for t in self._views().threads]
            return self._more_threads()
        if text == "qsThreadInfo":
            return self._more_threads()
        if text == "jThreadsInfo":
            return threads_info(self._views(), self.last_stop, self.layout.registers)
        if text.startswith("qThreadStopInfo"):
            thread = self._thread(int(text.removeprefix("qThreadStopInfo"), 16))
            return thread_stop_info(self._views(), self.last_stop, thread,
                                    self._hardware(self.last_stop))
        if text.startswith("qRcmd,"):
            return self._monitor(bytes.fromhex(text[6:]).decode("utf-8", "replace"))
        if text.startswith("qThreadExtraInfo,"):
            thread = self._thread(ThreadId.parse(text.partition(",")[2]).tid)
            return to_hex_text(f"{thread.name}, {thread.state}")
        if text == "qC":
            return b"QC%x" % self._current().gdb_id
        if name == "qOffsets":  # a guest that runs slid from its ELF (KASLR)
            self._views()  # the OS awareness may find the slide as it reads the threads
            offset = symbol_file_offset(self.backend.target(), self.symbol_file) & (1 << 64) - 1
            return b"Text=%x;Data=%x;Bss=%x" % (offset, offset, offset) if offset else b""
        if name == "qAttached":
            return b"1"  # so gdb detaches on quit instead of sending k
        if name == "qSymbol":
            return b"OK"
        return b""

    def _monitor(self, line: str) -> bytes:
        """``monitor LINE``: the text in O packets (as many as it takes), then OK."""
        text = monitor_text(line, self.monitor, self.backend.target())
        for at in range(0, len(text), MONITOR_CHUNK):
            self._console(text[at : at + MONITOR_CHUNK])
        return b"OK"

    def _more_threads(self) -> bytes:
        if not self._listed:
            return b"l"
        ids: list[str] = []
        while self._listed and sum(len(i) + 1 for i in ids) < PACKET_SIZE - 64:
            ids.append(f"{self._listed.pop(0):x}")
        return ("m" + ",".join(ids)).encode()

    # ---- threads and registers ----------------------------------------------------------

    def _views(self) -> ThreadView:
        """The threads at this stop, rebuilt whenever the backend reopened its Target."""
        target = self.backend.target()
        if self._view is None or self._view_of is not target:
            self._view, self._view_of = ThreadView.from_target(target, self.provider), target
            for warning in self._view.warnings:
                self.backend.warn_once(warning)
        return self._view

    def _memory_map(self) -> bytes:
        """The memory-map document of this stop (an error when the page tables give none:
        gdb then goes without a map)."""
        target = self.backend.target()
        if self._map_of is not target:
            self._map, self._map_of = memory_map_xml(target), target
        if self._map is None:
            raise PacketError("no memory map: paging is off or its tables are unreadable",
                              EINVAL, quiet=True)
        return self._map

    def _thread(self, gdb_id: int) -> ProxyThread:
        thread = self._views().get(gdb_id)
        if thread is None:
            raise PacketError(f"no thread {gdb_id} (it may have gone since gdb listed it)")
        return thread

    def _current(self) -> ProxyThread:
        view = self._views()
        thread = view.get(self.current) or view.on_cpu(self.last_stop.cpu)
        if thread is None:
            raise PacketError("the guest has no threads and no vCPUs to show")
        self.current = thread.gdb_id
        return thread

    def _selected(self) -> ProxyThread:
        return self._thread(self.g_thread) if self.g_thread > 0 else self._current()

    def _set_thread(self, op: str, gdb_id: int) -> bytes:
        if gdb_id > 0:
            self._thread(gdb_id)  # refuse a thread that does not exist
        if op == "g":
            self.g_thread = max(gdb_id, 0)
        elif op == "c":
            self.c_thread = gdb_id
        else:
            raise PacketError(f"unknown H operation {op!r}", EINVAL)
        return b"OK"

    def _register(self, regnum: int) -> Register:
        for reg in self.layout.registers:
            if reg.regnum == regnum:
                return reg
        raise PacketError(f"no register number {regnum:#x} in the target description", EINVAL)

    def _read_register(self, regnum: int) -> bytes:
        reg = self._register(regnum)
        return encode_register(self._selected().registers.get(reg.name), reg).encode()

    def _write_registers(self, kind: str, args: str) -> bytes:
        """``P n=value`` or ``G`` (all registers): only for a thread on a vCPU."""
        thread = self._selected()
        if thread.cpu is None:
            raise PacketError(f"thread {thread.gdb_id} ({thread.name}) is not on a vCPU: its "
                              "registers are the context it saved in guest memory, which "
                              "undebug does not rewrite")
        try:
            if kind == "P":
                number, _, data = args.partition("=")
                reg = self._register(int(number, 16))
                decoded = {reg.name: decode_register(data, reg)}
                if decoded[reg.name] is None:
                    raise PacketError(f"P cannot set {reg.name} to unavailable", EINVAL)
            else:
                decoded = decode_registers(args, self.layout.registers, whole=True)
        except RspException as exc:
            raise PacketError(f"{kind}: {exc}", EINVAL) from None
        values = {name: value for name, value in decoded.items() if value is not None}
        self.backend.write_registers(thread.cpu, values)
        return b"OK"

    # ---- memory and breakpoints ---------------------------------------------------------

    def _read_memory(self, args: str) -> bytes:
        address_text, _, length_text = args.partition(",")
        address, length = int(address_text, 16), min(int(length_text, 16), MAX_MEMORY)
        target = self.backend.target()
        try:
            data = target.read(address, length)
        except ReadError as exc:
            data = _read_prefix(target, address, length)
            if not data:
                raise PacketError(exc.message, EFAULT, quiet=True) from None
        return data.hex().encode()

    def _write_memory(self, kind: str, body: bytes) -> bytes:
        header, colon, payload = body.partition(b":")
        if not colon:
            raise ValueError("no ':' in a memory write")
        address_text, _, length_text = header.decode("ascii").partition(",")
        address, length = int(address_text, 16), int(length_text, 16)
        data = bytes.fromhex(payload.decode("ascii")) if kind == "M" else decode(payload)
        if len(data) != length:
            raise PacketError(f"memory write of {length} bytes carries {len(data)}", EINVAL)
        if data:
            try:
                self.backend.write_memory(address, data)
            except SessionError as exc:
                raise PacketError(exc.message, EFAULT) from None
        return b"OK"

    # ---- run control --------------------------------------------------------------------

    def _vcont(self, actions: str) -> bytes | None:
        step: int | None = None
        for action in actions.split(";"):
            verb, _, thread = action.partition(":")
            if verb[:1] in ("s", "S") and step is None:
                step = ThreadId.parse(thread).tid if thread else -1
            elif verb[:1] not in ("c", "C"):
                raise PacketError(f"vCont action {verb!r} is not supported", EINVAL)
        if step is not None and step <= 0:
            step = self.c_thread if self.c_thread > 0 else self.current
        return self._resume(step)

    def _resume(self, step: int | None) -> bytes | None:
        """Continue the guest (or step the vCPU running thread ``step``) until it stops."""
        if step is not None:
            thread = self._thread(step)
            if thread.cpu is None:
                return self._refuse_run(
                    f"thread {thread.gdb_id} ({thread.name}) is {thread.state}, not on a vCPU: "
                    "only a running thread can be stepped (break where it will run, then "
                    "continue)")
            try:
                return self._report(self.backend.step(thread.cpu))
            except SessionError as exc:
                return self._refuse_run(exc.message)
        since = time.time()
        self.backend.drain_events()
        try:
            self.backend.resume()
        except SessionError as exc:  # a crashed guest cannot run on: it stays stopped
            stop = self.backend.state().stop
            return self._report(stop) if stop else self._refuse_run(exc.message)
        return self._report(wait_for_stop(self.backend, self.conn, since))

    def _refuse_run(self, message: str) -> bytes:
        """Nothing ran: say why on gdb's console, then an error (gdb reports a stop with
        no signal and stays where it was; a fake stop reply would make it step again)."""
        self._console(f"undebug: {message}\n")
        return self._error(PacketError(message))

    def _report(self, stop: Stop, running: bool = True) -> bytes:
        """The stop reply, in the guest thread running on the vCPU that stopped. Its
        message goes to gdb's console only if gdb is waiting for the target to stop
        (``running``): an ``O`` packet at any other time would be read as the reply."""
        if stop.message and running:
            self._console(f"undebug: {stop.message}\n")
        elif stop.message:
            log.info("%s", stop.message)
        if stop.exit_reply is not None:
            self.done = True
            return stop.exit_reply
        self.last_stop = stop
        thread = self._views().on_cpu(stop.cpu)
        if thread is None:
            return b"S%02x" % stop.signal
        self.current, self.g_thread = thread.gdb_id, 0
        return stop_reply(stop, thread, self._hardware(stop))

    def _hardware(self, stop: Stop) -> bool | None:
        """swbreak/hwbreak for this stop, if the client takes them."""
        return self.points.hardware_of(stop) if self.swbreak else None

    def _console(self, text: str) -> None:
        """Text for the debugger's console (an O packet: only while the target runs)."""
        self.conn.send(b"O" + to_hex_text(text))

    def _detach(self) -> None:
        """gdb's detach lets the program run: delete our breakpoints and resume."""
        self.points.remove_all()
        self.backend.release()
        state = self.backend.state()
        if not state.ended and not state.crashed:
            with contextlib.suppress(SessionError):
                self.backend.resume()
        self.done = True


def _xfer(data: bytes, span: str) -> bytes:
    """One ``qXfer`` chunk: ``m`` + data when more follows, ``l`` + data at the end."""
    offset_text, _, length_text = span.partition(",")
    offset, length = int(offset_text, 16), int(length_text, 16)
    chunk = data[offset : offset + min(length, PACKET_SIZE - 64)]
    return (b"l" if offset + len(chunk) >= len(data) else b"m") + chunk


def _read_prefix(target: Target, address: int, length: int) -> bytes:
    """What can be read from ``address`` up to the first unreadable page."""
    out = bytearray()
    while len(out) < length:
        at = address + len(out)
        take = min(length - len(out), PAGE - at % PAGE)
        try:
            out += target.read(at, take)
        except ReadError:
            break
    return bytes(out)


def symbol_file_offset(target: Target, symbol_file: Path | None) -> int:
    """The load offset of the ELF gdb was given, which is what gdb applies ``qOffsets`` to:
    the kernel's slide by default, a program's own offset when gdb has the program
    (``gdbserver --symbol-file``); a file that is none of the guest's: ValueError."""
    if symbol_file is None:
        return target.load_offset
    chosen = symbol_file.resolve()
    for elf, offset in target.modules:
        if Path(elf.path).resolve() == chosen:
            return offset
    names = ", ".join(str(elf.path) for elf, _ in target.modules)
    raise ValueError(f"{symbol_file} is none of the guest's ELFs ({names})")
