"""``undebug shell [NAME|BUNDLE]``: the CLI's commands as a REPL (prompt_toolkit).

Each line is an undebug command line run in-process through the CLI's own parser and
dispatch (``undebug.cli.main``), so it prints exactly what the CLI prints and exits with
its code; with NAME, a line that leaves the TARGET slot empty gets NAME there. Completion
lives in tui/completion.py, the reading of a line against the parser in tui/cmdline.py.
When stdin or stdout is not a terminal the lines are read plainly (no prompt, no colour)
and the shell's exit code is that of the last line that failed, so scripts can pipe
commands in. With a dump bundle's path, lines take the bundle as their target and run
control (``stop``, ``cont``, ``step``, ``break``, ...) is refused.
"""

from __future__ import annotations

import argparse
import code
import os
import sys
from pathlib import Path
from typing import TextIO

from tui.cmdline import command_helps, read_only_refusal, refusal, split, with_target
from undebug import cli
from undebug.commands import command
from undebug.errors import EXIT_USAGE, UndebugError
from undebug.output import Report
from undebug.text import escape

__all__ = ["Shell", "history_path"]

EXIT_WORDS = frozenset({"exit", "quit"})
BUILTINS = {
    "help": "list the commands (help CMD: its --help)",
    "py": "a Python prompt with `guest` bound to undebug.attach(NAME) (held still until it ends)",
    "exit": "leave the shell (also quit, Ctrl-D)",
}


def history_path() -> Path:
    """The per-user history file: $XDG_STATE_HOME/undebug/shell_history (default
    ~/.local/state), created 0600 in a 0700 directory (lines may name addresses, hosts)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    directory = Path(state) / "undebug"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / "shell_history"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    return path


class Shell:
    """Runs lines; ``failed`` is the exit code of the last line that failed (0: none)."""

    def __init__(self, name: str | None) -> None:
        from undebug.coretarget import is_bundle

        self.name = name
        self.dump = name if name is not None and is_bundle(name) else None
        self.failed = 0
        self.done = False

    def run_line(self, text: str) -> None:
        """Run one line and note its exit code; ``exit`` sets ``done``."""
        try:
            words = split(text)
        except ValueError as exc:
            code_ = self._usage(f"cannot read the line: {exc}")
        else:
            code_ = self._run(words) if words else 0
        if code_:
            self.failed = code_

    def _run(self, words: list[str]) -> int:
        first, rest = words[0], words[1:]
        if first in EXIT_WORDS:
            self.done = True
            return 0
        if first == "help":
            return self._help(rest)
        if first == "py":
            return self._python(rest)
        if self.name is not None:
            words = with_target(words, self.name)
        reason = refusal(words) or (read_only_refusal(words, self.dump) if self.dump else None)
        if reason is not None:
            sys.stderr.write(f"undebug: error: {escape(reason)}\n")
            return EXIT_USAGE
        return dispatch(words)

    def _usage(self, message: str) -> int:
        sys.stderr.write(f"undebug: error: {escape(message)}\n")
        return EXIT_USAGE

    def _help(self, words: list[str]) -> int:
        if words:
            return dispatch([*words, "--help"])
        helps = command_helps()
        width = max(map(len, [*helps, *BUILTINS]))
        sys.stdout.write("Commands (as `undebug CMD ...`; with a guest named at start, "
                        "TARGET may be left out):\n")
        for name in sorted(helps):
            note = "  (not in the shell: run undebug CMD)" if refusal([name]) is not None else ""
            sys.stdout.write(f"  {name.ljust(width)}  {helps[name]}{note}\n")
        sys.stdout.write("Shell:\n")
        for name, text in BUILTINS.items():
            sys.stdout.write(f"  {name.ljust(width)}  {text}\n")
        sys.stdout.flush()
        return 0

    def _python(self, words: list[str]) -> int:
        """``py [TARGET]``: code.interact with ``guest`` held still, closed (resumed) after."""
        import undebug

        target = words[0] if words else self.name
        if target is None or len(words) > 1:
            return self._usage("py takes one guest: py NAME (or start with undebug shell NAME)")
        try:
            guest = undebug.attach(target)
        except UndebugError as exc:
            return cli._report(exc, as_json=False)  # the CLI's own error lines
        interactive = sys.stdin.isatty()
        banner = (f"Python {sys.version.split()[0]}: `guest` is undebug.attach({target!r}), held "
                  "still until you leave (Ctrl-D)") if interactive else ""
        try:
            code.interact(banner=banner, local={"guest": guest, "undebug": undebug},
                          readfunc=None if interactive else _read_plain, exitmsg="")
        except SystemExit:  # exit() in the Python prompt leaves it, not the shell
            pass
        finally:
            guest.close()
        return 0


def _read_plain(prompt: str) -> str:
    """A line of stdin without printing a prompt (a pipe into ``py``)."""
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line.rstrip("\n")


def dispatch(words: list[str]) -> int:
    """Run ``undebug WORDS`` in-process, as the CLI does, and return its exit code."""
    try:
        return cli.main(words)
    except SystemExit as exc:  # argparse: a usage error (2) or --help (0)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    finally:
        sys.stdout.flush()


def run_piped(shell: Shell, lines: TextIO) -> int:
    """Each line run as it is read, no prompt: the exit code of the last failing line."""
    while not shell.done and (text := lines.readline()):
        shell.run_line(text)
    return shell.failed


def run_interactive(shell: Shell) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, History, InMemoryHistory

    from tui.completion import LineCompleter

    history: History
    try:
        history = FileHistory(str(history_path()))
    except OSError as exc:  # a read-only home: the shell works, its lines are not kept
        sys.stderr.write(f"warning: no shell history: {escape(str(exc))}\n")
        history = InMemoryHistory()
    session: PromptSession[str] = PromptSession(
        history=history, completer=LineCompleter(shell.name), complete_in_thread=True,
        complete_while_typing=False)
    prompt = f"undebug {escape(shell.name)}> " if shell.name else "undebug> "
    while not shell.done:
        try:
            text = session.prompt([("bold", prompt)])
        except KeyboardInterrupt:  # Ctrl-C cancels the line
            continue
        except EOFError:  # Ctrl-D
            break
        try:
            shell.run_line(text)
        except KeyboardInterrupt:  # between the prompt and the command's own handling
            sys.stderr.write("undebug: interrupted\n")
            shell.failed = cli.EXIT_INTERRUPTED
    return shell.failed


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME|BUNDLE", nargs="?",
                   help="the guest the commands are about (see undebug ps), or a dump bundle's "
                   "path (run control refused): they then take no TARGET")


@command("shell", "run undebug commands at a prompt, with completion and history", _arguments,
         json=False, description="A REPL of undebug's commands: each line is an undebug "
         "command line (threads, bt --thread 8, mem planted_counter 8, ...), printed as the "
         "CLI prints it. `help` lists the commands, `py` opens Python with the guest "
         "attached. A dump bundle's path in place of NAME: the commands read the dump, "
         "run control is refused. Without a terminal, lines are read from stdin and the exit code is the "
         "last failing line's.")
def shell(args: argparse.Namespace) -> Report:
    if args.name is not None:
        from undebug.coretarget import is_bundle, read_bundle
        from undebug.session.store import SessionDir

        if is_bundle(args.name):
            read_bundle(Path(args.name))  # "not a dump bundle" (exit 2) up front
        else:
            SessionDir.named(args.name).read_record()  # "no guest named ..." (exit 2) up front
    repl = Shell(args.name)
    if sys.stdin.isatty() and sys.stdout.isatty():
        code_ = run_interactive(repl)
    else:
        code_ = run_piped(repl, sys.stdin)
    return Report(exit_code=code_)
