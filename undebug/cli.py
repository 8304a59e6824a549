"""The ``undebug`` command line: parse, dispatch to a registered command, report.

Every command follows docs/cli.md: ``--help``, ``--json`` where it returns data (schema
``undebug/1`` with ``warnings``), and exit codes 0 ok, 1 guest crashed or check failed,
2 usage or input error, 3 environment missing. No traceback reaches the user.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys

from undebug import __version__, commands
from undebug.errors import EXIT_USAGE, UndebugError
from undebug.output import SCHEMA, emit
from undebug.text import escape

EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(EXIT_USAGE)


COMMAND_GROUP = "undebug.cli"  # entry points of front-end commands that live outside undebug/


def _register_builtin() -> None:
    """Import every module of undebug/commands/: each registers its commands."""
    for module in pkgutil.iter_modules(commands.__path__):
        importlib.import_module(f"{commands.__name__}.{module.name}")


def _register_plugins() -> None:
    """Load the ``undebug.cli`` entry points: front-end commands that live outside
    undebug/ (e.g. ``tui``), which undebug itself must not import."""
    import importlib.metadata  # ~20 ms with the scan: only when a plugin may be wanted

    for entry in importlib.metadata.entry_points(group=COMMAND_GROUP):
        try:
            entry.load()
        except ImportError as exc:  # a front end whose toolkit is missing: say so, go on
            sys.stderr.write(f"undebug: warning: commands of {escape(entry.value)} are "
                             f"unavailable: {escape(str(exc))}\n")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line. An ``argv`` whose first word is a built-in command spares
    the plugins' entry points (start-up time)."""
    _register_builtin()
    first = next((word for word in argv or [] if not word.startswith("-")), None)
    if argv is None or first not in commands.COMMANDS:
        _register_plugins()
    parser = _Parser(
        prog="undebug",
        description="Debug and observe unikernels running under QEMU.",
        epilog="Exit codes: 0 ok, 1 the guest crashed or a check failed, 2 usage or input "
               "error, 3 environment missing, 130 interrupted. See docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"undebug {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in sorted(commands.COMMANDS):
        cmd = commands.COMMANDS[name]
        p = sub.add_parser(name, help=cmd.help, description=cmd.description)
        cmd.arguments(p)
        if cmd.json:
            p.add_argument("--json", action="store_true",
                           help=f"print one JSON document (schema {SCHEMA})")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    cmd = commands.COMMANDS[args.command]
    try:
        report = cmd.run(args)
        return emit(report, as_json=getattr(args, "json", False))
    except UndebugError as exc:
        if getattr(args, "json", False):
            error = {"schema": SCHEMA, "error": {"message": exc.message, "hint": exc.hint,
                                                 "exit_code": exc.exit_code}, "warnings": []}
            print(json.dumps(error, indent=2))
        sys.stderr.write(f"undebug: error: {escape(exc.message)}\n")
        if exc.hint:
            sys.stderr.write(f"  hint: {escape(exc.hint)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("undebug: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
