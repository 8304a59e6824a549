"""The TUI on a real Unikraft image (UNDEBUG_UNIKRAFT_IMAGE: an app with threads
worker-0..2 in worker_main -> do_work, built outside the repository): Unikraft's own
threads by name, the vCPU-0 thread's backtrace on opening, as the CLI unwinds it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual.pilot import Pilot

from tests.conftest import real_image, undebug, wait_for_console
from tests.test_tui import SIZE, cli_functions, screen, shown_functions, shown_names, until
from tui.app import UndebugApp
from tui.widgets.backtrace import BacktracePane
from tui.widgets.threads import ThreadsTable

NAME = "uk-tui"


def test_tui_on_unikraft_shows_its_threads_and_the_vcpu0_backtrace() -> None:
    value = str(real_image("UNDEBUG_UNIKRAFT_IMAGE"))
    assert undebug("run", "-d", "--name", NAME, str(Path(value))).code == 0
    try:
        wait_for_console(NAME, "worker-2")  # the app has started its threads
        assert undebug("stop", NAME).code == 0
        cli = undebug("threads", NAME, "--json").json()
        on_cpu0 = cli["vcpus"]["0"]
        expected = cli_functions(NAME, on_cpu0)

        async def body(pilot: Pilot[None]) -> None:
            table = screen(pilot).query_one(ThreadsTable)
            pane = screen(pilot).query_one(BacktracePane)
            await until(pilot, lambda: pane.shown is not None, "the first backtrace")
            assert shown_names(pilot) == [t["name"] for t in cli["threads"]]
            assert {"idle", "init", "worker-0", "worker-1", "worker-2"} <= set(shown_names(pilot))
            assert table.selected == on_cpu0 and shown_functions(pilot) == expected
            await pilot.press("slash", *"^worker-")
            await until(pilot, lambda: table.row_count == 3, "the three workers")
            await pilot.press("enter")
            await until(pilot, lambda: pane.shown is not None and pane.shown[1] == table.selected,
                        "a worker's backtrace")
            assert "worker_main" in shown_functions(pilot)

        async def run() -> None:
            async with UndebugApp(NAME).run_test(size=SIZE) as pilot:
                await body(pilot)
        asyncio.run(run())
    finally:
        undebug("kill", NAME)
