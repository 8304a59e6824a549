"""Run control through the supervisor on the real reference guest: breakpoints persist
across CLI calls, stops report the guest thread, cont steps over the breakpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import undebug, wait_for_console


@pytest.fixture
def guest(guest_image: Path) -> Iterator[str]:
    name = "ctl"
    assert undebug("run", "-d", "--name", name, "--smp", "2", "--append", "threads=4",
                   str(guest_image)).code == 0
    wait_for_console(name, "refguest: ready")
    yield name
    undebug("kill", name)


def wait(name: str) -> dict:
    result = undebug("wait", name, "--timeout", "20", "--json")
    assert result.code == 0, result.stdout + result.stderr
    return result.json()["stop"]


@pytest.mark.parametrize("hardware", [False, True], ids=["software", "hardware"])
def test_breakpoint_stops_the_worker_and_cont_goes_on(guest: str, hardware: bool) -> None:
    extra = ["--hardware"] if hardware else []
    made = undebug("break", guest, "checksum_block", "--json", *extra).json()["breakpoint"]
    assert made["hardware"] is hardware
    stop = wait(guest)
    assert stop["reason"] == "breakpoint" and stop["breakpoint"] == made["id"]
    assert stop["function"] == "checksum_block" and stop["file"].endswith("main.c")
    assert stop["thread"]["name"].startswith("worker-")
    # The guest thread on that vCPU is the one the threads view says runs there.
    threads = undebug("threads", guest, "--json").json()
    assert threads["vcpus"][str(stop["cpu"])] == stop["thread"]["id"]
    chain = [f["function"] for f in undebug("bt", guest, "--thread", str(stop["thread"]["id"]),
                                            "--json").json()["backtraces"][0]["frames"]]
    assert chain[:3] == ["checksum_block", "handle_request", "worker_main"]
    # Stopped means stopped: still there after other commands, until cont.
    guest_status = undebug("ps", "--json").json()["guests"][0]
    assert (guest_status["state"], guest_status["qemu_state"]) == ("paused", "debug")
    assert undebug("cont", guest).code == 0
    second = wait(guest)  # steps over the breakpoint, then hits it again later
    assert second["breakpoint"] == made["id"]
    assert undebug("delete", guest, "--all").code == 0
    assert undebug("cont", guest).code == 0
    assert undebug("wait", guest, "--timeout", "2").code == 1  # no breakpoint left


def test_step_moves_one_instruction_on_the_stopped_vcpu(guest: str) -> None:
    """A FILE:LINE breakpoint at the workers' call of handle_request (the line found in
    the source, so edits elsewhere in main.c do not move it off hot code)."""
    source = Path(__file__).resolve().parents[1] / "guest-stubs" / "refguest" / "main.c"
    line = next(n for n, text in enumerate(source.read_text().splitlines(), 1)
                if text.strip() == "handle_request(w);")
    assert undebug("break", guest, f"main.c:{line}").code == 0
    stop = wait(guest)
    first = undebug("step", guest, "--json").json()["stop"]
    assert first["reason"] == "step" and first["cpu"] == stop["cpu"]
    assert first["pc"] != stop["pc"] and first["thread"] == stop["thread"]
    undebug("delete", guest, "--all")


def test_bad_locations_and_ids(guest: str) -> None:
    for location, message in [("no_such_function", "no symbol 'no_such_function'"),
                              ("main.c:99999", "no code at main.c:99999")]:
        result = undebug("break", guest, location)
        assert result.code == 2 and message in result.stderr
    result = undebug("delete", guest, "42")
    assert result.code == 2 and "no breakpoint 42" in result.stderr
    result = undebug("step", guest)
    assert result.code == 2 and "stop it first" in result.stderr
    result = undebug("delete", guest)  # neither an id nor --all
    assert result.code == 2 and "one of the arguments ID --all is required" in result.stderr
    for args in ([], ["checksum_block", "--list"], ["--list", "--hardware"]):
        result = undebug("break", guest, *args)
        assert result.code == 2 and "or --list (alone)" in result.stderr, args


def test_break_list_shows_each_breakpoint_and_delete_all_removes_them(guest: str) -> None:
    from undebug.elf import ElfFile

    elf = ElfFile(Path(__file__).resolve().parents[1] / "build" / "refguest.elf")
    assert undebug("break", guest, "--list").stdout == "no breakpoints\n"
    made = [undebug("break", guest, "worker_main", "--json").json()["breakpoint"],
            undebug("break", guest, "handle_request", "--hardware", "--json").json()["breakpoint"]]
    listed = undebug("break", guest, "--list", "--json").json()["breakpoints"]
    expected = []
    for bp, (name, hardware) in zip(made, [("worker_main", False), ("handle_request", True)],
                                    strict=True):
        symbol = elf.symbol(name)
        assert symbol is not None
        expected.append({"id": bp["id"], "address": symbol.address, "location": name,
                         "hardware": hardware, "owner": "cli", "when_register": None,
                         "when_value": None})
    assert listed == expected
    text = undebug("break", guest, "--list").stdout.splitlines()
    assert text == [f"breakpoint {made[0]['id']} at {expected[0]['address']:#x} (worker_main, "
                    "software, set by cli)",
                    f"breakpoint {made[1]['id']} at {expected[1]['address']:#x} (handle_request, "
                    "hardware, set by cli)"]
    deleted = undebug("delete", guest, "--all", "--json").json()["deleted"]
    assert sorted(bp["id"] for bp in deleted) == sorted(bp["id"] for bp in made)
    assert undebug("break", guest, "--list", "--json").json()["breakpoints"] == []


@pytest.mark.parametrize(("address", "message"), [
    ("0xdead000000000000", "0xdead000000000000 is not a canonical x86-64 address"),
    ("0x1" + "0" * 16, "does not fit in 64 bits"),
    ("0xzz", "bad address '0xzz'"),
])
def test_break_at_an_impossible_address_is_refused(guest: str, address: str,
                                                   message: str) -> None:
    result = undebug("break", guest, address)
    assert result.code == 2 and message in result.stderr, result.stderr
    assert undebug("break", guest, "--list", "--json").json()["breakpoints"] == []


def test_delete_all_keeps_the_crash_stops_run_armed(guest: str, guest_image: Path) -> None:
    """A crash stop (owner ``crash``, armed as ``run`` arms a provider's, through the
    supervisor's own protocol) outlives ``delete --all``, which takes the user's; its
    id deletes it."""
    from undebug.elf import ElfFile
    from undebug.session.client import SupervisorClient
    from undebug.session.store import SessionDir

    panic = ElfFile(guest_image).symbol("panic")
    assert panic is not None
    with SupervisorClient(SessionDir.named(guest)) as client:
        crash = client.insert_breakpoint(panic.address, False, "panic", owner="crash")
    mine = undebug("break", guest, "worker_main", "--json").json()["breakpoint"]
    deleted = undebug("delete", guest, "--all", "--json").json()["deleted"]
    assert [bp["id"] for bp in deleted] == [mine["id"]]
    listed = undebug("break", guest, "--list", "--json").json()["breakpoints"]
    assert [(bp["id"], bp["owner"]) for bp in listed] == [(crash.id, "crash")]
    assert undebug("delete", guest, str(crash.id)).code == 0
    assert undebug("break", guest, "--list", "--json").json()["breakpoints"] == []
