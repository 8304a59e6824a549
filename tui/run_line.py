"""A line of the TUI's ``:`` command bar, run as the shell runs it (tui/cmdline.py reads
it against the CLI's parser: the screen's guest fills an empty TARGET slot, lines that
run until Ctrl-C are refused with the CLI line to use) but in a child ``undebug``
process: the app's own terminal and threads are Textual's, and a child's output is
captured whole, however the command prints.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from tui.cmdline import read_only_refusal, refusal, split, with_target
from undebug.errors import EXIT_USAGE

__all__ = ["Ran", "run_line"]

TIMEOUT = 120.0  # s a command may take (wait, eval of a slow guest); then it is ended
MAX_OUTPUT = 1 << 20  # bytes of its output kept
RUN_CONTROL = frozenset({"stop", "cont", "step", "break", "delete", "kill"})


@dataclass(frozen=True)
class Ran:
    line: str  # as run (with the guest filled in)
    output: str  # stdout then stderr
    code: int
    moved: bool  # a run-control command: the guest's state may have changed


def run_line(guest: str, text: str, read_only: bool, dump: str | None = None) -> Ran:
    """``dump``: ``guest`` is that dump bundle: run control is refused as read-only."""
    try:
        words = split(text)
    except ValueError as exc:
        return Ran(text, f"undebug: error: cannot read the line: {exc}", EXIT_USAGE, False)
    if not words:
        return Ran("", "", 0, False)
    words = with_target(words, guest)
    line = shlex.join(words)
    reason = refusal(words) or (read_only_refusal(words, dump)
                                if read_only or dump is not None else None)
    if reason is not None:
        return Ran(line, f"undebug: error: {reason}", EXIT_USAGE, False)
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "160"}
    with tempfile.TemporaryFile() as out:
        try:
            code = subprocess.run([sys.executable, "-m", "undebug.cli", *words], stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT, env=env,
                                  timeout=TIMEOUT).returncode
        except subprocess.TimeoutExpired:  # subprocess.run has killed it (this child only)
            code = -1
        out.seek(0)
        data = out.read(MAX_OUTPUT)
    output = data.decode("utf-8", "replace")
    if code == -1:
        output += f"\n(ended after {TIMEOUT:g} s: run it from a terminal: undebug {line})"
    return Ran(line, output, code, words[0] in RUN_CONTROL)
