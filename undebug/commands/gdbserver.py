"""``undebug gdbserver``: serve a guest's own threads to gdb (or any RSP front end)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from types import FrameType

from undebug.commands import add_elf_arguments, command
from undebug.output import Report
from undebug.text import escape


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="TARGET", help="a guest's name (see undebug ps)")
    p.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT|PATH",
                   help="where gdb connects: a loopback address (default 127.0.0.1 and a "
                   "free port) or a unix socket path")
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --listen address (the protocol has no "
                   "authentication)")
    add_elf_arguments(p)
    p.add_argument("--verbose", action="store_true", help="log every packet to stderr")


class _EscapingFormatter(logging.Formatter):
    """Log lines can carry guest text (names, crash reasons): never raw to a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record))


class _Terminated(Exception):
    pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


@command("gdbserver", "serve the guest's threads to gdb (a thread-aware gdbserver)", _arguments,
         description="Listen for gdb (target remote HOST:PORT) and serve the guest with its "
         "OS's own threads: info threads, thread apply all bt, breakpoints, continue, step. "
         "One debugger at a time; gdb's detach deletes its breakpoints and lets the guest "
         "run. Ctrl-C ends the server and leaves the guest as it is.", json=False)
def gdbserver(args: argparse.Namespace) -> Report:
    from undebug.gdbserver.live import LiveBackend
    from undebug.gdbserver.server import GdbServer, parse_listen
    from undebug.os import provider_for
    from undebug.session.store import SessionDir

    address = parse_listen(args.listen, args.allow_remote)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_EscapingFormatter("gdbserver: %(message)s"))
    logger = logging.getLogger("undebug.gdbserver")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logger.propagate = False
    backend = LiveBackend(SessionDir.named(args.target), args.elf, force=args.force)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        server = GdbServer(backend, lambda target: provider_for(target).threads(), address)
        try:
            print(f"listening on {server.where} (gdb: target remote {server.where})",
                  flush=True)
            server.serve()
        except (KeyboardInterrupt, _Terminated):
            logger.info("stopped; the guest stays as it is")
        finally:
            server.close()
    finally:
        signal.signal(signal.SIGTERM, previous)
        backend.close()
        logger.removeHandler(handler)
    return Report()
