"""``undebug gdbserver``: serve a guest's own threads to gdb (or any RSP front end)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from undebug.commands import add_elf_arguments, command
from undebug.errors import UsageError
from undebug.output import Report
from undebug.text import escape

if TYPE_CHECKING:  # imported by the command itself: logging is not for every start-up
    import logging

    from undebug.gdbserver.monitor import MonitorCommand
    from undebug.target import Target


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="TARGET",
                   help="a guest's name (see undebug ps) or a dump bundle's path (served "
                   "read-only)")
    p.add_argument("--listen", metavar="HOST:PORT|PATH",
                   help="where gdb connects instead of the default, a 0600 unix socket in "
                   "the guest's session directory: a loopback TCP address (port 0: a free "
                   "one) or another unix socket path")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --listen address (the protocol has no "
                   "authentication)")
    add_elf_arguments(p)
    p.add_argument("--symbol-file", type=Path, metavar="ELF",
                   help="the ELF you give gdb when it is one of the guest's programs (run "
                   "--debug-elf PROGRAM), not its kernel: qOffsets then answers that "
                   "program's load offset instead of the kernel's slide")
    p.add_argument("--verbose", action="store_true", help="log every packet to stderr")
    p.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)  # undebug eval's child


def _log_handler() -> logging.Handler:
    """stderr, escaped: log lines can carry guest text (names, crash reasons), never raw
    to a terminal."""
    import logging

    class EscapingFormatter(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return escape(super().format(record))

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(EscapingFormatter("gdbserver: %(message)s"))
    return handler


class _Terminated(BaseException):
    """SIGTERM, raised wherever the server is. A BaseException, like KeyboardInterrupt,
    so that no ``except Exception`` on the way (a failed guest read becomes a warning)
    swallows it and the server serves on after its parent died."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


PR_SET_PDEATHSIG = 1  # linux/prctl.h
GDB_SOCKET = "gdbserver.sock"  # the default, in the session directory (0700); gdb.sock is QEMU's


def _end_with_parent(parent: int) -> None:
    """SIGTERM (our clean end) when ``parent`` dies, even by SIGKILL; at once if it has
    died already (before the prctl)."""
    import ctypes  # here, not at the top: every command's start-up imports this module

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:
        raise _Terminated


def _no_arguments(name: str, body: Callable[[Target], Report]) -> MonitorCommand:
    def run(target: Target, rest: str) -> Report:
        if rest:
            raise UsageError(f"monitor {name} takes no arguments")
        return body(target)
    return run


def _monitor_dump(target: Target, rest: str) -> Report:
    """``monitor dump [DIR]``: a bundle of the live guest as it is stopped now, sparse as
    ``run --ci`` writes them, in DIR (default: ``$UNDEBUG_DUMP_DIR``, else
    ``./undebug-dumps``, from the server's directory)."""
    from undebug.commands.dump import bundle_report
    from undebug.dump.bundle import BundleRequest, write_bundle
    from undebug.live_target import LiveTarget

    if not isinstance(target, LiveTarget):
        raise UsageError("monitor dump needs a live guest: this is a dump bundle already")
    parent = Path(rest or os.environ.get("UNDEBUG_DUMP_DIR") or "undebug-dumps")
    return bundle_report(write_bundle(BundleRequest(target.client.session.name,
                                                    parent.expanduser().absolute(),
                                                    sparse=True)))


def _monitor_commands() -> dict[str, MonitorCommand]:
    """gdb's ``monitor NAME``: the CLI commands of that name, their text as printed."""
    from undebug.commands.heap import heap_body
    from undebug.commands.inspect import threads_body
    from undebug.commands.lifecycle import ps
    from undebug.commands.maps import maps_body
    from undebug.commands.net import net_body

    no_options = argparse.Namespace(check=False, capture=None, capture_stop=False)
    plain: dict[str, Callable[[Target], Report]] = {
        "threads": lambda target: threads_body(target, no_options),
        "ps": lambda target: ps(no_options),
        "maps": lambda target: maps_body(target, no_options),
        "heap": lambda target: heap_body(target, no_options),
        "net": lambda target: net_body(target, no_options)}
    commands = {name: _no_arguments(name, body) for name, body in plain.items()}
    commands["dump"] = _monitor_dump
    return commands


@command("gdbserver", "serve the guest's threads to gdb (a thread-aware gdbserver)", _arguments,
         description="Listen for gdb (target remote PATH: a 0600 unix socket in the guest's "
         "session directory, or --listen HOST:PORT) and serve the guest with its OS's own "
         "threads: info threads, thread apply all bt, breakpoints, watchpoints, continue, step, "
         "monitor threads|ps|maps|heap|net|dump [DIR]|help. One "
         "debugger at a time; its breakpoints go when it goes (gdb's detach also lets the "
         "guest run). Ctrl-C ends the server and leaves the guest as it is.", json=False)
def gdbserver(args: argparse.Namespace) -> Report:
    import logging
    import tempfile

    from undebug.coretarget import is_bundle
    from undebug.gdbserver.dump import DumpBackend
    from undebug.gdbserver.live import LiveBackend
    from undebug.gdbserver.server import GdbServer, parse_listen
    from undebug.os import provider_for
    from undebug.session.store import SessionDir

    handler = _log_handler()
    logger = logging.getLogger("undebug.gdbserver")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logger.propagate = False
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    backend: LiveBackend | DumpBackend | None = None
    server: GdbServer | None = None
    private: str | None = None  # the socket's own 0700 directory, for a bundle
    try:
        if args.parent_pid is not None:
            _end_with_parent(args.parent_pid)
        if is_bundle(args.target):  # a dump: served read-only, from a socket of its own
            address = parse_listen(args.listen, args.allow_remote) if args.listen else \
                Path(private := tempfile.mkdtemp(prefix="undebug-gdbserver-")) / GDB_SOCKET
            backend = DumpBackend(Path(args.target), args.elf, force=args.force)
        else:
            session = SessionDir.named(args.target)
            address = parse_listen(args.listen, args.allow_remote) if args.listen else \
                session.path / GDB_SOCKET
            backend = LiveBackend(session, args.elf, force=args.force)
        server = GdbServer(backend, lambda target: provider_for(target).threads(), address,
                           _monitor_commands(), args.symbol_file)
        print(f"listening on {server.where} (gdb: target remote {server.where})", flush=True)
        server.serve()
    except (KeyboardInterrupt, _Terminated):
        logger.info("stopped; the guest stays as it is")
    finally:
        if server is not None:
            server.close()
        if backend is not None:
            backend.close()
        if private is not None:
            import shutil

            shutil.rmtree(private, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
        logger.removeHandler(handler)
    return Report()
