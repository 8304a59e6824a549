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
    assert undebug("delete", guest).code == 0
    assert undebug("cont", guest).code == 0
    assert undebug("wait", guest, "--timeout", "2").code == 1  # no breakpoint left


def test_step_moves_one_instruction_on_the_stopped_vcpu(guest: str) -> None:
    undebug("break", guest, "main.c:155")
    stop = wait(guest)
    first = undebug("step", guest, "--json").json()["stop"]
    assert first["reason"] == "step" and first["cpu"] == stop["cpu"]
    assert first["pc"] != stop["pc"] and first["thread"] == stop["thread"]
    undebug("delete", guest)


def test_bad_locations_and_ids(guest: str) -> None:
    for location, message in [("no_such_function", "no function or symbol"),
                              ("main.c:99999", "no code at main.c:99999")]:
        result = undebug("break", guest, location)
        assert result.code == 2 and message in result.stderr
    result = undebug("delete", guest, "42")
    assert result.code == 2 and "no breakpoint 42" in result.stderr
    result = undebug("step", guest)
    assert result.code == 2 and "stop it first" in result.stderr
