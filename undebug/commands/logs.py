"""``undebug logs``: the guest's console, with control characters escaped."""

from __future__ import annotations

import argparse
import sys
import time

from undebug.commands import command, number_at_least
from undebug.console import ConsoleFollower, tail_lines
from undebug.output import Report
from undebug.session.store import SessionDir, has_ended
from undebug.text import escape


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="the guest's name (see undebug ps)")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep printing new output until the guest ends or Ctrl-C")
    p.add_argument("-n", "--tail", type=number_at_least(0), default=None, metavar="N",
                   help="only the last N lines (default: all; 0: none, e.g. with -f)")


@command("logs", "print a guest's console output", _arguments, json=False,
         description="Print what the guest wrote to its serial console. Control characters "
         "and escape sequences from the guest are shown escaped, never sent to the terminal.")
def logs(args: argparse.Namespace) -> Report:
    session = SessionDir.named(args.name)
    session.read_record()  # "no guest named ..." when there is none
    if args.tail is not None:
        for line in tail_lines(session.console_log, args.tail) if args.tail else []:
            sys.stdout.write(escape(line) + "\n")
        follower = ConsoleFollower(session.console_log, start_at_end=True)
    else:
        follower = ConsoleFollower(session.console_log)
        while lines := follower.poll():
            sys.stdout.write("".join(escape(line) + "\n" for line in lines))
        if not args.follow:
            sys.stdout.write("".join(escape(line) + "\n" for line in follower.poll(True)))
    # The guest's end is seen on one connection kept open: a connect per look would wake
    # its supervisor ten times a second (bench/README.md, at_rest).
    watch = session.watch() if args.follow else None
    try:
        while args.follow:
            sys.stdout.flush()
            alive = watch is not None and not has_ended(watch)
            for line in follower.poll(flush_partial=not alive):
                sys.stdout.write(escape(line) + "\n")
            if not alive:
                break
            time.sleep(0.1)
    finally:
        if watch is not None:
            watch.close()
    return Report()
