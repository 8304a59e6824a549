"""The one program-header reader: agrees with readelf on ELFs gcc builds here (64- and
32-bit), and turns hostile headers into ElfHeaderError, never a struct.error."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from undebug.elf_headers import PT_LOAD, PT_NOTE, ElfHeaderError, notes, program_headers

READELF = shutil.which("readelf") or "readelf"  # binutils: installed with gcc by make setup


def _readelf_loads(path: Path) -> list[tuple[int, int, int, int]]:
    """(offset, vaddr, filesz, memsz) of each LOAD, as readelf -lW prints them."""
    out = subprocess.run([str(READELF), "-lW", str(path)], capture_output=True, text=True,
                         check=True).stdout
    rows = re.findall(r"^\s+LOAD\s+(0x\w+)\s+(0x\w+)\s+0x\w+\s+(0x\w+)\s+(0x\w+)", out, re.M)
    return [tuple(int(v, 16) for v in row) for row in rows]  # type: ignore[misc]


def _build_32(tmp_path: Path) -> Path:
    """A static 32-bit ELF from binutils alone (no 32-bit libc or gcc multilib needed)."""
    source, obj, out = tmp_path / "prog.s", tmp_path / "prog.o", tmp_path / "prog32"
    source.write_text(".globl _start\n_start: hlt\n.data\ncounter: .long 7\n")
    subprocess.run(["as", "--32", "-o", str(obj), str(source)], check=True, capture_output=True)
    subprocess.run(["ld", "-m", "elf_i386", "-o", str(out), str(obj)], check=True,
                   capture_output=True)
    return out


def test_loads_agree_with_readelf_on_the_reference_guest(guest_image: Path) -> None:
    segments = program_headers(guest_image.read_bytes())
    loads = [(s.offset, s.vaddr, s.filesz, s.memsz) for s in segments if s.type == PT_LOAD]
    assert loads == _readelf_loads(guest_image)
    assert any(s.type == PT_NOTE for s in segments)


def test_build_id_note_agrees_with_readelf(guest_image: Path) -> None:
    text = subprocess.run([str(READELF), "-n", str(guest_image)], capture_output=True,
                          text=True, check=True).stdout
    expected = re.search(r"Build ID: (\w+)", text)
    assert expected is not None
    gnu = [n for n in notes(guest_image.read_bytes()) if n.name == b"GNU" and n.type == 3]
    assert [n.desc.hex() for n in gnu] == [expected.group(1)]


def test_a_32_bit_elf_is_read_too(tmp_path: Path) -> None:
    image = _build_32(tmp_path)
    loads = [(s.offset, s.vaddr, s.filesz, s.memsz) for s in program_headers(image.read_bytes())
             if s.type == PT_LOAD]
    assert loads == _readelf_loads(image)


@pytest.mark.parametrize(("patch", "message"), [
    (lambda d: d[:0x20] + struct.pack("<Q", len(d)) + d[0x28:], "past the end of the file"),
    (lambda d: d[:0x36] + struct.pack("<H", 8) + d[0x38:], "entries of 8 bytes"),
    (lambda d: d[:4] + b"\x09" + d[5:], "bad ELF class 9"),
    (lambda d: d[:0x30], "not an ELF file"),
])
def test_hostile_headers_are_named_errors(guest_image: Path, patch, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ElfHeaderError, match=message):
        notes(patch(guest_image.read_bytes()))


def test_a_note_running_past_its_segment_ends_the_list(guest_image: Path) -> None:
    data = bytearray(guest_image.read_bytes())
    note = next(s for s in program_headers(bytes(data)) if s.type == PT_NOTE)
    struct.pack_into("<I", data, note.offset + 4, 0xFFFFFFF0)  # descsz: far past the end
    assert notes(bytes(data), [note]) == []


def test_note_sections_agree_with_readelf_and_survive_a_hostile_section_table(
        guest_image: Path) -> None:
    """SHT_NOTE sections (Unikraft's images have their build-id note in a PT_LOAD with no
    PT_NOTE): the build-id agrees with readelf; a section table cut short, pointing past
    the file or with tiny entries yields no notes, never an exception."""
    from undebug.elf_headers import note_sections

    data = guest_image.read_bytes()
    text = subprocess.run([str(READELF), "-n", str(guest_image)], capture_output=True,
                          text=True, check=True).stdout
    expected = re.search(r"Build ID: (\w+)", text)
    assert expected is not None
    gnu = [n for n in note_sections(data) if n.name == b"GNU" and n.type == 3]
    assert [n.desc.hex() for n in gnu] == [expected.group(1)]
    shoff, = struct.unpack_from("<Q", data, 0x28)
    assert note_sections(data[: shoff + 10]) == []
    assert note_sections(data[:0x3C]) == []
    past = bytearray(data)
    struct.pack_into("<Q", past, 0x28, len(data) + 4096)
    assert note_sections(bytes(past)) == []
    tiny = bytearray(data)
    struct.pack_into("<H", tiny, 0x3A, 8)
    assert note_sections(bytes(tiny)) == []
