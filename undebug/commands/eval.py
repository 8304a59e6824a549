"""``undebug eval``: a C expression's value and type, computed by gdb.

gdb evaluates it, through undebug's gdbserver for the guest (:mod:`undebug.evaluate`,
which the TUI's watch pane uses too).
"""

from __future__ import annotations

import argparse

from undebug.commands import add_elf_arguments, command
from undebug.errors import UsageError
from undebug.output import Report
from undebug.text import escape

__all__ = ["value_line"]


def value_line(expression: str, value: str, type_: str | None) -> str:
    """``EXPR = VALUE (TYPE)``, escaped: values carry guest strings."""
    suffix = f" ({escape(type_)})" if type_ else ""
    return f"{escape(expression)} = {escape(value)}{suffix}"


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", metavar="TARGET",
                   help="a guest's name (see undebug ps) or a dump bundle's path")
    p.add_argument("expression", metavar="EXPR",
                   help="a C expression over the guest's symbols, e.g. 'thread_list->name'")
    p.add_argument("--thread", type=int, metavar="ID",
                   help="evaluate in guest thread ID (its registers and frame 0; see undebug "
                   "threads); default: the thread gdb reports at the stop")
    add_elf_arguments(p)


@command("eval", "evaluate a C expression in the guest (with gdb)", _arguments,
         description="Print a C expression's value and type, as gdb computes them from the "
         "guest's memory and the ELF's DWARF, through undebug's gdbserver (so --thread takes a "
         "guest thread id). A running guest is paused for the evaluation and resumed after.")
def eval_(args: argparse.Namespace) -> Report:
    from undebug.evaluate import evaluate_in

    warnings: list[str] = []
    [result] = evaluate_in(args.target, [args.expression], args.thread, warnings, elf=args.elf,
                           force=args.force)
    if result.error is not None:
        raise UsageError(result.error, hint=result.hint)
    value, type_ = result.value, result.type
    data = {"expression": args.expression, "value": value, "type": type_, "thread": args.thread}
    return Report(data=data, warnings=warnings,
                  render=lambda: [value_line(args.expression, value, type_)])
