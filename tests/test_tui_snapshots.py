"""Snapshots of the guest screen (pytest-textual-snapshot) at 80x24 and 200x60, drawn from
data recorded from a real reference guest (tests/tui_recording.py: a paused guest's
status, threads, the vCPU-0 thread's backtrace and its console; uptime, pids and paths
fixed when recorded), with nothing live: the screen's reads of the guest are replaced by
the recording, the followers (console, trace) are given its console lines and nothing
else. A change of layout, of a label or of what a pane shows changes the picture; update
the pictures with ``pytest --snapshot-update`` after checking the change is meant."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.tui_recording import Recording, load
from tui import messages
from tui.app import UndebugApp
from tui.screens.guest import GuestScreen
from tui.widgets.console import ConsolePane
from tui.widgets.trace import TracePane


class RecordedGuestScreen(GuestScreen):
    """The guest screen over a recording: the view arrives as the worker would post it."""

    def __init__(self, recording: Recording) -> None:
        super().__init__(recording.status.name)
        self.recording = recording

    def on_mount(self) -> None:  # (GuestScreen's on_mount runs too: it calls read_view)
        self.query_one(ConsolePane).guest = self.guest  # followers: not started
        self.query_one(TracePane).guest = self.guest
        self.query_one(ConsolePane).add([*map(str, self.recording.console)])  # type: ignore[list-item]

    def read_view(self, force: bool = False, snapshot: bool = False) -> Any:
        r = self.recording
        self.post_message(messages.ViewRead(r.status, r.view, r.backtrace))

    def read_backtrace(self, thread_id: int) -> Any:  # only the recorded one exists
        return None

    def _tick(self) -> None:  # nothing runs
        pass


class RecordedApp(UndebugApp):
    def __init__(self) -> None:
        super().__init__("recorded")

    def first_screen(self) -> RecordedGuestScreen:
        return RecordedGuestScreen(load())


@pytest.fixture(autouse=True)
def no_user_keymap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default keys, whatever the user running the tests rebound (the help screen
    names the keymap file: one fixed path, which does not exist)."""
    monkeypatch.setenv("XDG_CONFIG_HOME", "/nonexistent-undebug-test-config")


@pytest.mark.parametrize("size", [(80, 24), (200, 60)])
def test_the_guest_screen_at_a_stop(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(RecordedApp(), terminal_size=size)


def test_the_help_screen_at_80x24(snap_compare: Any) -> None:
    assert snap_compare(RecordedApp(), press=["question_mark"], terminal_size=(80, 24))


def test_the_palette_lists_the_screens_actions_by_their_keys_as_rebound(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "undebug").mkdir()
    (tmp_path / "undebug" / "tui-keys.toml").write_text('[keys]\nstop = "x"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))

    async def run() -> None:
        app = RecordedApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.5)
            titles = {c.title for c in app.get_system_commands(app.screen)}
            assert {"stop (x)", "continue (c)", "snapshot (p)", "command (:)"} <= titles
            await pilot.press("t")  # light, and back
            assert app.theme == "textual-light"
            await pilot.press("t")
            assert app.theme == "textual-dark"

    asyncio.run(run())
