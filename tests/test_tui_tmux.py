"""The real ``undebug tui`` in a real terminal (tmux): it draws the guest's threads, and
the hostile thread name (an OSC 0 "set title" sequence, refguest README) is shown escaped
and never retitles the terminal. A capture never holds a raw ESC (tmux interprets it), so
the proof is the pane's title, which a raw ``ESC ] 0 ; owned BEL`` would set to "owned"."""

from __future__ import annotations

import os
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


@pytest.fixture
def tmux() -> Iterator[list[str]]:
    """A tmux server of our own (a private -L socket), killed at the end: only it."""
    base = ["tmux", "-L", f"undebug-test-{os.getpid()}", "-f", os.devnull]
    yield base
    subprocess.run([*base, "kill-server"], capture_output=True, timeout=30)


def _capture(tmux: list[str]) -> str:
    return subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True,
                          check=True, timeout=30).stdout


def _wait_screen(tmux: list[str], needles: list[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        screen = _capture(tmux)
        if all(n in screen for n in needles):
            return screen
        if time.monotonic() > deadline:
            raise AssertionError(f"{needles} not on the screen after {timeout}s:\n{screen}")
        time.sleep(0.3)


def test_tui_in_tmux_shows_threads_and_the_hostile_name_never_retitles(
        guest_image: Path, tmux: list[str]) -> None:
    assert undebug("run", "-d", "--name", NAME, "--smp", "2", "--append", "threads=4",
                   str(guest_image)).code == 0
    try:
        wait_for_console(NAME, "refguest: ready")
        env = " ".join(f"{k}={shlex.quote(os.environ[k])}"
                       for k in ("UNDEBUG_RUNTIME_DIR", "UNDEBUG_CACHE_DIR", "PATH"))
        # The title is set before the program starts (the sleep), then must stay.
        command = f"sleep 1; env {env} TERM=xterm-256color {shlex.quote(sys.executable)} " \
                  f"-m undebug.cli tui {NAME}"
        subprocess.run([*tmux, "new-session", "-d", "-x", "100", "-y", "30", command],
                       check=True, timeout=30)
        subprocess.run([*tmux, "select-pane", "-T", TITLE], check=True, timeout=30)
        screen = _wait_screen(tmux, ["worker-0", "sleeper", "evil\\x1b]0;owned\\x07"])
        assert "backtrace of thread" in screen and "console" in screen
        title = subprocess.run([*tmux, "display", "-p", "#{pane_title}"], capture_output=True,
                               text=True, check=True, timeout=30).stdout.strip()
        assert title == TITLE
        subprocess.run([*tmux, "send-keys", "q"], check=True, timeout=30)
        deadline = time.monotonic() + 30
        while subprocess.run([*tmux, "has-session"], capture_output=True).returncode == 0:
            assert time.monotonic() < deadline, "q did not quit the TUI:\n" + _capture(tmux)
            time.sleep(0.3)
        assert next(g["state"] for g in undebug("ps", "--json").json()["guests"]
                    if g["name"] == NAME) == "running"  # quitting leaves the guest as it was
    finally:
        undebug("kill", NAME)
