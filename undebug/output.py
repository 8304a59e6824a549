"""The one output contract of every command (docs/cli.md).

A command returns a :class:`Report`: data for ``--json`` (one versioned schema with a
``warnings`` list) and the lines a person reads. Warnings go to stderr in human mode so
pipelines that read stdout see only data.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from undebug.text import escape

SCHEMA = "undebug/1"

__all__ = ["SCHEMA", "Report", "emit"]


@dataclass
class Report:
    """What a command produced: ``data`` for machines, ``render`` for people."""

    data: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    render: Callable[[], list[str]] | None = None
    exit_code: int = 0
    written: bool = False  # the command streamed its document itself (trace show --json)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **self.data, "warnings": self.warnings}


def emit(report: Report, *, as_json: bool) -> int:
    """Print ``report`` as JSON or as text and return its exit code."""
    if report.written:
        return report.exit_code
    if as_json:
        # Pretty for a person, compact (and with the C encoder: fast) for a pipe; one
        # write either way, since unbuffered stdout would make a write per token.
        indent = 2 if sys.stdout.isatty() else None
        sys.stdout.write(json.dumps(report.to_json(), indent=indent) + "\n")
    else:
        lines = report.render() if report.render else []
        sys.stdout.write("".join(line + "\n" for line in lines))
        for warning in report.warnings:
            sys.stderr.write(f"warning: {escape(warning)}\n")
    sys.stdout.flush()
    return report.exit_code
