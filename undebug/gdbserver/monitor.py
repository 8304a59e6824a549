"""``qRcmd``: ``monitor threads`` in gdb (``process plugin packet monitor threads`` in
LLDB) prints undebug's own views in the debugger's console, so a user in an IDE's debug
console needs no terminal beside it.

The commands are injected by the command layer (this package imports no front end): each
takes the Target of this stop and the rest of the line (its arguments, ``""`` for none;
a command that takes none refuses others) and returns the CLI's
:class:`~undebug.output.Report`, whose
lines (escaped by the CLI's renderers, as on a terminal) and warnings (escaped here, as
:func:`~undebug.output.emit` does) become the text. Per the RSP, the text goes in ``O``
packets, hex-encoded, and the reply is ``OK``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from undebug.errors import UndebugError
from undebug.output import Report
from undebug.target import Target
from undebug.text import escape

__all__ = ["MonitorCommand", "monitor_text"]

MonitorCommand = Callable[[Target, str], Report]
"""One ``monitor NAME ARGS``: the Report of the CLI command of that name, on this Target."""


def _help(commands: Mapping[str, MonitorCommand]) -> str:
    names = ", ".join(sorted(commands))
    return (f"undebug monitor commands: help, {names}: each prints what `undebug NAME` "
            "prints (for this guest: as it is stopped now)\n")


def monitor_text(line: str, commands: Mapping[str, MonitorCommand], target: Target) -> str:
    """What ``monitor LINE`` prints (an unknown command says so and lists the others)."""
    name, _, rest = line.strip().partition(" ")
    if name in ("", "help"):
        return _help(commands)
    command = commands.get(name)
    if command is None:
        return f"undebug: no monitor command {escape(name)!r}\n" + _help(commands)
    try:
        report = command(target, rest.strip())
    except UndebugError as exc:
        return f"undebug: {escape(exc.message)}\n"
    lines = report.render() if report.render else []
    lines += [f"warning: {escape(w)}" for w in report.warnings]
    return "".join(f"{text}\n" for text in lines)
