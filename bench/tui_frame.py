"""The TUI's stop-to-screen and key-to-repaint times, against a bare Textual app.

(a) Stop to first full frame, reference guest with 100, 1,000 and 10,000 threads (``threads=N-7``,
running): in the real TUI (tui.app under Textual's Pilot, in this process, over a guest
that ``undebug run -d`` started), from pressing ``s`` to the first frame that shows the
stopped view (threads of the new stop, and the backtrace of the selected thread read at
that stop). Goals: < 200 ms and < 500 ms. (b) Key press to repaint on a 10,000-thread
table (``threads=9993``, guest paused): from pressing ``down`` to the first frame with the
cursor on the next row. Goal: < 50 ms. Baseline, in the same run, interleaved: a bare
Textual app whose stock DataTable paints the same rows (the TUI's own cells) from memory:
(a) from ``add_rows`` to its first frame, (b) the same key press. A "frame" is a call of
App._display, where Textual hands a screen update to the terminal; the headless driver
drops it, so the update is rendered to its escape sequences here (what a terminal would be
sent) in both apps, and timed as part of the frame.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.text import Text
from textual._compositor import CompositorUpdate
from textual.app import App, ComposeResult
from textual.pilot import Pilot
from textual.widgets import DataTable

from bench.threads import UndebugGuest, ensure_guest, median

STOP_SIZES = (100, 1000, 10_000)  # goals at 100 and 1,000; 10,000 for the record
KEY_SIZE = 10_000
OTHER_THREADS = 7  # main, idle0, idle1, sleeper, blocked, short-lived, evil (refguest README)
ROUNDS = 7
KEY_PRESSES = 25
SIZE = (120, 36)
GOALS_MS = {"stop_100": 200, "stop_1000": 500, "key_10000": 50}
MEMORY_MB = 512
BOOT_TIMEOUT_S = 300


class _Frames:
    """Each frame an app sends: its time and whether ``check`` held then."""

    def __init__(self) -> None:
        self.times: list[tuple[float, bool]] = []
        self.check: Callable[[], bool] = lambda: True

    def first_after(self, start: float) -> float | None:
        return next((t for t, ok in self.times if t >= start and ok), None)


def _timed(app_class: type[App[None]]) -> type[App[None]]:
    class Timed(app_class):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.frames = _Frames()

        def _display(self, screen: Any, renderable: Any) -> None:
            if renderable is not None:
                if isinstance(renderable, CompositorUpdate):
                    renderable.render_segments(self.console)
                self.frames.times.append((time.perf_counter(), self.frames.check()))
            super()._display(screen, renderable)
    return Timed


class BareTable(App[None]):
    """The baseline: Textual's DataTable, rows from memory, nothing else."""

    def compose(self) -> ComposeResult:
        yield DataTable(cursor_type="row")

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns("ID", "NAME", "STATE", "CPU", "WAIT", "WHERE")


async def _until(pilot: Pilot[None], check: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("the TUI did not get there: status bar "
                               f"{[str(w.render()) for w in pilot.app.screen.query('StatusBar')]}")
        await pilot.pause(0.01)


async def _frame_after(pilot: Pilot[None], frames: _Frames, start: float) -> float:
    """Seconds from ``start`` to the first frame since then at which the check held."""
    deadline = time.monotonic() + 120
    while (painted := frames.first_after(start)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError("no such frame")
        await pilot.pause(0.005)
    return painted - start


def _screen(app: App[None]) -> Any:
    from tui.screens.guest import GuestScreen

    assert isinstance(app.screen, GuestScreen)
    return app.screen


def _stopped_frame(app: App[None]) -> bool:
    """The stopped view is on screen: threads of a stop, and the selected thread's
    backtrace read at that same stop."""
    from tui.widgets.backtrace import BacktracePane

    screen = _screen(app)
    view, status = screen.view, screen.status
    if view is None or view.live or status is None or status.runs:
        return False
    return screen.query_one(BacktracePane).shown == (view.run_token, screen.selected)


async def _bare_paint(rows: list[list[Text]]) -> float:
    app = _timed(BareTable)()
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.2)
        table = app.query_one(DataTable)
        start = time.perf_counter()
        table.add_rows(rows)
        return await _frame_after(pilot, app.frames, start)


def _rows_of(app: App[None]) -> list[list[Text]]:
    from tui.widgets.threads import ThreadsTable

    table = _screen(app).query_one(ThreadsTable)
    return [[Text(c) for c in table.row_text(i)] for i in range(table.row_count)]


async def _stop_rounds(name: str, samples: dict[str, list[float]]) -> None:
    from tui.app import UndebugApp

    app = _timed(UndebugApp)(name)
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(ROUNDS):
            await _until(pilot, lambda: _screen(app).view is not None and _screen(app).view.live)
            await pilot.pause(0.3)
            app.frames.check = lambda: _stopped_frame(app)
            start = time.perf_counter()
            await pilot.press("s")
            samples["tui_s"].append(await _frame_after(pilot, app.frames, start))
            samples["bare_paint_s"].append(await _bare_paint(_rows_of(app)))
            app.frames.check = lambda: True
            await pilot.press("c")


async def _key_rounds(name: str, samples: dict[str, list[float]]) -> None:
    from tui.app import UndebugApp
    from tui.widgets.threads import ThreadsTable

    app = _timed(UndebugApp)(name)
    async with app.run_test(size=SIZE) as pilot:
        await _until(pilot, lambda: _stopped_frame(app), timeout=300)
        table = _screen(app).query_one(ThreadsTable)
        samples["threads"] = [float(table.row_count)]
        rows = _rows_of(app)
        table.focus()
        await pilot.pause(0.5)
        for _ in range(KEY_PRESSES):
            want = table.cursor_row + 1
            app.frames.check = lambda want=want: table.cursor_row == want
            start = time.perf_counter()
            await pilot.press("down")
            samples["tui_s"].append(await _frame_after(pilot, app.frames, start))
            await pilot.pause(0.05)
    bare = _timed(BareTable)()
    async with bare.run_test(size=SIZE) as pilot:
        grid = bare.query_one(DataTable)
        grid.add_rows(rows)
        grid.focus()
        await pilot.pause(0.5)
        for _ in range(KEY_PRESSES):
            want = grid.cursor_row + 1
            bare.frames.check = lambda want=want: grid.cursor_row == want
            start = time.perf_counter()
            await pilot.press("down")
            samples["bare_s"].append(await _frame_after(pilot, bare.frames, start))
            await pilot.pause(0.05)


def _guest(tmp: Path, threads: int) -> UndebugGuest:
    guest = UndebugGuest(tmp / "run", f"tui{threads}", f"threads={threads - OTHER_THREADS}",
                         memory=MEMORY_MB, boot_timeout=BOOT_TIMEOUT_S)
    os.environ["UNDEBUG_RUNTIME_DIR"] = str(tmp / "run")  # the in-process TUI's guests
    return guest


def _ms(values: list[float]) -> float:
    return round(median(values) * 1000, 1)


def run() -> dict[str, Any]:
    image = ensure_guest()
    tmp = Path(tempfile.mkdtemp(prefix="ud-tui-"))
    os.environ["UNDEBUG_CACHE_DIR"] = str(tmp / "cache")
    samples: dict[str, dict[str, list[float]]] = {}
    summary: dict[str, Any] = {"guest": image, "rounds": ROUNDS, "key_presses": KEY_PRESSES,
                               "size": f"{SIZE[0]}x{SIZE[1]}"}
    try:
        for threads in STOP_SIZES:
            guest = _guest(tmp / str(threads), threads)
            try:
                got = samples[f"stop_{threads}"] = {"tui_s": [], "bare_paint_s": []}
                asyncio.run(_stop_rounds(guest.name, got))
                if threads == KEY_SIZE:
                    from undebug import api

                    api.pause(guest.name)
                    keys = samples[f"key_{KEY_SIZE}"] = {"tui_s": [], "bare_s": []}
                    asyncio.run(_key_rounds(guest.name, keys))
            finally:
                guest.close()
            goal = GOALS_MS.get(f"stop_{threads}")
            summary[f"stop_{threads}"] = {
                "tui_ms": _ms(got["tui_s"]), "bare_paint_ms": _ms(got["bare_paint_s"]),
                "ratio": round(median(got["tui_s"]) / median(got["bare_paint_s"]), 2),
                "goal_ms": goal, "goal_met": None if goal is None else _ms(got["tui_s"]) < goal}
        keys = samples[f"key_{KEY_SIZE}"]
        summary[f"key_{KEY_SIZE}"] = {
            "threads": int(keys["threads"][0]), "tui_ms": _ms(keys["tui_s"]),
            "bare_datatable_ms": _ms(keys["bare_s"]),
            "ratio": round(median(keys["tui_s"]) / median(keys["bare_s"]), 2),
            "goal_ms": GOALS_MS[f"key_{KEY_SIZE}"],
            "goal_met": _ms(keys["tui_s"]) < GOALS_MS[f"key_{KEY_SIZE}"]}
        summary["load_average_at_end"] = os.getloadavg()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"samples": samples, "summary": summary}
