"""An undebug command line read against the CLI's own parser, without running it.

The shell (and any front end with a command bar) needs to know, for a line a user typed,
which command and subcommand it names, which positional slots the words fill and which
options are given: to put the session's guest in the TARGET slot, to refuse commands that
run until Ctrl-C, and to know what to complete. Everything here is read from argparse's
actions, so a new command or option needs no change here.
"""

from __future__ import annotations

import argparse
import functools
import shlex
from dataclasses import dataclass, field

from undebug import cli

__all__ = ["Line", "command_helps", "command_parser", "read_line", "read_only_refusal", "refusal",
           "split", "with_target"]

# The metavars of a first positional that names a guest (TARGET, NAME, or trace's
# FILE|TARGET): the slot the shell's guest fills.
TARGET_METAVARS = frozenset({"TARGET", "NAME", "FILE|TARGET"})

# Commands that run until Ctrl-C or take over the terminal: the shell refuses them and
# gives the CLI line instead. (command path, option dest that makes it long-running or None)
LONG_RUNNING: tuple[tuple[tuple[str, ...], str | None], ...] = (
    (("gdbserver",), None), (("run",), None), (("attach",), None), (("demo",), None),
    (("tui",), None), (("shell",), None), (("trace", "record"), None),
    (("trace", "show"), "follow"), (("logs",), "follow"),
)

# Commands that change the guest or write files: refused by a read-only front end
# (``undebug tui --read-only``). (command path, option dest that makes it read-only or None)
CHANGES: tuple[tuple[tuple[str, ...], str | None], ...] = (
    (("stop",), None), (("cont",), None), (("step",), None), (("break",), "list"),
    (("delete",), None), (("kill",), None), (("trace", "export"), None),
)


@functools.cache
def command_parser() -> argparse.ArgumentParser:
    """The CLI's whole parser (built-in commands and plugins), built once."""
    return cli.build_parser(None)


_Sub = argparse._SubParsersAction  # argparse's name for a subcommand slot


def _subparsers(parser: argparse.ArgumentParser) -> _Sub[argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, _Sub):
            return action
    return None


def command_helps() -> dict[str, str]:
    """Every command's name and its one line of ``undebug --help``, by name."""
    sub = _subparsers(command_parser())
    helps = {a.dest: a.help or "" for a in sub._choices_actions} if sub else {}
    return dict(sorted(helps.items()))


def _positionals(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not a.option_strings]


@dataclass
class Line:
    """What the words of a command line are, for the parser they reach."""

    path: tuple[str, ...] = ()  # ("trace", "stats"): the command and its subcommands
    parser: argparse.ArgumentParser | None = None  # the parser of ``path`` (None: unknown)
    positionals: list[str] = field(default_factory=list)  # positional words, in order
    options: set[str] = field(default_factory=set)  # dests of the options given
    pending: argparse.Action | None = None  # the option still waiting for its value
    rest: int = 0  # index in the words where the positionals of ``parser`` start

    @property
    def slots(self) -> list[argparse.Action]:
        """The positional slots of the command (its subcommand slot included)."""
        return _positionals(self.parser) if self.parser else []

    @property
    def takes_target(self) -> bool:
        slots = self.slots
        return bool(slots) and slots[0].metavar in TARGET_METAVARS

    @property
    def needs_subcommand(self) -> bool:
        return self.parser is not None and _subparsers(self.parser) is not None


def _option(parser: argparse.ArgumentParser, word: str) -> argparse.Action | None:
    """The action of option ``word`` (``--thread``, ``--thr`` as argparse abbreviates it)."""
    name = word.split("=", 1)[0]
    actions = parser._option_string_actions
    if name in actions:
        return actions[name]
    if name.startswith("--"):
        matches = {actions[s] for s in actions if s.startswith(name)}
        return matches.pop() if len(matches) == 1 else None
    return None


def read_line(words: list[str]) -> Line:
    """Read ``words`` (the line without ``undebug``) as the CLI's parser would."""
    line = Line()
    parser: argparse.ArgumentParser | None = command_parser()
    at = 0
    while parser is not None and (sub := _subparsers(parser)) is not None:
        if at >= len(words) or words[at] not in sub.choices:
            if parser is command_parser():
                parser = None  # no command (yet): nothing to read against
            break
        line.path += (words[at],)
        parser = sub.choices[words[at]]
        at += 1
    line.parser, line.rest = parser, at
    if parser is None:
        return line
    only_positionals = False
    for word in words[at:]:
        if line.pending is not None:
            line.pending = None
        elif word == "--" and not only_positionals:
            only_positionals = True
        elif word.startswith("-") and len(word) > 1 and not only_positionals:
            _read_option(parser, word, line)
        else:
            line.positionals.append(word)
    return line


def _read_option(parser: argparse.ArgumentParser, word: str, line: Line) -> None:
    if word.startswith("--"):
        action = _option(parser, word)
        if action is not None:
            line.options.add(action.dest)
            if action.nargs != 0 and "=" not in word:
                line.pending = action
        return
    for i, char in enumerate(word[1:], 1):  # -fn 5, -n5: a cluster of short options
        action = parser._option_string_actions.get(f"-{char}")
        if action is None:
            return
        line.options.add(action.dest)
        if action.nargs != 0:
            if i == len(word) - 1:
                line.pending = action
            return


def with_target(words: list[str], name: str) -> list[str]:
    """``words`` with ``name`` in the TARGET slot when the line leaves that slot empty:
    fewer positional words than the command has slots (``mem planted_counter 8``). A
    line that fills every slot names its own target (``threads other``)."""
    line = read_line(words)
    if not line.takes_target or len(line.positionals) >= len(line.slots):
        return words
    return [*words[: line.rest], name, *words[line.rest :]]


def refusal(words: list[str]) -> str | None:
    """Why the shell does not run this line (it runs until Ctrl-C), with the CLI line to
    use instead; None when the shell runs it."""
    line = read_line(words)
    for path, option in LONG_RUNNING:
        if line.path == path and (option is None or option in line.options):
            what = " ".join(path) + (f" --{option}" if option else "")
            return (f"{what} runs until it ends or Ctrl-C, not in the shell; run it from a "
                    f"terminal: undebug {shlex.join(words)}")
    return None


def split(text: str) -> list[str]:
    """The words of ``text`` as a POSIX shell splits them (raises ValueError on an
    unclosed quote)."""
    return shlex.split(text, comments=True)


def read_only_refusal(words: list[str], dump: str | None = None) -> str | None:
    """Why a read-only front end does not run this line (it changes the guest or writes
    files); None when it only reads. ``dump``: the front end shows that dump bundle."""
    line = read_line(words)
    for path, reads in CHANGES:
        if line.path == path and (reads is None or reads not in line.options):
            if dump is not None:
                return (f"{' '.join(path)} needs a live guest, and {dump} is a dump bundle "
                        "(one moment, offline): run control is off")
            return (f"{' '.join(path)} changes the guest or writes files, and this view is "
                    f"read-only (--read-only); from a terminal: undebug {shlex.join(words)}")
    return None
