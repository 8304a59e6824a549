"""Crash breakpoints (owner ``crash``): the supervisor stops the guest as crashed where its
OS enters the crash path, before the OS can end QEMU; with a condition on a register it
lets the same path run on when the condition is false. Unikraft's crash path writes
isa-debug-exit (ending QEMU) before anything else; the reference guest's ``exit_qemu(code)``
does the same, so the tests put the breakpoint there, conditional on ``code`` (rdi)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import undebug, wait_for_console
from undebug.elf import ElfFile
from undebug.session.client import SupervisorClient
from undebug.session.store import SessionDir


def _status(name: str) -> dict:
    return next(g for g in undebug("ps", "--json").json()["guests"] if g["name"] == name)


def _boot(name: str, image: Path, append: str) -> int:
    """Boot held, arm the crash breakpoint at exit_qemu, return its address."""
    assert undebug("run", "-d", "--paused", "--name", name, "--append", append,
                   str(image)).code == 0
    symbol = ElfFile(image).symbol("exit_qemu")
    assert symbol is not None
    return symbol.address


def test_a_crash_stop_whose_condition_holds_keeps_the_guest(guest_image: Path) -> None:
    name = "crash-stop"
    address = _boot(name, guest_image, "threads=2 run_for=200")
    try:
        with SupervisorClient(SessionDir.named(name)) as client:
            bp = client.insert_breakpoint(address, False, "exit_qemu(0)", owner="crash",
                                          when=("rdi", 0))
            assert (bp.owner, bp.when_register, bp.when_value) == ("crash", "rdi", 0)
            client.resume()
        wait_for_console(name, "refguest: shutdown code=0")
        deadline = time.monotonic() + 20
        while (status := _status(name))["outcome"] is None:
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status["state"] == "paused"  # kept: QEMU did not exit
        assert status["outcome"]["kind"] == "panic" and not status["outcome"]["ok"]
        assert "guest crashed (stopped at exit_qemu(0))" in status["outcome"]["reason"]
        assert status["last_stop"]["reason"] == "crash"
        bt = undebug("bt", name, "--json")  # the thread that crashed, where it crashed
        assert bt.code == 0, bt.stderr
        frames = [f["function"] for f in bt.json()["backtraces"][0]["frames"]]
        assert frames[0] == "exit_qemu", frames
        refused = undebug("cont", name)
        assert refused.code == 2 and "cannot run on" in refused.stderr
    finally:
        undebug("kill", name)


def test_a_crash_stop_whose_condition_fails_lets_the_guest_go_on(guest_image: Path) -> None:
    name = "crash-go"
    address = _boot(name, guest_image, "threads=2 run_for=200")
    with SupervisorClient(SessionDir.named(name)) as client:
        client.insert_breakpoint(address, False, "exit_qemu(7)", owner="crash", when=("rdi", 7))
        client.resume()
    deadline = time.monotonic() + 20
    while (status := _status(name))["state"] != "ended":
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["outcome"]["kind"] == "exit" and status["outcome"]["exit_code"] == 0
    undebug("kill", name)


def _code_u32(image: Path, address: int) -> int:
    """The first 4 bytes of the code at ``address``, from the ELF file (not the guest)."""
    text = ElfFile(image).section(".text")
    assert text is not None and text.address <= address < text.address + text.size
    with open(image, "rb") as f:
        f.seek(text.file_offset + address - text.address)
        return int.from_bytes(f.read(4), "little")


def test_a_condition_on_memory_holds_for_one_of_its_values(guest_image: Path) -> None:
    """The condition on the u32 a register points to (Nanos passes its signal number by
    pointer): here rip, at exit_qemu's entry, points to the function's first bytes."""
    name = "crash-mem"
    address = _boot(name, guest_image, "threads=2 run_for=200")
    first = _code_u32(guest_image, address)
    try:
        with SupervisorClient(SessionDir.named(name)) as client:
            bp = client.insert_breakpoint(address, False, "exit_qemu", owner="crash",
                                          when=("rip", first ^ 1),
                                          when_memory=(0, (first ^ 2, first)))
            assert (bp.when_offset, bp.when_values) == (0, (first ^ 2, first))
            client.resume()
        deadline = time.monotonic() + 20
        while (status := _status(name))["outcome"] is None:
            assert time.monotonic() < deadline, status
            time.sleep(0.1)
        assert status["state"] == "paused" and status["last_stop"]["reason"] == "crash"
    finally:
        undebug("kill", name)


def test_a_condition_on_memory_that_fails_lets_the_guest_go_on(guest_image: Path) -> None:
    name = "crash-mem-go"
    address = _boot(name, guest_image, "threads=2 run_for=200")
    first = _code_u32(guest_image, address)
    with SupervisorClient(SessionDir.named(name)) as client:
        client.insert_breakpoint(address, False, "exit_qemu", owner="crash",
                                 when=("rip", first ^ 1), when_memory=(0, (first ^ 2,)))
        client.resume()
    deadline = time.monotonic() + 20
    while (status := _status(name))["state"] != "ended":
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["outcome"]["kind"] == "exit" and status["outcome"]["exit_code"] == 0
    undebug("kill", name)
