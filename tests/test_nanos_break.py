"""Breakpoints and watchpoints on a real Nanos program's symbols (KASLR on): the static
program's at its link address, a PIE's at its load bias, libc's at its library's. Nanos is
one address space (kernel and program share the page tables), so QEMU's gdbstub (TCG)
stops at a user address like at a kernel one.

The images are those of tests/test_nanos_image.py and tests/test_nanos_pie.py (built
outside the repository, never committed: /work/nanos/BUILD.md): threads worker-0..2 loop
in worker_main -> do_work -> nanosleep (-> clock_nanosleep in glibc). The expected
address is binutils' nm plus a load bias this test finds on its own: the return address
on the stack at the stop (read with regs and mem) less the address after the call in the
file's code (objdump), never an address undebug computed."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import real_image, undebug
from tests.test_nanos_image import KERNEL_BASE, _nm
from tests.test_nanos_pie import LIBC, PIE_LOW, PIE_RANGE, _boot, _debug_file


def _return_sites(elf: Path, callee: int) -> set[int]:
    """Link addresses of the instructions after each ``call`` of ``callee`` in ``elf``."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(elf)],
                         capture_output=True, text=True, check=True).stdout
    sites, after_call = set(), False
    for line in out.splitlines():
        found = re.match(r"\s*([0-9a-f]+):\s+(\S+)\s*(\S*)", line)
        if found is None:
            continue
        if after_call:
            sites.add(int(found[1], 16))
        after_call = found[2] == "call" and found[3] == f"{callee:x}"
    assert sites, f"no call of {callee:#x} in {elf}"
    return sites


def _eval_number(name: str, expression: str) -> int:
    """gdb's value of a C expression through ``undebug eval``."""
    result = undebug("eval", name, expression, "--json")
    assert result.code == 0, result.stderr
    return int(result.json()["value"])


def _wait(name: str) -> dict[str, Any]:
    result = undebug("wait", name, "--timeout", "90", "--json")
    assert result.code == 0, result.stdout + result.stderr
    return result.json()["stop"]  # type: ignore[no-any-return]


def _bias_at_stop(name: str, stop: dict[str, Any], elf: Path, callee: int) -> int:
    """The load bias of ``elf``, from the return address on the stack at a stop on the
    first instruction of ``callee`` (before it pushes anything)."""
    regs = undebug("regs", name, "--cpu", str(stop["cpu"]), "--json")
    assert regs.code == 0, regs.stderr
    rsp = regs.json()["registers"]["rsp"]
    mem = undebug("mem", name, hex(rsp), "8", "--json")
    assert mem.code == 0, mem.stderr
    back = int.from_bytes(bytes.fromhex(mem.json()["hex"]), "little")
    biases = {back - site for site in _return_sites(elf, callee) if (back - site) % 4096 == 0}
    assert len(biases) == 1, (hex(back), biases)
    return biases.pop()


def _break_and_go_on(name: str, location: str, function: str, elf: Path,
                     callee: int) -> tuple[dict[str, Any], dict[str, Any], int]:
    """A breakpoint at ``location`` (``callee`` in ``elf``): hit in a worker thread,
    named; cont goes on to the next hit; then deleted and the guest resumed.
    (breakpoint, first stop, ``elf``'s bias found at that stop)."""
    made = undebug("break", name, location, "--json")
    assert made.code == 0, made.stderr
    bp = made.json()["breakpoint"]
    try:
        stop = _wait(name)
        assert (stop["reason"], stop["breakpoint"], stop["pc"]) == \
            ("breakpoint", bp["id"], bp["address"]), stop
        assert stop["function"] == function, stop
        assert stop["thread"]["name"].startswith("worker-"), stop
        bias = _bias_at_stop(name, stop, elf, callee)
        text = undebug("wait", name, "--timeout", "10")  # stopped now: at once, in words
        assert f"in thread {stop['thread']['id']} {stop['thread']['name']}: {function}" \
            in text.stdout, text.stdout
        assert undebug("cont", name).code == 0
        again = _wait(name)
        assert (again["breakpoint"], again["pc"]) == (bp["id"], bp["address"]), again
        return bp, stop, bias
    finally:
        undebug("delete", name, str(bp["id"]))
        undebug("cont", name)


@pytest.fixture(scope="module")
def static() -> Iterator[Path]:
    yield from _boot("nanosbrk", "UNDEBUG_NANOS_DISK", "UNDEBUG_NANOS_PROGRAM")


def test_a_breakpoint_in_the_static_program_stops_a_worker(static: Path) -> None:
    symbols = _nm(static)
    bp, stop, bias = _break_and_go_on("nanosbrk", "do_work", "do_work", static,
                                      symbols["do_work"])
    assert bp["address"] == symbols["do_work"] and bias == 0  # static: its link address
    assert stop["file"] == "workers.c", stop
    # eval: gdb gets the program's symbols too
    assert _eval_number("nanosbrk", "(unsigned long)&counters") == symbols["counters"]


def test_a_watchpoint_on_the_program_s_variable_fires_in_a_worker(static: Path) -> None:
    symbols = _nm(static)
    made = undebug("watch", "nanosbrk", "counters", "--json")
    assert made.code == 0, made.stderr
    wp = made.json()["watchpoint"]
    try:
        assert wp["address"] == symbols["counters"] and wp["length"] == 3 * 8, wp
        stop = _wait("nanosbrk")
        assert stop["watch"] == "write" and stop["thread"]["name"].startswith("worker-"), stop
        assert stop["function"].startswith("do_work+"), stop  # after the store
        assert symbols["counters"] <= stop["data_address"] < symbols["counters"] + 24, stop
    finally:
        undebug("delete", "nanosbrk", str(wp["id"]))
        undebug("cont", "nanosbrk")


def test_an_unknown_symbol_is_refused_naming_what_was_searched(static: Path) -> None:
    for command in ("break", "watch"):
        result = undebug(command, "nanosbrk", "no_such_function")
        assert result.code == 2, result.stderr
        assert "no symbol 'no_such_function'" in result.stderr, result.stderr
        assert str(real_image("UNDEBUG_NANOS_KERNEL_ELF")) in result.stderr, result.stderr
        assert str(static) in result.stderr, result.stderr


def test_a_breakpoint_in_a_pie_is_at_its_load_bias() -> None:
    for pie in _boot("nanospiebrk", "UNDEBUG_NANOS_PIE_DISK", "UNDEBUG_NANOS_PIE_PROGRAM"):
        symbols = _nm(pie)
        bp, _, bias = _break_and_go_on("nanospiebrk", "do_work", "do_work", pie,
                                       symbols["do_work"])
        assert PIE_LOW <= bias < PIE_LOW + PIE_RANGE, hex(bias)
        assert bp["address"] == symbols["do_work"] + bias
        assert _eval_number("nanospiebrk", "(unsigned long)&do_work") == bp["address"]


def test_a_breakpoint_in_libc_is_at_the_library_s_bias_and_named_as_gdb_does() -> None:
    """libc.so.6:clock_nanosleep (the kernel has a clock_nanosleep too: its system call)
    at libc's l_addr, the stop named clock_nanosleep as gdb names it (the symbol table
    has clock_nanosleep@@GLIBC_2.17); the plain name is the kernel's, with a warning
    naming libc's."""
    libc = _nm(_debug_file(LIBC))
    kernel = _nm(real_image("UNDEBUG_NANOS_KERNEL_ELF"))
    for dyn in _boot("nanosdynbrk", "UNDEBUG_NANOS_DYNAMIC_DISK",
                     "UNDEBUG_NANOS_DYNAMIC_PROGRAM"):
        at = libc["clock_nanosleep@@GLIBC_2.17"]
        bp, _, bias = _break_and_go_on("nanosdynbrk", "libc.so.6:clock_nanosleep",
                                       "clock_nanosleep", LIBC, at)
        assert bias % 4096 == 0 and bias > PIE_LOW + PIE_RANGE, hex(bias)
        assert bp["address"] == at + bias
        assert _eval_number("nanosdynbrk", "(unsigned long)&start_thread") == \
            libc["start_thread"] + bias
        for spelled in ("clock_nanosleep@@GLIBC_2.17", "clock_nanosleep@GLIBC_2.2.5",
                        "libc.so.6:clock_nanosleep"):
            sym = undebug("sym", "nanosdynbrk", spelled, "--json")
            assert sym.code == 0, sym.stderr
            assert (sym.json()["address"], sym.json()["symbol"], sym.json()["module"]) == \
                (at + bias, "clock_nanosleep", "libc.so.6"), spelled
        plain = undebug("mem", "nanosdynbrk", "clock_nanosleep", "8", "--json")
        assert plain.code == 0, plain.stderr
        slide = plain.json()["address"] - kernel["clock_nanosleep"]
        assert slide % 4096 == 0 and plain.json()["address"] >= KERNEL_BASE, plain.stdout
        assert any("libc.so.6:clock_nanosleep" in w for w in plain.json()["warnings"]), \
            plain.json()["warnings"]
        program = _nm(dyn)
        bp, _, bias = _break_and_go_on("nanosdynbrk", "do_work", "do_work", dyn,
                                       program["do_work"])
        assert bp["address"] == program["do_work"] + bias
        missing = undebug("break", "nanosdynbrk", "no_such_function")
        assert missing.code == 2 and "libc.so.6" in missing.stderr, missing.stderr
