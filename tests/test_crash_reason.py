"""A crash in words (``provider.crash()``), on reference guests that really crash in QEMU.

Each guest is booted with one planted crash (guest-stubs/refguest/README.md, in a worker:
``worker_main → handle_request → crash_<kind>``) and left paused by pvpanic; the reason is
computed from its memory and vCPU through the Target and the provider. Expected values
come from the guest's own console (``EXCEPTION vector=.. error=.. rip=.. cr2=..
thread=NAME``), binutils' addr2line on that rip, the guest's source, and a ``bt --all``
of the same paused guest (which thread has ``crash_<kind>`` on its stack).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, undebug, wait_for_console
from undebug.os.crash import Crash

MAIN_C = ROOT / "guest-stubs" / "refguest" / "main.c"


@dataclass
class Crashed:
    crash: Crash | None
    console: str
    image: Path
    faulting_thread: str  # the thread whose backtrace holds crash_<kind>


def _crashed(name: str, image: Path, kind: str) -> Iterator[Crashed]:
    import undebug as api

    started = undebug("run", "-d", "--name", name, "--smp", "2", "--append",
                      f"threads=3 crash={kind} crash_after=200", str(image))
    assert started.code == 0, started.stderr
    try:
        log = wait_for_console(name, "PANIC:")
        bt = undebug("bt", name, "--all", "--json")
        assert bt.code == 0, bt.stderr
        holders = [t["thread"]["name"] for t in bt.json()["backtraces"]
                   if f"crash_{kind.replace('-', '_')}" in [f["function"] for f in t["frames"]]]
        assert len(holders) == 1, bt.stdout
        with api.attach(name) as guest:
            yield Crashed(guest.provider.crash(), log, image, holders[0])
    finally:
        undebug("kill", name)


def _line_of(image: Path, address: str) -> str:
    out = subprocess.run(["addr2line", "-e", str(image), address], capture_output=True,
                         text=True, check=True).stdout
    return Path(out.split()[0]).name  # "main.c:123" (a discriminator may follow)


@pytest.fixture(scope="module")
def null_crash(guest_image: Path) -> Iterator[Crashed]:
    yield from _crashed("why-null", guest_image, "null")


@pytest.fixture(scope="module")
def nocfi_crash(nocfi_image: Path) -> Iterator[Crashed]:
    yield from _crashed("why-nocfi", nocfi_image, "null")


@pytest.fixture(scope="module")
def panic_crash(guest_image: Path) -> Iterator[Crashed]:
    yield from _crashed("why-panic", guest_image, "panic")


@pytest.fixture(scope="module")
def div0_crash(guest_image: Path) -> Iterator[Crashed]:
    yield from _crashed("why-div0", guest_image, "div0")


def _exception(crashed: Crashed) -> dict[str, str]:
    line = re.search(r"EXCEPTION vector=(\d+) \(#\w+\) error=(0x[0-9a-f]+) rip=(0x[0-9a-f]+) "
                     r"cr2=(0x[0-9a-f]+) cpu=(\d+) thread=(\S+)", crashed.console)
    assert line is not None, crashed.console
    return dict(zip(("vector", "error", "rip", "cr2", "cpu", "thread"), line.groups(),
                    strict=True))


@pytest.mark.parametrize("which", ["null_crash", "nocfi_crash"])
def test_a_null_store_is_a_page_fault_writing_0_in_the_function_and_thread(
        which: str, request: pytest.FixtureRequest) -> None:
    crashed: Crashed = request.getfixturevalue(which)
    seen = _exception(crashed)
    assert crashed.crash is not None
    where = _line_of(crashed.image, seen["rip"])
    assert seen["error"] == "0x2" and int(seen["cr2"], 16) == 0  # a write (SDM: W/R bit)
    assert crashed.crash.reason == \
        f"page fault writing 0x0 in crash_null ({where}), thread {seen['thread']}"
    assert crashed.crash.thread_name == seen["thread"] == crashed.faulting_thread
    assert (crashed.crash.vector, crashed.crash.error_code, crashed.crash.fault_address,
            crashed.crash.access, crashed.crash.cpu) == (14, 2, 0, "write", int(seen["cpu"]))


def test_a_divide_error_is_named_in_words(div0_crash: Crashed) -> None:
    seen = _exception(div0_crash)
    assert div0_crash.crash is not None and seen["vector"] == "0"
    assert div0_crash.crash.reason == f"divide error in crash_div0 " \
        f"({_line_of(div0_crash.image, seen['rip'])}), thread {seen['thread']}"
    assert div0_crash.crash.fault_address is None and div0_crash.crash.access is None


def test_a_panic_names_the_function_that_called_panic(panic_crash: Crashed) -> None:
    source = MAIN_C.read_text().splitlines()
    line = next(i for i, text in enumerate(source, 1) if 'panic("planted panic' in text)
    assert panic_crash.crash is not None
    assert panic_crash.crash.reason == \
        f"panic in crash_panic (main.c:{line}), thread {panic_crash.faulting_thread}"
    assert panic_crash.crash.vector is None and panic_crash.crash.function == "crash_panic"
