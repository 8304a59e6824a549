"""The TUI's tabbed panes, the command bar and the snapshot key against a live reference
guest, driven by Textual's Pilot. What a pane shows is checked against another reader of
the same guest: objdump on the ELF (the instruction at the pc), the source file on disk
at the line ``undebug bt --json`` gives, ``undebug mem/regs --json`` (the CLI, another
front end), the ELF's symbol table, and the guest's own console."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from textual.pilot import Pilot

from tests.conftest import GUEST, boot, undebug
from tests.test_tui import drive, screen, state, until
from tui.app import UndebugApp
from tui.widgets.backtrace import BacktracePane
from tui.widgets.command_bar import CommandBar
from tui.widgets.disassembly import DisassemblyPane
from tui.widgets.memory import MemoryPane
from tui.widgets.output import OutputPane
from tui.widgets.pane import TextPane
from tui.widgets.registers import RegistersPane
from tui.widgets.source import SourcePane
from tui.widgets.status import StatusBar
from tui.widgets.threads import ThreadsTable
from tui.widgets.trace import TracePane
from tui.widgets.watch import WatchPane
from undebug.elf import ElfFile

NAME = "tui-panes"


@pytest.fixture(scope="module")
def guest(guest_image: Path) -> Iterator[str]:
    yield boot(NAME, "threads=8", guest_image)
    undebug("kill", NAME)


@pytest.fixture
def paused(guest: str) -> Iterator[str]:
    assert undebug("stop", guest).code == 0
    yield guest
    undebug("cont", guest)


def objdump_mnemonic(address: int) -> str:
    """The instruction at ``address`` as binutils decodes it from the ELF (Intel syntax)."""
    out = subprocess.run(["objdump", "-d", "-M", "intel", f"--start-address={address:#x}",
                          f"--stop-address={address + 16:#x}", str(GUEST)],
                         capture_output=True, text=True, check=True).stdout
    line = next(li for li in out.splitlines() if re.match(rf"\s*{address:x}:", li))
    return line.split("\t")[2].split()[0]


async def selected_ready(pilot: Pilot[None]) -> int:
    pane = screen(pilot).query_one(BacktracePane)
    await until(pilot, lambda: pane.shown is not None, "a backtrace")
    selected = screen(pilot).selected
    assert selected is not None
    return selected


def test_disassembly_marks_the_instruction_at_the_selected_threads_pc(paused: str) -> None:
    async def body(pilot: Pilot[None]) -> None:
        thread_id = await selected_ready(pilot)
        rip = undebug("regs", paused, "--thread", str(thread_id), "--json").json()["registers"]["rip"]
        await pilot.press("2")
        pane = screen(pilot).query_one(DisassemblyPane)
        await until(pilot, lambda: pane.shown is not None and pane.mark is not None,
                    "the disassembly")
        assert pane.mark is not None
        marked = pane.plain[pane.mark]
        assert marked.startswith(f"=> {rip:#018x}")
        assert marked.split(">  ", 1)[1].split()[0] == objdump_mnemonic(rip)
        # the source line it came from is above it, as binutils' addr2line reads the DWARF
        where = subprocess.run(["addr2line", "-e", str(GUEST), f"{rip:#x}"], capture_output=True,
                               text=True, check=True).stdout.split()[0]
        heads = [p for p in pane.plain[: pane.mark] if not p.startswith(("=>", "   "))]
        file, line = where.rsplit(":", 1)
        assert heads[-1].startswith(f"{Path(file).name}:{line}  ")

    drive(UndebugApp(paused), body)


def test_enter_on_a_backtrace_frame_shows_its_source_line(paused: str) -> None:
    doc = undebug("threads", paused, "--json").json()
    sleeper = next(t["id"] for t in doc["threads"] if t["name"] == "sleeper")
    frames = undebug("bt", paused, "--thread", str(sleeper), "--json").json()["backtraces"][0]["frames"]
    nap = next(f for f in frames if f["function"] == "nap")
    text = (Path(GUEST).parents[1] / "guest-stubs" / "refguest" / nap["file"]).read_text()
    expected = text.splitlines()[nap["line"] - 1].expandtabs(8)

    async def body(pilot: Pilot[None]) -> None:
        await selected_ready(pilot)
        table = screen(pilot).query_one(ThreadsTable)
        row = table.shown.index(sleeper)
        table.focus()
        await pilot.press(*["down" if row > table.cursor_row else "up"] * abs(row - table.cursor_row))
        bt = screen(pilot).query_one(BacktracePane)
        await until(pilot, lambda: bt.shown == (bt.shown[0], sleeper) if bt.shown else False,
                    "the sleeper's backtrace")
        bt.focus()
        await pilot.press(*["down"] * nap["index"])
        await pilot.press("enter")
        pane = screen(pilot).query_one(SourcePane)
        await until(pilot, lambda: pane.shown == (nap["file"], nap["line"]) and pane.mark
                    is not None, "the source of nap")
        assert pane.mark is not None
        assert pane.plain[pane.mark] == f"{nap['line']:>5}  {expected}"
        assert str(pane.border_title).endswith(f"{nap['file']}:{nap['line']}")

    drive(UndebugApp(paused), body)


def test_memory_jumps_to_a_symbol_and_shows_its_bytes(paused: str) -> None:
    symbol = ElfFile(GUEST).symbol("planted_counter")
    assert symbol is not None
    cli = undebug("mem", paused, "planted_counter", "256", "--json").json()

    async def body(pilot: Pilot[None]) -> None:
        await selected_ready(pilot)
        await pilot.press("4")
        await pilot.press(*"planted_counter", "enter")
        pane = screen(pilot).query_one(MemoryPane)
        await until(pilot, lambda: pane.address is not None, "the bytes")
        assert pane.address == symbol.address
        lines = pane.query_one("#memory-bytes", TextPane).plain
        shown = bytes.fromhex("".join(li[18:65].replace(" ", "") for li in lines))
        assert shown.hex() == cli["hex"]
        assert lines[0].startswith(f"{symbol.address:016x}  ")
        await pilot.press("escape", "e")
        said = screen(pilot).query_one(StatusBar).message
        assert said is not None and f"undebug mem {paused} planted_counter 256" in said.plain

    drive(UndebugApp(paused), body)


def test_watch_shows_a_value_and_it_follows_a_step_and_changed_registers_are_marked(
        paused: str) -> None:
    def rip_of(thread_id: int) -> int:
        doc = undebug("regs", paused, "--thread", str(thread_id), "--json").json()
        return int(doc["registers"]["rip"])

    async def body(pilot: Pilot[None]) -> None:
        thread_id = await selected_ready(pilot)
        await pilot.press("5")
        await pilot.press(*"(unsigned long)$pc", "enter")
        pane = screen(pilot).query_one(WatchPane)
        await until(pilot, lambda: pane.value_of("(unsigned long)$pc") is not None,
                    "the watched value", timeout=120)
        assert int(pane.value_of("(unsigned long)$pc") or "") == rip_of(thread_id)
        before = screen(pilot).view
        assert before is not None
        await pilot.press("escape", "n")  # one instruction on the selected thread's vCPU
        await until(pilot, lambda: screen(pilot).view is not before
                    and not screen(pilot).view.live, "the stop after the step")  # type: ignore[union-attr]
        after = rip_of(thread_id)
        await until(pilot, lambda: pane.value_of("(unsigned long)$pc") == str(after),
                    "the value at the new stop", timeout=120)
        registers = screen(pilot).query_one(RegistersPane)
        assert "rip" in registers.changed  # the step moved the pc; the pane marks it

    drive(UndebugApp(paused), body)


def test_the_trace_pane_shows_rates_and_filters_events(guest: str) -> None:
    async def body(pilot: Pilot[None]) -> None:
        await pilot.press("6")
        pane = screen(pilot).query_one(TracePane)
        # the guest prints a heartbeat line once a second, and traces a heartbeat event
        await until(pilot, lambda: any("heartbeat" in line for line in pane.lines)
                    and any("handle_request" in line for line in pane.lines), "events")
        assert pane.rates["heartbeat"][-1] < 10 and max(pane.rates["handle_request"]) > 10
        await pilot.press(*"heartbeat")
        await until(pilot, lambda: pane.events.plain and all(
            "heartbeat" in line for line in pane.events.plain), "filtered events")
        assert len(pane.events.plain) < len(pane.lines)
        status = screen(pilot).query_one(StatusBar)
        assert status.rate is not None and status.rate[0] > 0
        assert status.rate[1] == pane.lost

    drive(UndebugApp(guest), body)


def test_the_command_bar_completes_runs_and_refuses(guest: str) -> None:
    async def body(pilot: Pilot[None]) -> None:
        await selected_ready(pilot)
        await pilot.press("colon", *"thr", "tab")
        bar = screen(pilot).query_one(CommandBar)
        await until(pilot, lambda: bar.value == "threads ", "completion of thr")
        await pilot.press("minus", "minus", *"json", "enter")
        output = screen(pilot).query_one(OutputPane)
        await until(pilot, lambda: output.last == f"threads {guest} --json",
                    "the command's output", timeout=60)
        text = "\n".join(output.plain[1:])
        import json

        shown = {t["name"] for t in json.loads(text)["threads"]}
        cli = {t["name"] for t in undebug("threads", guest, "--json").json()["threads"]}
        assert shown == cli
        await pilot.press("colon", *"logs", "space", "minus", "f", "enter")
        await until(pilot, lambda: output.last == f"logs {guest} -f", "the refusal")
        assert f"undebug logs {guest} -f" in output.plain[-2]
        assert state(guest) == "running"

    drive(UndebugApp(guest), body)


def test_read_only_refuses_run_control_in_the_command_bar(guest: str) -> None:
    async def body(pilot: Pilot[None]) -> None:
        await selected_ready(pilot)
        await pilot.press("colon", *"stop", "enter")
        output = screen(pilot).query_one(OutputPane)
        await until(pilot, lambda: output.last == f"stop {guest}", "the refusal")
        assert "read-only" in "\n".join(output.plain)
        assert state(guest) == "running"

    drive(UndebugApp(guest, read_only=True), body)


def test_p_takes_a_consistent_snapshot_of_a_running_guest(guest: str) -> None:
    async def body(pilot: Pilot[None]) -> None:
        table = screen(pilot).query_one(ThreadsTable)
        await until(pilot, lambda: screen(pilot).view is not None and screen(pilot).view.live,  # type: ignore[union-attr]
                    "the live view")
        await pilot.press("p")
        await until(pilot, lambda: "SNAPSHOT" in str(table.border_title), "the snapshot")
        view = screen(pilot).view
        assert view is not None and not view.live
        await pilot.pause(2.5)  # live ticks would replace it: it is held
        assert screen(pilot).view is view
        assert state(guest) == "running"  # paused for the read only

    drive(UndebugApp(guest), body)


def test_a_keymap_file_rebinds_a_key(guest: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "undebug").mkdir()
    (tmp_path / "undebug" / "tui-keys.toml").write_text('[keys]\nstop = "x"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))

    async def body(pilot: Pilot[None]) -> None:
        await selected_ready(pilot)
        await pilot.press("s")  # no longer stop
        await pilot.pause(1)
        assert state(guest) == "running"
        await pilot.press("x")
        await until(pilot, lambda: state(guest) == "paused", "the stop")

    try:
        drive(UndebugApp(guest), body)
    finally:
        undebug("cont", guest)
