"""The CLI's commands. Each module registers its commands with :func:`command`;
``undebug.cli`` imports every module here, so adding a command is adding a function."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from undebug.output import Report

__all__ = ["COMMANDS", "Command", "add_elf_arguments", "command", "number_at_least",
           "session_name"]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    description: str
    run: Callable[[argparse.Namespace], Report]
    arguments: Callable[[argparse.ArgumentParser], None]
    json: bool  # whether --json is offered (the command returns data)


COMMANDS: dict[str, Command] = {}


def add_elf_arguments(parser: argparse.ArgumentParser, force: bool = True) -> None:
    """``--elf`` (and ``--force`` for a build-id mismatch), the same for every command
    that reads a live guest through its ELF."""
    from pathlib import Path

    parser.add_argument("--elf", type=Path,
                        help="the guest's ELF (default: the image it booted)")
    if force:
        parser.add_argument("--force", action="store_true",
                            help="go on even when the ELF's build-id differs from the guest's")


def number_at_least(low: float, kind: Callable[[str], float] = int) -> Callable[[str], float]:
    """An argparse ``type``: a number no smaller than ``low``. Refused at parsing (exit 2)
    before any guest is asked, so a guest's state never changes what a bad value gives."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value >= low:  # also refuses NaN
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, not {text}")
        return value

    return parse


def session_name(text: str) -> str:
    """An argparse ``type`` for a new guest's ``--name`` (an empty one is not "default")."""
    from undebug.errors import UsageError
    from undebug.session.store import validate_name

    try:
        return validate_name(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(f"{exc.message} ({exc.hint})") from None


def command(
    name: str,
    help: str,
    arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None,
    description: str | None = None,
    json: bool = True,
) -> Callable[[Callable[[argparse.Namespace], Report]], Callable[[argparse.Namespace], Report]]:
    """Register a CLI command: ``help`` is its one line in ``undebug --help``."""

    def register(run: Callable[[argparse.Namespace], Report]) -> Callable[[argparse.Namespace], Report]:
        COMMANDS[name] = Command(name, help, description or help, run, arguments, json)
        return run

    return register
