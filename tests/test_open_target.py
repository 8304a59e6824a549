"""``open_target`` and ``guest_elf``: what the user typed becomes a Target (or just the
ELF) in one place; symbol look-ups need no live guest at all."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import undebug
from undebug.elf import ElfFile


def _wait_ended(name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        guests = undebug("ps", "--json").json()["guests"]
        if next(g for g in guests if g["name"] == name)["state"] == "ended":
            return
        time.sleep(0.2)
    raise AssertionError(f"{name} did not end within {timeout}s")


def test_sym_reads_only_the_elf_so_it_works_on_an_ended_guest(guest_image: Path) -> None:
    name = "sym-ended"
    assert undebug("run", "-d", "--name", name, "--append", "run_for=100",
                   str(guest_image)).code == 0
    try:
        _wait_ended(name)
        expected = ElfFile(guest_image).symbol("checksum_block")
        assert expected is not None
        doc = undebug("sym", name, "checksum_block", "--json")
        assert doc.code == 0, doc.stderr
        assert doc.json()["address"] == expected.address
        # Reading memory needs the guest, and says it has ended.
        mem = undebug("mem", name, "checksum_block", "8")
        assert mem.code == 2 and "has ended" in mem.stderr
    finally:
        undebug("kill", name)


def test_sym_of_an_unknown_guest_names_it() -> None:
    result = undebug("sym", "no-such-guest", "main")
    assert result.code == 2
    assert "no guest named 'no-such-guest'" in result.stderr
