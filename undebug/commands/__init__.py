"""The CLI's commands. Each module registers its commands with :func:`command`;
``undebug.cli`` imports every module here, so adding a command is adding a function."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from undebug.output import Report

__all__ = ["COMMANDS", "Command", "command"]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    description: str
    run: Callable[[argparse.Namespace], Report]
    arguments: Callable[[argparse.ArgumentParser], None]
    json: bool  # whether --json is offered (the command returns data)


COMMANDS: dict[str, Command] = {}


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
