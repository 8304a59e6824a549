"""``undebug tui``, registered through the ``undebug.cli`` entry-point group so that
undebug itself never imports Textual (the app is imported only when the command runs)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from undebug.commands import command
from undebug.errors import UsageError
from undebug.output import Report


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME|BUNDLE", nargs="?",
                   help="the guest to open (see undebug ps), or a dump bundle's path (the "
                   "crashed thread selected, run control off); without it, a list of guests")
    p.add_argument("--read-only", action="store_true",
                   help="no run control: stop, continue and step are refused")
    p.add_argument("--no-mouse", action="store_true",
                   help="leave the mouse to the terminal (its own text selection works)")
    p.add_argument("--theme", choices=("dark", "light"), default="dark",
                   help="colours for a dark or a light terminal (t switches; NO_COLOR: none)")


@command("tui", "a full-screen view of a guest: threads, backtrace, registers, console",
         _arguments, json=False,
         description="Open a full-screen terminal view of the guest NAME (or of every guest, "
         "to pick one): its threads, the selected thread's backtrace and registers, tabs of "
         "panes (console, disassembly, source, memory, watch, trace, output, memory map, "
         "heap, network), a : command "
         "bar, and run control (s stop, c continue, n step, p snapshot). Press ? for the "
         "keys (rebindable in ~/.config/undebug/tui-keys.toml). A dump bundle's path (undebug "
         "dump, run --ci) opens the dump with the same panes and no run control. Needs a terminal; NO_COLOR "
         "turns colour off.")
def tui(args: argparse.Namespace) -> Report:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("undebug tui needs a terminal (stdin and stdout are not one)",
                         hint="for scripts, use undebug threads / bt / logs (with --json)")
    from tui.app import UndebugApp
    from undebug.coretarget import is_bundle, read_bundle

    if args.name is not None and is_bundle(args.name):
        read_bundle(Path(args.name))  # "not a dump bundle" (exit 2) before the screen opens

    UndebugApp(args.name, read_only=args.read_only, theme=args.theme).run(mouse=not args.no_mouse)
    return Report()
