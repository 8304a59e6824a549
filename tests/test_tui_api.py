"""What undebug.api gives the front ends that stay open (the TUI): a threads view in one
pass with its run token, a status that tells a reader's brief hold from a user's pause,
run control, and the console. Against a live reference guest."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import boot, undebug
from undebug import api
from undebug.session.client import SupervisorClient

NAME = "tui-api"


@pytest.fixture(scope="module")
def guest(guest_image: Path) -> Iterator[str]:
    yield boot(NAME, "threads=8", guest_image)
    undebug("kill", NAME)


def _counting_register_reads(session: api.Session) -> list[int]:
    """Count the supervisor's register reads of this session (a spy on the real client)."""
    calls: list[int] = []
    client = session.target.client  # type: ignore[attr-defined]
    real = client.read_registers

    def counted() -> object:
        calls.append(1)
        return real()
    client.read_registers = counted
    return calls


def test_a_live_view_reads_the_registers_once_per_pass(guest: str) -> None:
    """A running guest read without stopping it: one register read per view, not one per
    memory read (a walk of 15 threads makes dozens of them); each view a new token."""
    assert api.status(guest).running
    with api.attach(guest, stop=False) as session:
        calls = _counting_register_reads(session)
        first = session.view()
        assert len(calls) == 1 and first.live
        second = session.view()
        assert len(calls) == 2 and second.run_token != first.run_token
    names = {t.name for t in first.threads}
    assert {"main", "sleeper", "blocked", "worker-7"} <= names  # planted (refguest README)


def test_a_stopped_view_matches_the_cli_and_carries_the_stop_token(guest: str) -> None:
    api.pause(guest)
    try:
        with api.attach(guest) as session:
            view = session.view()
        cli = undebug("threads", guest, "--json").json()
        status = api.status(guest)
        assert not view.live and view.run_token == status.run_token
        assert [t.id for t in view.threads] == [t["id"] for t in cli["threads"]]
        assert {str(k): v for k, v in view.vcpus.items()} == cli["vcpus"]
        # where is the function, or the pc in hex where no symbol covers it (ThreadsView;
        # `threads` prints the same): a vCPU paused in an interrupt stub has no function
        assert {t.id: view.where[t.id] for t in view.threads} == \
            {t["id"]: t["function"] or f"{t['pc']:#x}" for t in cli["threads"]}
        on_cpu0 = view.on_cpu(0)
        assert on_cpu0 is not None and on_cpu0.id == cli["vcpus"]["0"]
    finally:
        api.resume(guest)


def test_status_tells_a_readers_hold_from_a_users_pause(guest: str) -> None:
    from undebug.session.store import SessionDir

    with SupervisorClient(SessionDir.named(guest)) as holder:
        holder.freeze()  # what every consistent read does: hold still, read, let go
        held = api.status(guest)
        assert (held.state, held.frozen, held.runs) == ("paused", True, True)
        api.pause(guest)
        paused = api.status(guest)
        assert (paused.state, paused.runs) == ("paused", False)
        api.resume(guest)
        holder.thaw()
    assert api.status(guest).running


def test_console_gives_the_tail_then_the_new_lines(guest: str) -> None:
    console = api.Console(guest, tail=50)
    first = console.poll()
    assert any(line.startswith("refguest: ready") for line in first)
    later: list[api.GuestText] = []
    deadline = time.monotonic() + 30
    while not any(line.startswith("refguest: heartbeat") for line in later):  # one a second
        assert time.monotonic() < deadline, f"no new heartbeat line: {later}"
        time.sleep(0.1)
        later += console.poll()
    assert not set(later) & set(first)  # new lines only: each heartbeat has its own uptime
    assert all(isinstance(line, api.GuestText) for line in first + later)


def test_attaching_again_reuses_the_parsed_elf_and_its_unwind_tables(guest: str) -> None:
    """The TUI attaches at every stop: the guest's ELF index and the unwinder's tables
    are built at the first attach only (they took 70-90 ms per stop with lwIP in the
    reference guest), and a backtrace through them is the same."""
    from undebug import unwind

    api.pause(guest)
    try:
        with api.attach(guest) as first:
            thread = first.view().threads[0].id
            before = first.backtrace(thread)
            tables = unwind._TABLES.get(first.target.elf)
        with api.attach(guest) as second:
            assert second.target.elf is first.target.elf
            after = second.backtrace(thread)
            assert tables is not None and unwind._TABLES.get(second.target.elf) is tables
    finally:
        api.resume(guest)
    assert [f.pc for f in after.frames] == [f.pc for f in before.frames] and after.frames
