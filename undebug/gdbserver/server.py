"""A thread-aware gdbserver: stock gdb, VS Code or CLion see the guest OS's own threads.

QEMU's gdbstub shows vCPUs. This RSP *server* sits in front of a backend (a live guest's
supervisor, never a raw socket to QEMU, whose single connection the supervisor owns; later
a dump) and serves the guest's threads instead, the way pyOCD's and OpenOCD's RTOS-aware gdbservers do:

- :mod:`undebug.gdbserver.wire`: the connection (packets, acks, the 0x03 interrupt);
- :mod:`undebug.gdbserver.threads`: guest threads as gdb sees them, registers encoded;
- :mod:`undebug.gdbserver.session`: the packets answered, thread ids translated;
- :mod:`undebug.gdbserver.runstate`: run control: waiting for a stop;
- :mod:`undebug.gdbserver.stopinfo`: stop replies and LLDB's per-thread answers;
- :mod:`undebug.gdbserver.stoppoints`: the debugger's breakpoints and watchpoints;
- :mod:`undebug.gdbserver.memorymap`: the memory map gdb reads, from the page tables;
- :mod:`undebug.gdbserver.monitor`: ``monitor NAME`` (qRcmd): the CLI's views;
- :mod:`undebug.gdbserver.backend`: what the guest behind it offers (a Target per stop, run
  control, breakpoints), and the thread provider the command injects;
- :mod:`undebug.gdbserver.live`: that backend for a live guest (its supervisor).

This module listens (a 0600 unix socket, or loopback TCP if asked) and serves one debugger
at a time.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import select
import socket
import stat
from collections.abc import Mapping
from pathlib import Path

from undebug.errors import SessionError, UsageError
from undebug.gdb.packets import RspException
from undebug.gdb.tdesc import TargetDescription, parse_target_xml
from undebug.gdbserver.backend import Backend, ThreadProvider
from undebug.gdbserver.monitor import MonitorCommand
from undebug.gdbserver.session import GdbSession, symbol_file_offset
from undebug.gdbserver.wire import GdbConnection

__all__ = ["GdbServer", "ListenAddress", "parse_listen"]

log = logging.getLogger("undebug.gdbserver")

ListenAddress = tuple[str, int] | Path


def parse_listen(text: str, allow_remote: bool = False) -> ListenAddress:
    """``HOST:PORT``, ``PORT``, ``[V6]:PORT`` or a unix socket path (it has a '/').

    gdb's protocol has no authentication: whoever connects reads and writes guest memory,
    so anything but a loopback address is refused unless ``allow_remote``.
    """
    if "/" in text:
        return Path(text)
    host, colon, port_text = text.rpartition(":")
    if not colon:
        host, port_text = "127.0.0.1", text
    host = host.removeprefix("[").removesuffix("]") or "127.0.0.1"
    try:
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise UsageError(f"bad --listen {text!r}: the port must be a number 0..65535",
                         hint="e.g. --listen 127.0.0.1:1234, or a unix socket path") from None
    if not allow_remote and not _is_loopback(host):
        raise UsageError(f"refusing to listen on {host}: the gdb protocol has no "
                         "authentication, so anyone who can connect can read and write "
                         "guest memory",
                         hint="listen on 127.0.0.1 (reach it through an SSH tunnel), or pass "
                         "--allow-remote")
    return host, port


def _is_loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        raise UsageError(f"cannot resolve --listen host {host!r}") from None
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).partition("%")[0])
                               .is_loopback for info in infos)


def _listen(address: ListenAddress) -> socket.socket:
    if isinstance(address, Path):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _remove_stale_socket(address)
        old_umask = os.umask(0o177)  # 0600 from its creation: no window for others
        try:
            sock.bind(str(address))
        except OSError as exc:
            sock.close()
            raise UsageError(f"cannot listen on {address}: {exc.strerror}") from None
        finally:
            os.umask(old_umask)
    else:
        host, port = address
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}",
                             hint="pick another port, or 0 for a free one") from None
    sock.listen(1)
    return sock


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by a proxy that was killed: remove it if nobody listens."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise UsageError(f"cannot listen on {path}: it exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()
        return
    finally:
        probe.close()
    raise UsageError(f"cannot listen on {path}: another server is listening there")


class GdbServer:
    """Listens on one address and serves one debugger at a time until the guest ends."""

    def __init__(self, backend: Backend, provider: ThreadProvider,
                 address: ListenAddress,
                 monitor: Mapping[str, MonitorCommand] | None = None,
                 symbol_file: Path | None = None) -> None:
        self.backend = backend
        self.provider = provider
        self.monitor = monitor  # gdb's `monitor NAME` commands
        self.symbol_file = symbol_file  # the ELF gdb is given, for qOffsets
        try:
            self.xml_files = backend.target_xml()
            files = {name: text.encode() for name, text in self.xml_files.items()}
            self.layout: TargetDescription = parse_target_xml(lambda annex: files[annex])
        except (KeyError, RspException, SessionError) as exc:
            raise UsageError(f"cannot get the guest's register layout from QEMU: {exc}") \
                from None
        try:  # the ELF and its build-id are checked now, not at gdb's connect
            symbol_file_offset(backend.target(), symbol_file)
        except ValueError as exc:
            raise UsageError(f"--symbol-file: {exc}") from None
        backend.release()
        self.address = address
        self.stopping = False
        self.listener = _listen(address)
        if isinstance(address, tuple):
            bound = self.listener.getsockname()
            self.address = (address[0], int(bound[1]))

    @property
    def where(self) -> str:
        """What to give gdb's ``target remote``."""
        if isinstance(self.address, Path):
            return str(self.address)
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def serve(self) -> None:
        """Accept debuggers one after the other; return when the guest has ended (or after
        :meth:`stop`, once the debugger connected then has gone)."""
        while not self.backend.ended and not self.stopping:
            ready, _, _ = select.select([self.listener], [], [], 0.5)
            if not ready:
                self.backend.drain_events()  # only the guest's end matters meanwhile
                continue
            sock, peer = self.listener.accept()
            log.info("debugger connected%s", f" from {peer[0]}:{peer[1]}"
                     if isinstance(peer, tuple) else "")
            session = GdbSession(GdbConnection(sock, self.listener), self.backend,
                                 self.provider, self.layout, self.xml_files, self.monitor,
                                 self.symbol_file)
            session.run()
            log.info("debugger disconnected; waiting for the next one")
        log.info("the guest has ended")

    def stop(self) -> None:
        """Make :meth:`serve` return (from another thread), within half a second."""
        self.stopping = True

    def close(self) -> None:
        self.listener.close()
        if isinstance(self.address, Path):
            with contextlib.suppress(OSError):
                self.address.unlink()
