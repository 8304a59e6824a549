"""`bt` through exception frames, on reference guests that really crash in QEMU (TCG).

The #PF handler runs on its own IST stack; the backtrace must go from the handler through
an exception frame into the faulting function and its planted callers
(guest-stubs/refguest/README.md: ``worker_main → handle_request → crash_<kind>``, started
by ``thread_trampoline → thread_entry``). refguest.elf's trap entry has CFI
(``.cfi_signal_frame``); refguest-nocfi.elf is the same guest without it, so there the
unwinder must find the saved registers through the OS provider's trap-frame hook
(``struct irq_frame``). Expected values come from the guest's own console line
``EXCEPTION vector=14 (#PF) error=0x.. rip=0x.. cr2=0x.. cpu=N thread=NAME``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import undebug, wait_for_console
from tests.test_schema import check
from undebug.elf import ElfFile

CALLERS = ["handle_request", "worker_main", "thread_entry", "thread_trampoline"]
PAGE = 4096


@dataclass
class Crash:
    name: str
    kind: str
    console: dict[str, str]  # the guest's own EXCEPTION line, parsed
    trace: dict  # bt --json of the faulting thread
    warnings: list[str]
    image: Path


def _crash(name: str, image: Path, kind: str) -> Iterator[Crash]:
    started = undebug("run", "-d", "--name", name, "--smp", "1", "--append",
                      f"threads=2 crash={kind} crash_after=300", str(image))
    assert started.code == 0, started.stderr
    try:
        log = wait_for_console(name, "PANIC:")
        line = re.search(r"EXCEPTION vector=(\d+) \((#\w+)\) error=(0x[0-9a-f]+) "
                         r"rip=(0x[0-9a-f]+) cr2=(0x[0-9a-f]+) cpu=\d+ thread=(\S+)", log)
        assert line is not None, log
        console = dict(zip(("vector", "name", "error", "rip", "cr2", "thread"), line.groups(),
                           strict=True))
        result = undebug("bt", name, "--all", "--json", "--max-frames", "500")
        assert result.code == 0, result.stderr
        doc = result.json()
        check("bt", doc)  # the exception frame is in the documented --json schema
        faulting = [t for t in doc["backtraces"] if t["thread"]["name"] == console["thread"]]
        assert len(faulting) == 1, doc
        yield Crash(name, kind, console, faulting[0], doc["warnings"], image)
    finally:
        undebug("kill", name)


@pytest.fixture(scope="module")
def null_crash(guest_image: Path) -> Iterator[Crash]:
    yield from _crash("pf-null", guest_image, "null")


@pytest.fixture(scope="module")
def overflow_crash(guest_image: Path) -> Iterator[Crash]:
    yield from _crash("pf-overflow", guest_image, "stack-overflow")


@pytest.fixture(scope="module")
def nocfi_crash(nocfi_image: Path) -> Iterator[Crash]:
    yield from _crash("pf-nocfi", nocfi_image, "null")


def _split(crash: Crash) -> tuple[list[dict], dict, list[dict]]:
    """The frames inside the handler, the exception frame, the interrupted frames."""
    frames = crash.trace["frames"]
    markers = [i for i, f in enumerate(frames) if f["method"] == "exception"]
    assert len(markers) == 1, frames
    return frames[: markers[0]], frames[markers[0]], frames[markers[0] + 1 :]


def _names(frames: list[dict]) -> list[str]:
    return [f["function"] for f in frames]


def _check_marker(crash: Crash, marker: dict, cr2: int) -> None:
    assert crash.console["vector"] == "14" and crash.console["name"] == "#PF"
    assert marker["function"] is None
    assert marker["exception"] == {"vector": 14, "name": "#PF",
                                   "error_code": int(crash.console["error"], 16), "cr2": cr2}


def test_a_null_store_unwinds_from_the_handler_into_the_planted_chain(null_crash: Crash) -> None:
    handler, marker, interrupted = _split(null_crash)
    assert "isr_dispatch" in _names(handler)
    _check_marker(null_crash, marker, 0)
    assert int(null_crash.console["cr2"], 16) == 0
    assert _names(interrupted) == ["crash_null", *CALLERS]
    assert interrupted[0]["pc"] == int(null_crash.console["rip"], 16)  # exact, not pc-1
    assert interrupted[0]["file"] == "main.c" and interrupted[0]["method"] == "cfi"
    assert null_crash.trace["complete"]
    assert not [w for w in null_crash.warnings if "stack" in w], null_crash.warnings


def test_the_text_backtrace_shows_the_exception_frame(null_crash: Crash) -> None:
    out = undebug("bt", null_crash.name).stdout
    lines = out.splitlines()
    marker = next(i for i, line in enumerate(lines) if "<exception" in line)
    assert lines[marker].split(maxsplit=1)[1] == "<exception #PF cr2=0x0>"
    assert " in crash_null" in lines[marker + 1]
    assert "incomplete" not in out


def test_a_stack_overflow_unwinds_off_the_exception_stack(overflow_crash: Crash) -> None:
    handler, marker, interrupted = _split(overflow_crash)
    low, high = overflow_crash.trace["thread"]["stack"]
    cr2 = int(overflow_crash.console["cr2"], 16)
    assert low - PAGE <= cr2 < low  # in the guard page right below the thread's stack
    _check_marker(overflow_crash, marker, cr2)
    assert "isr_dispatch" in _names(handler)
    names = _names(interrupted)
    depth = names.index("crash_stack_overflow")
    assert depth >= 1 and set(names[:depth]) == {"recurse_forever"}, names
    assert names[depth + 1 :] == CALLERS
    rip = int(overflow_crash.console["rip"], 16)
    assert interrupted[0]["pc"] == rip
    # The line of the faulting instruction itself (a return address would be looked up at
    # pc-1, which here is on an earlier line).
    assert (interrupted[0]["file"], interrupted[0]["line"]) == \
        ElfFile(overflow_crash.image).line_at(rip)
    assert all(low < f["cfa"] <= high for f in interrupted[:-1])  # back on the thread's stack
    assert overflow_crash.trace["complete"]
    assert not [w for w in overflow_crash.warnings if "stack" in w], overflow_crash.warnings


def test_without_cfi_the_os_trap_frame_leads_to_the_same_chain(nocfi_crash: Crash) -> None:
    handler, marker, interrupted = _split(nocfi_crash)
    assert "isr_dispatch" in _names(handler)
    _check_marker(nocfi_crash, marker, 0)
    assert _names(interrupted) == ["crash_null", *CALLERS]
    assert interrupted[0]["method"] == "trap-frame"  # struct irq_frame, not CFI
    assert interrupted[0]["pc"] == int(nocfi_crash.console["rip"], 16)
    assert nocfi_crash.trace["complete"]


def test_the_python_api_unwinds_through_the_same_exception_frame(null_crash: Crash) -> None:
    import undebug

    with undebug.attach(null_crash.name) as guest:
        trace = guest.backtrace(null_crash.trace["thread"]["id"])
    marker = next(f for f in trace.frames if f.method == "exception")
    assert marker.trap is not None and (marker.trap.vector, marker.trap.cr2) == (14, 0)
    assert [f.pc for f in trace.frames] == [f["pc"] for f in null_crash.trace["frames"]]
