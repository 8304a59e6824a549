"""The TUI's memory-map, heap and network panes and the shell's ``maps``, ``heap`` and
``net``, against a live reference guest with its network on (``--forward tcp::7``).

What a pane shows is checked against other readers of the same guest at the same stop:
the guest's own ``struct thread`` (stack and guard page, read through a Target), its
README's planted layout (RAM below 1 MiB is writable and executable for the AP
trampoline), ``undebug heap --json`` (the CLI, another front end), and a TCP connection
the test itself opened (its port, as the host's socket reports it)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document
from rich.text import Text
from textual.pilot import Pilot
from textual.widgets import DataTable

from tests.conftest import undebug
from tests.test_net import ECHO_PORT, _boot_with_network, _connect
from tests.test_tui import drive, screen, until
from tui.app import UndebugApp
from tui.widgets.heap import HeapPane
from tui.widgets.maps import MapsPane
from tui.widgets.net import NetPane
from tui.widgets.pane import TextPane
from tui.widgets.status import StatusBar
from undebug.elf import ElfFile
from undebug.live_target import LiveTarget
from undebug.os import provider_for
from undebug.session.store import SessionDir

NAME = "tui-state"
EVIL = "evil\x1b]0;owned\x07"  # the reference guest's hostile thread name


@pytest.fixture(scope="module")
def guest(guest_image: Path) -> Iterator[tuple[str, dict[str, int]]]:
    ports = _boot_with_network(NAME, guest_image)
    yield NAME, ports
    undebug("kill", NAME)


@pytest.fixture
def paused(guest: tuple[str, dict[str, int]]) -> Iterator[tuple[str, dict[str, int]]]:
    assert undebug("stop", guest[0]).code == 0
    yield guest
    undebug("cont", guest[0])


def rows(table: DataTable[Any]) -> list[list[Text]]:
    """The table's cells (the panes fill theirs with Rich Text only)."""
    return [[cell if isinstance(cell, Text) else Text(str(cell)) for cell in table.get_row_at(i)]
            for i in range(table.row_count)]


def plain(row: list[Text]) -> list[str]:
    return [cell.plain for cell in row]


def span(cells: list[str]) -> tuple[int, int]:
    """The RANGE cell's ``0xSTART-0xEND``, as numbers."""
    start, end = cells[0].split("-")
    return int(start, 16), int(end, 16)


async def press_e(pilot: Pilot[None]) -> str:
    await pilot.press("e")
    said = screen(pilot).query_one(StatusBar).message
    assert said is not None
    return said.plain


def test_maps_pane_lists_stacks_and_guard_pages_and_marks_wx_red(
        paused: tuple[str, dict[str, int]], guest_image: Path) -> None:
    name, _ = paused
    elf = ElfFile(guest_image)
    guard_at = elf.struct("thread").member("guard_page").offset  # type: ignore[union-attr]
    with LiveTarget(SessionDir.named(name)) as target:  # the guest's own records
        threads = provider_for(target).threads().threads
        expected = {t.name: (t.stack, target.read_int(t.address + guard_at)) for t in threads}
    assert EVIL in expected and all(stack is not None for stack, _ in expected.values())

    async def body(pilot: Pilot[None]) -> None:
        await pilot.press("8")
        pane = screen(pilot).query_one(MapsPane)
        await until(pilot, lambda: pane.shown is not None, "the memory map")
        table = pane.query_one(DataTable)
        shown = [(plain(r), r) for r in rows(table)]

        def what(suffix: str) -> list[str]:
            return next(cells for cells, _ in shown if cells[5].endswith(suffix))

        def starting(address: int) -> list[Text]:
            return next(row for cells, row in shown if span(cells)[0] == address)

        for thread, (stack, guard) in expected.items():
            assert stack is not None
            label = thread.replace("\x1b", "\\x1b").replace("\x07", "\\x07")
            cells = what(f"stack of {label}")
            assert span(cells) == stack and cells[1] == "rw-s"
            cells = what(f"guard page of {label}")
            assert span(cells) == (guard, guard + 4096) and cells[1] == "----"
        assert not any("\x1b" in cell for cells, _ in shown for cell in cells)
        # the README's planted W+X: RAM from 0x1000 to 1 MiB, in red; the text is not
        low = starting(0x1000)
        assert plain(low)[6] == "writable and executable" and "red" in str(low[6].style)
        text = elf.section(".text")
        assert text is not None
        code = starting(text.address)
        assert plain(code)[1] == "r-xs" and "red" not in str(code[0].style)
        said = await press_e(pilot)
        assert f"undebug maps {name}" in said.split("; ")

    drive(UndebugApp(name), body)


HEAP_LINE = re.compile(r"^  (total|used|free|largest free)\s+\S+ \((\d+)\)$")


def heap_numbers(pane: HeapPane) -> dict[str, int]:
    found = {}
    for line in pane.query_one(TextPane).plain:
        match = HEAP_LINE.match(line)
        if match:
            found[match.group(1).replace(" ", "_")] = int(match.group(2))
    return found


def test_heap_pane_shows_the_clis_totals_read_once_per_stop(
        paused: tuple[str, dict[str, int]]) -> None:
    name, _ = paused

    def cli() -> dict[str, int]:
        (heap,) = undebug("heap", name, "--json").json()["heaps"]
        return {k: heap[k] for k in ("total", "used", "free", "largest_free")}

    first = cli()

    async def body(pilot: Pilot[None]) -> None:
        await pilot.press("9")
        pane = screen(pilot).query_one(HeapPane)
        await until(pilot, lambda: pane.shown is not None, "the heap")
        assert pane.shown is not None
        assert heap_numbers(pane) == first
        token, data = pane.shown
        assert str(pane.query_one(TextPane).border_title).startswith(f"heap at stop #{token}")
        await pilot.press("8", "9")  # away and back at the same stop: not read again
        await pilot.pause(0.5)
        assert pane.shown[0] == token and pane.shown[1] is data
        # the guest runs a while and stops: a new stop, read again, equal to the CLI's
        assert undebug("cont", name).code == 0 and undebug("stop", name).code == 0
        await until(pilot, lambda: pane.shown is not None and pane.shown[0] != token
                    and "LIVE" not in str(pane.query_one(TextPane).border_title), "a new stop")
        assert heap_numbers(pane) == cli()
        said = await press_e(pilot)
        assert f"undebug heap {name}" in said.split("; ")

    drive(UndebugApp(name), body)


def test_net_pane_shows_the_tests_connection_established_and_the_host_view_apart(
        guest: tuple[str, dict[str, int]]) -> None:
    name, ports = guest
    conn = _connect(ports["tcp"])
    client_port = conn.getsockname()[1]
    assert undebug("stop", name).code == 0
    try:
        async def body(pilot: Pilot[None]) -> None:
            await pilot.press("0")
            pane = screen(pilot).query_one(NetPane)
            await until(pilot, lambda: pane.shown is not None, "the network")
            sockets = [plain(r) for r in rows(pane.query_one("#net-sockets", DataTable))]
            # QEMU's user network hands the guest the host client's own source port
            mine = [s for s in sockets if s[5].endswith(f":{client_port}")]
            assert [(s[0], s[1], s[4]) for s in mine] == \
                [("tcp", "ESTABLISHED", f"10.0.2.15:{ECHO_PORT}")]
            assert ["tcp", "LISTEN", "-", "-", f"*:{ECHO_PORT}", "*:*", ""] in sockets
            nat = [plain(r) for r in rows(pane.query_one("#net-nat", DataTable))]
            assert ["tcp", "HOST_FORWARD", f"127.0.0.1:{ports['tcp']}", f"10.0.2.15:{ECHO_PORT}",
                    "0", "0"] in nat
            said = await press_e(pilot)
            assert f"undebug net {name}" in said.split("; ")

        drive(UndebugApp(name), body)
    finally:
        conn.close()
        undebug("cont", name)


def test_the_shell_prints_maps_heap_and_net_as_the_cli_does(
        guest: tuple[str, dict[str, int]]) -> None:
    name, ports = guest
    conn = _connect(ports["tcp"])  # a connection the net output shows in both
    client_port = conn.getsockname()[1]
    assert undebug("stop", name).code == 0
    try:
        shell = subprocess.run([sys.executable, "-m", "undebug.cli", "shell", name],
                               input="maps\nheap\nnet\n", capture_output=True, text=True,
                               timeout=180)
        cli = [undebug(command, name) for command in ("maps", "heap", "net")]
    finally:
        conn.close()
        undebug("cont", name)
    assert shell.returncode == 0, shell.stderr
    assert all(r.code == 0 for r in cli)
    assert shell.stdout == "".join(r.stdout for r in cli)
    assert re.search(rf"ESTABLISHED .* 10\.0\.2\.15:{ECHO_PORT} +10\.0\.2\.2:{client_port}\b",
                     shell.stdout)
    assert "\x1b" not in shell.stdout and "stack of evil\\x1b]0;owned\\x07" in shell.stdout


def test_the_shell_lists_and_completes_maps_heap_and_net(
        guest: tuple[str, dict[str, int]]) -> None:
    from tui.completion import GuestFacts, LineCompleter

    name, _ = guest
    helped = subprocess.run([sys.executable, "-m", "undebug.cli", "shell", name], input="help\n",
                            capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0, helped.stderr
    listed = {line.split()[0] for line in helped.stdout.splitlines() if line.startswith("  ")}
    assert {"maps", "heap", "net"} <= listed

    def offered(text: str) -> list[str]:
        completer = LineCompleter(name, GuestFacts())
        return [c.text for c in completer.get_completions(Document(text), CompleteEvent())]

    assert offered("ma") == ["maps"] and offered("hea") == ["heap"]
    assert "net" in offered("ne")
    assert offered("net --cap") == ["--capture", "--capture-stop"]
    assert offered("maps --ch") == ["--check"]



def test_the_api_network_is_what_undebug_net_reads(guest: tuple[str, dict[str, int]]) -> None:
    """The TUI's source (undebug.api) and the CLI agree at one stop: the same sockets and
    the same host view, typed; guest text as GuestText."""
    import undebug as api
    from undebug.api import GuestText

    name, ports = guest
    conn = _connect(ports["tcp"])
    client_port = conn.getsockname()[1]
    assert undebug("stop", name).code == 0
    try:
        doc = undebug("net", name, "--json").json()
        with api.attach(name) as session:
            network = session.network()
    finally:
        conn.close()
        undebug("cont", name)
    assert network.lwip and doc["lwip"]
    assert [s.to_json() for s in network.sockets] == doc["sockets"]
    assert network.host is not None and network.host.to_json() == doc["host"]
    assert any(s.remote_port == client_port for s in network.sockets)
    assert all(isinstance(s.state, GuestText) for s in network.sockets)
    assert isinstance(network.interfaces[0].name, GuestText)
