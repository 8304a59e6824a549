"""``undebug tui`` is a plugin command (the ``undebug.cli`` entry point of the installed
package): it is listed and has --help, and it refuses to start without a terminal."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import undebug


def test_tui_is_listed_and_has_help() -> None:
    listed = undebug("--help")
    assert listed.code == 0
    assert any(line.split()[:1] == ["tui"] for line in listed.stdout.splitlines()), listed.stdout
    helped = undebug("tui", "--help")
    assert helped.code == 0 and "--read-only" in helped.stdout


def test_tui_without_a_terminal_exits_2_and_says_why() -> None:
    result = undebug("tui", "web")  # stdout and stderr are pipes here
    assert result.code == 2
    assert "needs a terminal" in result.stderr
    assert result.stdout == ""


def test_the_core_imports_no_terminal_toolkit() -> None:
    """Running a built-in command loads neither Textual nor prompt_toolkit nor tui/."""
    code = ("import sys, undebug.cli, undebug.api\n"
            "undebug.cli.build_parser(['ps'])\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('textual', 'prompt_toolkit', 'tui')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
