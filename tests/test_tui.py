"""The TUI against a live reference guest, driven by Textual's Pilot: what it shows is
checked against the guest's planted state (guest-stubs/refguest/README.md) and against
the CLI (``undebug threads/bt --json``, ``undebug ps --json``), another front end over
the same guest."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from tests.conftest import boot, undebug, wait_for_console
from tui.app import UndebugApp
from tui.screens.guest import GuestScreen
from tui.screens.guests import GuestsScreen
from tui.widgets.backtrace import BacktracePane
from tui.widgets.registers import RegistersPane
from tui.widgets.status import StatusBar
from tui.widgets.threads import ThreadsTable
from undebug.text import escape

NAME = "tui-pilot"
HOSTILE = "evil\x1b]0;owned\x07"  # the planted name (refguest README)
SIZE = (120, 36)


@pytest.fixture(scope="module")
def guest(guest_image: Path) -> Iterator[str]:
    yield boot(NAME, "threads=8", guest_image)
    undebug("kill", NAME)


@pytest.fixture
def paused(guest: str) -> Iterator[str]:
    """The guest held paused (by the CLI) so that the TUI and the CLI see one stop."""
    assert undebug("stop", guest).code == 0
    yield guest
    undebug("cont", guest)


def state(name: str) -> str:
    doc = undebug("ps", "--json").json()
    return str(next(g["state"] for g in doc["guests"] if g["name"] == name))


def drive(app: UndebugApp, body: Callable[[Pilot[None]], Awaitable[None]]) -> None:
    async def run() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await body(pilot)
    asyncio.run(run())


async def until(pilot: Pilot[None], check: Callable[[], Any], what: str,
                timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        await pilot.pause(0.1)


def screen(pilot: Pilot[None]) -> GuestScreen:
    assert isinstance(pilot.app.screen, GuestScreen)
    return pilot.app.screen


def shown_functions(pilot: Pilot[None]) -> list[str]:
    pane = screen(pilot).query_one(BacktracePane)
    return [pane.get_row_at(i)[1].plain for i in range(pane.row_count)]


def shown_names(pilot: Pilot[None]) -> list[str]:
    table = screen(pilot).query_one(ThreadsTable)
    return [table.row_text(i)[1] for i in range(table.row_count)]


def cli_functions(name: str, thread_id: int) -> list[str]:
    doc = undebug("bt", name, "--thread", str(thread_id), "--json").json()
    return [f["function"] for f in doc["backtraces"][0]["frames"]]


def test_opening_shows_the_backtrace_of_the_thread_on_vcpu_0(paused: str) -> None:
    cli = undebug("threads", paused, "--json").json()
    on_cpu0 = cli["vcpus"]["0"]
    expected = cli_functions(paused, on_cpu0)

    async def body(pilot: Pilot[None]) -> None:
        pane = screen(pilot).query_one(BacktracePane)
        await until(pilot, lambda: pane.row_count > 0, "backtrace")
        assert pane.border_title == f"backtrace of thread {on_cpu0}"
        assert shown_functions(pilot) == expected
        assert screen(pilot).query_one(ThreadsTable).selected == on_cpu0

    drive(UndebugApp(paused), body)


def test_moving_to_another_thread_shows_its_backtrace(paused: str) -> None:
    async def body(pilot: Pilot[None]) -> None:
        table = screen(pilot).query_one(ThreadsTable)
        await until(pilot, lambda: table.row_count > 0 and table.selected is not None, "threads")
        sleeper = shown_names(pilot).index("sleeper")
        table.focus()
        await pilot.press(*["down" if sleeper > table.cursor_row else "up"]
                          * abs(sleeper - table.cursor_row))
        thread_id = table.shown[sleeper]
        pane = screen(pilot).query_one(BacktracePane)
        await until(pilot, lambda: pane.border_title == f"backtrace of thread {thread_id}",
                    "backtrace of sleeper")
        functions = shown_functions(pilot)
        # The planted chain (refguest README), and exactly what the CLI unwinds.
        assert functions[:4] == ["schedule", "sleep_ms", "nap", "sleeper_main"]
        assert functions == cli_functions(paused, thread_id)
        # Its registers: the context saved when it was switched out, as `regs` reads them.
        saved = undebug("regs", paused, "--thread", str(thread_id), "--json").json()
        shown = str(screen(pilot).query_one(RegistersPane).render())
        assert saved["source"] == "saved context" and "(saved context)" in \
            str(screen(pilot).query_one(RegistersPane).border_title)
        for register in ("rip", "rsp", "rbp"):
            assert f"{register} {saved['registers'][register]:#018x}" in shown

    drive(UndebugApp(paused), body)


def test_s_stops_the_guest_and_c_continues_it(guest: str) -> None:
    assert state(guest) == "running"

    async def body(pilot: Pilot[None]) -> None:
        await until(pilot, lambda: screen(pilot).view is not None, "first view")
        await pilot.press("s")
        await until(pilot, lambda: state(guest) == "paused", "pause")
        await pilot.press("c")
        await until(pilot, lambda: state(guest) == "running", "resume")

    drive(UndebugApp(guest), body)


def test_read_only_refuses_to_stop(guest: str) -> None:
    async def body(pilot: Pilot[None]) -> None:
        await until(pilot, lambda: screen(pilot).view is not None, "first view")
        await pilot.press("s")
        await pilot.pause(2)
        status = screen(pilot).query_one(StatusBar)
        assert status.message is not None and "read-only" in status.message.plain
        assert state(guest) == "running"

    drive(UndebugApp(guest, read_only=True), body)


def test_the_filter_narrows_the_rows_by_regex_and_case(paused: str) -> None:
    names = [t["name"] for t in undebug("threads", paused, "--json").json()["threads"]]
    workers = [n for n in names if n.startswith("worker-")]
    assert len(workers) == 8

    async def body(pilot: Pilot[None]) -> None:
        table = screen(pilot).query_one(ThreadsTable)
        await until(pilot, lambda: table.row_count == len(names), "every thread")
        await pilot.press("slash", *"WORKER-[0-3]")
        await until(pilot, lambda: table.row_count == 4, "4 rows (case ignored)")
        assert shown_names(pilot) == ["worker-0", "worker-1", "worker-2", "worker-3"]
        await pilot.press("ctrl+t")  # match case: no thread is named in capitals
        await until(pilot, lambda: table.row_count == 0, "no row (case matched)")
        await pilot.press("escape")
        await until(pilot, lambda: table.row_count == len(names), "every thread again")

    drive(UndebugApp(paused), body)


def test_the_hostile_thread_name_is_shown_escaped(paused: str) -> None:
    async def body(pilot: Pilot[None]) -> None:
        table = screen(pilot).query_one(ThreadsTable)
        await until(pilot, lambda: table.row_count > 0, "threads")
        names = shown_names(pilot)
        assert "evil\\x1b]0;owned\\x07" in names
        assert not any(HOSTILE in n or "\x1b" in n or "\x07" in n for n in names)

    drive(UndebugApp(paused), body)


def test_without_a_name_the_guests_screen_opens_one_with_enter(guest: str) -> None:
    async def body(pilot: Pilot[None]) -> None:
        guests = pilot.app.screen
        assert isinstance(guests, GuestsScreen)
        await until(pilot, lambda: guest in guests.names, "the guest listed")
        table = guests.query_one("DataTable")
        table.focus()
        await pilot.press(*["down"] * guests.names.index(guest), "enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, GuestScreen), "guest screen")
        assert screen(pilot).guest == guest
        assert pilot.app.screen_stack[-2] is guests  # opened once, over the list
        await until(pilot, lambda: "sleeper" in shown_names(pilot), "its threads")

    drive(UndebugApp(None), body)


def test_sorting_by_key_and_by_a_click_on_the_header(paused: str) -> None:
    names = [t["name"] for t in undebug("threads", paused, "--json").json()["threads"]]

    def as_shown(raw: list[str]) -> list[str]:
        return [escape(n) for n in raw]

    async def body(pilot: Pilot[None]) -> None:
        table = screen(pilot).query_one(ThreadsTable)
        await until(pilot, lambda: table.row_count == len(names), "every thread")
        assert shown_names(pilot) == as_shown(names)  # by id, as the guest lists them
        await pilot.press("o")  # the next column: NAME
        assert shown_names(pilot) == as_shown(sorted(names, key=str.lower))
        x = len("ID") + 2 + 1  # inside the NAME header (after "ID" and the gap)
        await pilot.click(ThreadsTable, offset=(1 + x, 1))  # + the border
        assert shown_names(pilot) == as_shown(sorted(names, key=str.lower, reverse=True))

    drive(UndebugApp(paused), body)


def test_n_steps_the_vcpu_of_the_selected_thread(paused: str) -> None:
    before = next(g for g in undebug("ps", "--json").json()["guests"] if g["name"] == paused)

    async def body(pilot: Pilot[None]) -> None:
        view = lambda: screen(pilot).view  # noqa: E731
        await until(pilot, lambda: view() is not None, "first view")
        assert screen(pilot).selected == view().vcpus[0]  # the thread on vCPU 0
        await pilot.press("n")
        await until(pilot, lambda: view().run_token != before["run_token"], "a view after the step")
        after = next(g for g in undebug("ps", "--json").json()["guests"] if g["name"] == paused)
        assert after["last_stop"]["reason"] == "step" and after["last_stop"]["cpu"] == 0
        assert view().run_token == after["run_token"]
        regs = undebug("regs", paused, "--cpu", "0", "--json").json()["registers"]
        shown = str(screen(pilot).query_one(RegistersPane).render())
        assert f"rip {regs['rip']:#018x}" in shown and "(vCPU 0)" in \
            str(screen(pilot).query_one(RegistersPane).border_title)

    drive(UndebugApp(paused), body)


def test_a_stop_is_read_once_and_backtraces_are_cached_by_run_token(
        paused: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Paused: the periodic check asks only the status; a thread's backtrace is read once
    per stop (moving back to it reads nothing)."""
    from undebug import api

    opened: list[bool] = []
    real = api.attach

    def counted(name: str, *args: Any, stop: bool = True, **kwargs: Any) -> api.Session:
        opened.append(stop)
        return real(name, *args, stop=stop, **kwargs)
    monkeypatch.setattr(api, "attach", counted)

    async def body(pilot: Pilot[None]) -> None:
        table = screen(pilot).query_one(ThreadsTable)
        pane = screen(pilot).query_one(BacktracePane)
        await until(pilot, lambda: pane.row_count > 0, "the first backtrace")
        await pilot.pause(3.5)  # three periodic checks
        assert opened == [True]  # the opening read: threads and backtrace in one
        table.focus()
        first = table.selected
        await pilot.press("down")
        await until(pilot, lambda: pane.shown is not None and pane.shown[1] == table.selected,
                    "the next thread's backtrace")
        assert len(opened) == 2
        await pilot.press("up")
        await until(pilot, lambda: pane.shown is not None and pane.shown[1] == first,
                    "the first thread's backtrace again")
        await pilot.pause(0.5)
        assert len(opened) == 2  # from the cache

    drive(UndebugApp(paused), body)


def test_a_running_guest_is_shown_live(guest: str) -> None:
    async def body(pilot: Pilot[None]) -> None:
        await until(pilot, lambda: screen(pilot).view is not None and screen(pilot).view.live,
                    "a live view")
        table = screen(pilot).query_one(ThreadsTable)
        assert str(table.border_title).endswith("LIVE")
        status = screen(pilot).query_one(StatusBar)
        assert status.live and "LIVE" in str(status.render())
        assert state(guest) == "running"  # read without stopping it

    drive(UndebugApp(guest), body)


def test_y_copies_the_backtrace_and_e_names_the_cli_that_gives_it(paused: str) -> None:
    async def body(pilot: Pilot[None]) -> None:
        pane = screen(pilot).query_one(BacktracePane)
        await until(pilot, lambda: pane.shown is not None, "a backtrace")
        thread_id = screen(pilot).selected
        await pilot.press("y")
        copied = pilot.app.clipboard.splitlines()
        assert copied[0] == f"thread {thread_id}:"
        assert [line.split(" in ")[1].split(" at ")[0] for line in copied[1:]] == \
            cli_functions(paused, thread_id)
        await pilot.press("e")
        said = screen(pilot).query_one(StatusBar).message
        assert said is not None
        line = next(c for c in said.plain.split("; ") if c.startswith("undebug bt "))
        # The line shown gives the same frames as the pane, run as a user would.
        got = undebug(*line.split()[1:], "--json").json()["backtraces"][0]["frames"]
        assert [f["function"] for f in got] == shown_functions(pilot)

    drive(UndebugApp(paused), body)


def test_the_guest_ending_under_the_tui_is_shown_and_the_tui_goes_on(guest_image: Path) -> None:
    name = "tui-ends"
    assert undebug("run", "-d", "--name", name, "--append", "threads=2", str(guest_image)).code == 0
    try:
        wait_for_console(name, "refguest: ready")

        async def body(pilot: Pilot[None]) -> None:
            await until(pilot, lambda: screen(pilot).view is not None, "first view")
            assert undebug("kill", name).code == 0
            await until(pilot, lambda: screen(pilot).gone, "the end")
            bar = str(screen(pilot).query_one(StatusBar).render())
            assert "gone" in bar and f"no guest named {name!r}" in bar
            await pilot.pause(1.5)  # a periodic check more: nothing breaks
            assert pilot.app.is_running and "sleeper" in shown_names(pilot)  # the last view
            await pilot.press("s")
            assert "nothing to control" in str(screen(pilot).query_one(StatusBar).render())

        drive(UndebugApp(name), body)
    finally:
        undebug("kill", name)


def test_b_sets_a_breakpoint_and_its_stop_selects_the_thread_that_hit_it(guest: str) -> None:
    """checksum_block runs in every worker request (refguest README): the guest stops
    there, and the TUI selects the worker on the vCPU that stopped, its backtrace through
    handle_request and worker_main."""
    async def body(pilot: Pilot[None]) -> None:
        await until(pilot, lambda: screen(pilot).view is not None, "first view")
        await pilot.press("b", *"checksum_block", "enter")
        await until(pilot, lambda: screen(pilot).status is not None
                    and screen(pilot).status.last_stop is not None
                    and not screen(pilot).view.live, "the breakpoint's stop", timeout=90)
        stop = screen(pilot).status.last_stop
        assert stop is not None and stop.reason == "breakpoint"
        pane = screen(pilot).query_one(BacktracePane)
        await until(pilot, lambda: pane.shown is not None
                    and pane.shown[0] == screen(pilot).view.run_token, "its backtrace")
        cli = undebug("threads", guest, "--json").json()
        assert screen(pilot).selected == cli["vcpus"][str(stop.cpu)]
        assert shown_functions(pilot)[:3] == ["checksum_block", "handle_request", "worker_main"]

    try:
        drive(UndebugApp(guest), body)
    finally:
        assert undebug("delete", guest, "--all").code == 0
        undebug("cont", guest)
