"""The ``undebug`` command line: parse, dispatch to a registered command, report.

Every command follows docs/cli.md: ``--help``, ``--json`` where it returns data (schema
``undebug/1`` with ``warnings``), and exit codes 0 ok, 1 guest crashed or check failed,
2 usage or input error, 3 environment missing, 4 undebug itself failed. No traceback
reaches the user: the last resort in :func:`main` keeps it in a file and names it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import pkgutil
import sys

from undebug import __version__, commands
from undebug.errors import EXIT_USAGE, InternalError, UndebugError
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
               "error, 3 environment missing, 4 undebug itself failed (an internal error), "
               "130 interrupted. See docs/cli.md.",
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
    as_json = False
    try:
        parser = build_parser(sys.argv[1:] if argv is None else argv)
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        as_json = getattr(args, "json", False)
        return emit(commands.COMMANDS[args.command].run(args), as_json=as_json)
    except UndebugError as exc:
        return _report(exc, as_json)
    except KeyboardInterrupt:
        sys.stderr.write("undebug: interrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return 0
    except Exception as exc:  # the last resort: a bug of ours, or a machine we did not foresee
        return _report(_internal_error(exc), as_json)


def _report(exc: UndebugError, as_json: bool) -> int:
    """The error as one line (and a hint) on stderr, and the JSON document under --json."""
    if as_json:
        error = {"schema": SCHEMA, "error": {"message": exc.message, "hint": exc.hint,
                                             "exit_code": exc.exit_code}, "warnings": []}
        try:
            print(json.dumps(error, indent=2), flush=True)
        except OSError:  # stdout itself may be what failed
            _silence_stdout()
    sys.stderr.write(f"undebug: {exc.label}: {escape(exc.message)}\n")
    if exc.hint:
        sys.stderr.write(f"  hint: {escape(exc.hint)}\n")
    return exc.exit_code


def _internal_error(exc: Exception) -> InternalError:
    """Keep the traceback in a 0600 file under the runtime dir (never on the terminal)
    and say where it is."""
    import tempfile  # only when undebug itself failed: not on every command's start-up
    import traceback

    text = "".join(traceback.format_exception(exc))
    try:
        from undebug.session.store import log_path

        path = str(log_path("internal-error"))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except Exception:  # the runtime dir may be the trouble: a private temp file then
        fd, path = tempfile.mkstemp(prefix="undebug-internal-error-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write(f"undebug {__version__}: {' '.join(sys.argv)}\n{text}")
    _silence_stdout()
    return InternalError(f"{type(exc).__name__}: {exc}",
                         hint=f"the traceback is in {path}; please report it")


def _silence_stdout() -> None:
    """After stdout failed (a full disk, a closed pipe), drop what is still buffered:
    Python's own flush at exit would print a traceback."""
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        return
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
