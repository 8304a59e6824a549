"""The debug ELF a session remembers: ``IMAGE.dbg`` beside a stripped image (Unikraft's
layout), ``--debug-elf``, and the check that an ELF without a GNU build-id is the one the
guest runs, by its loaded text. The reference guest is linked without a build-id for this
(refguest-nobid.elf) and stripped with binutils, as Unikraft's build strips its image."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import undebug, wait_for_console
from undebug.elf import ElfFile
from undebug.session.client import SupervisorClient
from undebug.session.store import SessionDir


@pytest.fixture(scope="module")
def stripped(guest_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stripped boot image with its symbols in IMAGE.dbg beside it."""
    nobid = guest_image.with_name("refguest-nobid.elf")
    assert ElfFile(nobid).build_id is None
    where = tmp_path_factory.mktemp("uk-layout")
    image = where / "app_qemu-x86_64"
    subprocess.run(["objcopy", "--strip-all", str(nobid), str(image)], check=True)
    shutil.copy(nobid, where / "app_qemu-x86_64.dbg")
    assert not ElfFile(image).has_symbols
    return image


def _other_build(source: Path, to: Path) -> Path:
    """A copy whose text differs in every 16th byte (6%): as far from the guest's bytes as
    another build of it is (code moves), unlike the few an OS patches as it runs."""
    text = ElfFile(source).section(".text")
    assert text is not None
    data = bytearray(source.read_bytes())
    for at in range(text.file_offset, text.file_offset + text.size, 16):
        data[at] ^= 0xFF
    to.write_bytes(bytes(data))
    return to


@pytest.fixture
def guest(stripped: Path) -> Iterator[str]:
    result = undebug("run", "-d", "--name", "dbg", str(stripped))
    assert result.code == 0, result.stderr
    wait_for_console("dbg", "refguest: ready")
    yield "dbg"
    undebug("kill", "dbg")


def test_the_debug_elf_beside_the_image_is_remembered(guest: str, stripped: Path) -> None:
    status = undebug("ps", "--json").json()
    mine = next(g for g in status["guests"] if g["name"] == guest)
    assert mine["elf"] == str(stripped.with_name(stripped.name + ".dbg"))
    threads = undebug("threads", guest, "--json")  # no --elf: the session knows it
    assert threads.code == 0, threads.stderr
    assert {"main", "idle0"} <= {t["name"] for t in threads.json()["threads"]}
    assert not any("build-id" in w or "cannot check" in w for w in threads.json()["warnings"])


def test_the_few_bytes_an_os_patches_in_its_text_are_no_mismatch(guest: str) -> None:
    """Unikraft relocates itself and patches its boot trampoline (102 of 151,687 bytes of
    text in a 0.17 image); QEMU plants an int3 for a software breakpoint under KVM. The
    test writes such bytes into the guest's text: the ELF still matches."""
    address = undebug("sym", guest, "checksum_block", "--json").json()["address"]
    with SupervisorClient(SessionDir.named(guest)) as client:
        original = client.read_memory(address, 16)
        client.write_memory(address, b"\xcc" * 16)
    try:
        accepted = undebug("threads", guest)
        assert accepted.code == 0, accepted.stderr
    finally:
        with SupervisorClient(SessionDir.named(guest)) as client:
            client.write_memory(address, original)


def test_a_debug_elf_of_another_build_is_refused_at_run(stripped: Path, tmp_path: Path) -> None:
    other = _other_build(stripped.with_name(stripped.name + ".dbg"), tmp_path / "other.dbg")
    result = undebug("run", "-d", "--name", "wrong", "--debug-elf", str(other), str(stripped))
    assert result.code == 2
    assert "not the ELF the guest runs" in result.stderr and str(other) in result.stderr
    assert "wrong" not in undebug("ps").stdout  # refused: nothing left running

    forced = undebug("run", "-d", "--name", "wrong", "--force", "--debug-elf", str(other),
                     str(stripped), "--json")
    try:
        assert forced.code == 0, forced.stderr
        assert any("not the ELF the guest runs" in w and "(--force)" in w
                   for w in forced.json()["warnings"])
    finally:
        undebug("kill", "wrong")


@pytest.mark.parametrize("given, message", [
    ("missing.dbg", "cannot read --debug-elf"),
    ("not-an-elf.dbg", "is not an ELF file"),
    ("app.dbg@0x1000", "cannot read --debug-elf"),
    ("not-an-elf.dbg@0x1000", "is not an ELF file"),
])
def test_bad_debug_elfs_are_usage_errors(stripped: Path, tmp_path: Path, given: str,
                                         message: str) -> None:
    (tmp_path / "not-an-elf.dbg").write_text("hello\n")
    result = undebug("run", "-d", "--debug-elf", str(tmp_path / given), str(stripped))
    assert result.code == 2 and message in result.stderr, result.stderr


def test_two_kernel_debug_elfs_are_refused(stripped: Path) -> None:
    """Both are the reference guest's kernel (its provider recognises them): only one
    kernel per guest; the other --debug-elf files must be programs."""
    dbg = str(stripped.with_name(stripped.name + ".dbg"))
    result = undebug("run", "-d", "--debug-elf", dbg, "--debug-elf", dbg, str(stripped))
    assert result.code == 2 and "more than one kernel ELF" in result.stderr
