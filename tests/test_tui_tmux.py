"""The real ``undebug tui`` in a real terminal (tmux): it draws the guest's threads, and
the hostile thread name (an OSC 0 "set title" sequence, refguest README) is shown escaped
(in the threads and in a ``:`` command's output) and never retitles the terminal. A
capture never holds a raw ESC (tmux interprets it), so the proof is the pane's title,
which a raw ``ESC ] 0 ; owned BEL`` would set to "owned". With NO_COLOR set, the screen
has no hue at all (``capture-pane -e`` keeps the colours)."""

from __future__ import annotations

import itertools
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import undebug, wait_for_console

NAME = "tui-tmux"
TITLE = "before-undebug-tui"


_SERVERS = itertools.count()


@pytest.fixture
def tmux() -> Iterator[list[str]]:
    """A tmux server of our own (a private -L socket, one per test: a server still going
    away refuses the next one), killed at the end: only it."""
    base = ["tmux", "-L", f"undebug-test-{os.getpid()}-{next(_SERVERS)}", "-f", os.devnull]
    yield base
    subprocess.run([*base, "kill-server"], capture_output=True, timeout=30)


def _capture(tmux: list[str], *flags: str) -> str:
    return subprocess.run([*tmux, "capture-pane", "-p", *flags], capture_output=True,
                          text=True, check=True, timeout=30).stdout


_GREY_256 = {0, 7, 8, 15, 16, 59, 102, 145, 188, 231, *range(232, 256)}


def _hues(screen: str) -> set[str]:
    """The SGR colours with a hue (not black, white or grey) in a ``capture-pane -e``."""
    found = set()
    for params in re.findall(r"\x1b\[([0-9;:]*)m", screen):
        codes = [int(p) for p in re.split("[;:]", params) if p]
        i = 0
        while i < len(codes):
            code = codes[i]
            if code in (38, 48, 58) and codes[i + 1 : i + 2] == [5]:
                if codes[i + 2] not in _GREY_256:
                    found.add(f"{code};5;{codes[i + 2]}")
                i += 3
            elif code in (38, 48, 58) and codes[i + 1 : i + 2] == [2]:
                r, g, b = codes[i + 2 : i + 5]
                if not r == g == b:
                    found.add(f"{code};2;{r};{g};{b}")
                i += 5
            else:
                if code in (*range(31, 37), *range(41, 47), *range(91, 97), *range(101, 107)):
                    found.add(str(code))
                i += 1
    return found


def _start(tmux: list[str], name: str, *env: str, args: str = "") -> None:
    """``undebug tui NAME`` (or ``undebug ARGS``) in a new 100x30 session; the pane title
    set before it starts."""
    pass_on = " ".join(f"{k}={shlex.quote(os.environ[k])}"
                       for k in ("UNDEBUG_RUNTIME_DIR", "UNDEBUG_CACHE_DIR", "PATH"))
    command = f"sleep 1; env {pass_on} {' '.join(env)} TERM=xterm-256color " \
              f"{shlex.quote(sys.executable)} -m undebug.cli {args or 'tui ' + name}"
    for _ in range(10):  # a server whose last session just ended may still be exiting
        if subprocess.run([*tmux, "new-session", "-d", "-x", "100", "-y", "30", command],
                          capture_output=True, timeout=30).returncode == 0:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("tmux refused a new session")
    subprocess.run([*tmux, "select-pane", "-T", TITLE], check=True, timeout=30)


def _wait_screen(tmux: list[str], needles: list[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        screen = _capture(tmux)
        if all(n in screen for n in needles):
            return screen
        if time.monotonic() > deadline:
            raise AssertionError(f"{needles} not on the screen after {timeout}s:\n{screen}")
        time.sleep(0.3)


def test_tui_in_tmux_shows_threads_never_retitles_and_honours_no_color(
        guest_image: Path, tmux: list[str]) -> None:
    assert undebug("run", "-d", "--name", NAME, "--smp", "2", "--append", "threads=4",
                   str(guest_image)).code == 0
    try:
        wait_for_console(NAME, "refguest: ready")
        _start(tmux, NAME)
        # (drawn in steps: the backtrace's title once it is read)
        _wait_screen(tmux, ["worker-0", "sleeper", "evil\\x1b]0;owned\\x07", "backtrace of thread",
                            "console"])
        assert _hues(_capture(tmux, "-e"))  # in colour (what NO_COLOR takes away)
        # the disassembly tab marks the selected thread's pc (the real program, keys sent)
        subprocess.run([*tmux, "send-keys", "2"], check=True, timeout=30)
        _wait_screen(tmux, ["disassembly at 0x", "=> 0x"])
        # a : command's output (a child undebug's) shows the hostile name escaped too
        subprocess.run([*tmux, "send-keys", ":"], check=True, timeout=30)
        _wait_screen(tmux, ["an undebug command"])  # the bar has the keyboard
        subprocess.run([*tmux, "send-keys", "-l", "threads"], check=True, timeout=30)
        subprocess.run([*tmux, "send-keys", "Enter"], check=True, timeout=30)
        _wait_screen(tmux, ["output of : commands", "worker-3"])  # scrolled to its end
        subprocess.run([*tmux, "send-keys", "z"], check=True, timeout=30)  # the tabs full-screen
        output = _wait_screen(tmux, ["output of : commands", f": threads {NAME}", "evil"])
        assert "evil\\x1b]0;owned\\x07" in output.split("output of : commands")[1]
        title = subprocess.run([*tmux, "display", "-p", "#{pane_title}"], capture_output=True,
                               text=True, check=True, timeout=30).stdout.strip()
        assert title == TITLE
        subprocess.run([*tmux, "send-keys", "q"], check=True, timeout=30)
        _wait_gone(tmux)
        assert next(g["state"] for g in undebug("ps", "--json").json()["guests"]
                    if g["name"] == NAME) == "running"  # quitting leaves the guest as it was
        # NO_COLOR: Textual's monochrome (greys, bold and reverse), no hue anywhere.
        _start(tmux, NAME, "NO_COLOR=1")
        _wait_screen(tmux, ["worker-0", "sleeper", "backtrace of thread"])
        assert _hues(_capture(tmux, "-e")) == set()
    finally:
        undebug("kill", NAME)


def _wait_gone(tmux: list[str]) -> None:
    """Until the session ended (the TUI quit); its server then exits too."""
    deadline = time.monotonic() + 30
    while subprocess.run([*tmux, "has-session"], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "q did not quit the TUI:\n" + _capture(tmux)
        time.sleep(0.3)


def test_demo_on_a_terminal_ends_in_the_tui_and_q_ends_the_guest(tmux: list[str]) -> None:
    _start(tmux, "", args="demo --name tui-demo --threads 4")
    try:
        _wait_screen(tmux, ["tui-demo", "worker-3", "backtrace of thread"], timeout=120)
        subprocess.run([*tmux, "send-keys", "q"], check=True, timeout=30)
        _wait_gone(tmux)
        assert "tui-demo" not in [g["name"] for g in undebug("ps", "--json").json()["guests"]]
    finally:
        undebug("kill", "tui-demo")
