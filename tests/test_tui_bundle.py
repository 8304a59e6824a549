"""The TUI and the shell on a dump bundle of the real reference guest: one that
``undebug run --ci`` wrote when the planted null-pointer crash (crash=null) took the guest
down in real QEMU (TCG). What the TUI shows is checked against the planted crash
(guest-stubs/refguest/README.md: crash_null, on a worker thread) and against the CLI on
the same bundle (``undebug threads/mem``); run control must be refused, the bundle being
one moment, offline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from tests.conftest import undebug
from tests.test_ci_dump import only_bundle, run_ci
from tests.test_shell import _shell
from tests.test_tui import drive, screen, shown_functions, until
from tui.app import UndebugApp
from tui.screens.paned import DUMP_REFUSAL
from tui.widgets.backtrace import BacktracePane
from tui.widgets.console import ConsolePane
from tui.widgets.memory import MemoryPane
from tui.widgets.output import OutputPane
from tui.widgets.pane import TextPane
from tui.widgets.status import StatusBar
from tui.widgets.threads import ThreadsTable
from tui.widgets.trace import TracePane
from tui.widgets.watch import WatchPane


@pytest.fixture(scope="module")
def bundle(guest_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    out = tmp_path_factory.mktemp("tui-bundle")
    code, _, err = run_ci(out, "threads=4 crash=null crash_after=100")
    assert code == 1, err
    yield str(only_bundle(out))


def summary(bundle: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((Path(bundle) / "summary.json").read_text())
    return doc


async def backtrace_shown(pilot: Pilot[None]) -> None:
    pane = screen(pilot).query_one(BacktracePane)
    await until(pilot, lambda: pane.shown is not None, "a backtrace")


def test_the_crashed_thread_is_selected_with_its_backtrace_and_the_bar_says_dump(
        bundle: str) -> None:
    crash = summary(bundle)["crash"]
    threads = undebug("threads", bundle, "--json").json()["threads"]
    crashed = next(t for t in threads if t["id"] == crash["thread_id"])
    assert crashed["name"].startswith("worker-")
    console_last = (Path(bundle) / "console.log").read_text(errors="replace").splitlines()[-1]

    async def body(pilot: Pilot[None]) -> None:
        await backtrace_shown(pilot)
        assert screen(pilot).selected == crashed["id"]
        assert screen(pilot).query_one(ThreadsTable).selected == crashed["id"]
        functions = shown_functions(pilot)
        assert "crash_null" in functions and "worker_main" in functions, functions
        bar = str(screen(pilot).query_one(StatusBar).render())
        assert bundle in bar and "DUMP" in bar and summary(bundle)["time_utc"] in bar, bar
        # the console pane: the bundle's console log, which ends with the crash
        console = screen(pilot).query_one(ConsolePane)
        await until(pilot, lambda: any(console_last.strip() in line.text
                                       for line in console.lines), "the console's tail")
        assert console_last.strip()

    drive(UndebugApp(bundle), body)


def test_memory_of_planted_counter_is_the_bundles(bundle: str) -> None:
    cli = undebug("mem", bundle, "planted_counter", "256", "--json").json()

    async def body(pilot: Pilot[None]) -> None:
        await backtrace_shown(pilot)
        await pilot.press("4")
        await pilot.press(*"planted_counter", "enter")
        pane = screen(pilot).query_one(MemoryPane)
        await until(pilot, lambda: pane.address is not None, "the bytes")
        lines = pane.query_one("#memory-bytes", TextPane).plain
        shown = bytes.fromhex("".join(li[18:65].replace(" ", "") for li in lines))
        assert shown.hex() == cli["hex"]

    drive(UndebugApp(bundle), body)


def test_watch_evaluates_on_the_dump_through_its_gdbserver(bundle: str) -> None:
    counter = int.from_bytes(bytes.fromhex(
        undebug("mem", bundle, "planted_counter", "8", "--json").json()["hex"]), "little")
    crashed = summary(bundle)["crash"]["thread_id"]
    rip = int(undebug("regs", bundle, "--thread", str(crashed), "--json").json()
              ["registers"]["rip"])

    async def body(pilot: Pilot[None]) -> None:
        await backtrace_shown(pilot)
        await pilot.press("5")
        pane = screen(pilot).query_one(WatchPane)
        for expression in ("planted_counter", "(unsigned long)$pc"):
            await pilot.press(*expression, "enter")
            await until(pilot, lambda e=expression: pane.value_of(e) is not None,  # type: ignore[misc]
                        f"the value of {expression}", timeout=120)
        assert int(pane.value_of("planted_counter") or "") == counter
        assert int(pane.value_of("(unsigned long)$pc") or "") == rip

    drive(UndebugApp(bundle), body)


def test_the_trace_pane_shows_the_bundles_events(bundle: str) -> None:
    tail = Path(bundle) / "trace-tail.utrace"
    assert summary(bundle)["trace_tail"]["whole"] is True
    elf = summary(bundle)["elfs"][0]["path"]  # for tracepoint names, as the pane has them
    # what the end of the file makes the CLI say (a span never ended) a pane that follows
    # a stream does not say
    cli = [line for line in undebug("trace", "show", str(tail), "--elf", elf).stdout.splitlines()
           if "was never ended" not in line]
    assert any("thread_name" in line for line in cli)  # the guest names its threads at start

    async def body(pilot: Pilot[None]) -> None:
        await backtrace_shown(pilot)
        await pilot.pause(1.5)  # the tab hidden a while: a dump's events must wait, not go
        await pilot.press("6")
        pane = screen(pilot).query_one(TracePane)
        await until(pilot, lambda: len(pane.lines) >= len(cli), "the events")
        assert list(pane.lines) == cli

    drive(UndebugApp(bundle), body)


def test_run_control_is_refused_on_a_dump(bundle: str) -> None:
    async def body(pilot: Pilot[None]) -> None:
        await backtrace_shown(pilot)
        status = screen(pilot).query_one(StatusBar)
        for key in ("s", "c", "n", "b"):
            status.message = None
            await pilot.press(key)
            # refused by the screen, not tried and failed: no child, no supervisor asked
            assert status.message is not None and status.message.plain == DUMP_REFUSAL, key
        await pilot.press("escape", "colon", *"stop", "enter")
        output = screen(pilot).query_one(OutputPane)
        await until(pilot, lambda: output.last == f"stop {bundle}", "the refusal")
        text = "\n".join(output.plain)
        assert "run control is off" in text and "(exit code 2)" in text, text

    drive(UndebugApp(bundle), body)


def test_the_shell_on_a_bundle_prints_what_the_cli_prints_and_refuses_run_control(
        bundle: str) -> None:
    cli = undebug("threads", bundle)
    assert cli.code == 0
    proc = _shell([bundle], "threads\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == cli.stdout
    refused = _shell([bundle], "stop\nthreads\n")
    assert refused.returncode == 2
    assert "stop needs a live guest" in refused.stderr
    assert refused.stdout == cli.stdout  # the lines after a refusal still run


def test_the_api_opens_a_bundle_through_its_usual_entries(bundle: str) -> None:
    """api.attach / status / Console take a bundle's path as they take a name: the TUI's
    only way in. Typed results as for a live guest, at run token 0, never live."""
    from undebug import api

    cli = undebug("threads", bundle, "--json").json()["threads"]
    with api.attach(bundle) as session:
        view = session.view()
        assert [t.id for t in view.threads] == [t["id"] for t in cli]
        assert all(isinstance(t.name, api.GuestText) for t in view.threads)
        assert view.run_token == 0 and not view.live
    status = api.status(bundle)
    assert status.state == "dumped" and not status.runs and status.run_token == 0
    found = api.dump(bundle)
    assert found is not None and found.crash_thread == summary(bundle)["crash"]["thread_id"]
    assert api.dump("no-such-guest") is None  # a name: not a bundle
    log = (Path(bundle) / "console.log").read_bytes().decode("utf-8", "surrogateescape")
    assert [line.raw for line in api.Console(bundle).poll()] == \
        log.replace("\r", "").splitlines()[-200:]
