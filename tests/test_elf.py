"""The guest ELF index: build-id, symbols, DWARF layouts and lines, agreeing with readelf
and gdb on build/refguest.elf; stripped, truncated and random files; the disk cache."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import undebug.elf
from undebug.elf import ElfFile, MemberNotFound
from undebug.errors import UsageError


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private, empty cache per test: no test sees another's (or the user's) cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("UNDEBUG_CACHE_DIR", str(path))
    yield path


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Records real parses (pyelftools + DWARF walk), as opposed to cache loads."""
    calls: list[object] = []
    real = undebug.elf._parse

    def counting(elf: object, data: bytes) -> dict[str, object]:
        calls.append(elf)
        return real(elf, data)

    monkeypatch.setattr(undebug.elf, "_parse", counting)
    return calls


def _gdb(image: Path, *expressions: str) -> list[str]:
    """What gdb prints for each expression (its own DWARF reader is the reference)."""
    args = ["gdb", "-nx", "-batch"]
    for expression in expressions:
        args += ["-ex", f"print {expression}"]
    out = subprocess.run([*args, str(image)], capture_output=True, text=True, timeout=60).stdout
    return re.findall(r"^\$\d+ = (.*)$", out, re.M)


def _gdb_offset(image: Path, struct: str, path: str) -> int:
    value = _gdb(image, f"&((struct {struct} *)0)->{path}")[0]
    return int(value.split()[-1], 16)


def test_build_id_matches_readelf(guest_image: Path) -> None:
    notes = subprocess.run(["readelf", "-n", str(guest_image)], capture_output=True, text=True,
                           check=True).stdout
    expected = re.search(r"Build ID: ([0-9a-f]+)", notes)
    assert expected is not None
    assert ElfFile(guest_image).build_id == expected.group(1)


def test_build_id_address_is_loaded_and_holds_the_id(guest_image: Path) -> None:
    from elftools.elf.elffile import ELFFile

    elf = ElfFile(guest_image)
    address = elf.build_id_address
    assert address is not None and elf.build_id is not None
    with guest_image.open("rb") as f:
        raw = ELFFile(f)
        for segment in raw.iter_segments():
            if segment["p_type"] == "PT_LOAD" and \
                    segment["p_vaddr"] <= address < segment["p_vaddr"] + segment["p_filesz"]:
                f.seek(segment["p_offset"] + address - segment["p_vaddr"])
                assert f.read(20).hex() == elf.build_id
                break
        else:
            pytest.fail(f"build-id address {address:#x} is in no PT_LOAD")


def test_symbols_functions_and_sections(guest_image: Path) -> None:
    elf = ElfFile(guest_image)
    nap = elf.symbol("nap")
    assert nap is not None and nap.kind == "func" and nap.size > 0
    assert elf.function_at(nap.address + 3) == nap
    assert elf.symbolize(nap.address + 5) == "nap+0x5"
    assert elf.symbol("no_such_symbol") is None
    assert elf.function_at(0x10) is None
    assert nap in elf.symbols() and elf.has_symbols and elf.has_dwarf
    text = elf.section(".text")
    assert text is not None and text.address <= nap.address < text.address + text.size
    assert text.file_offset > 0 and elf.section(".nope") is None
    assert elf.architecture == "x86_64"


@pytest.mark.parametrize(("struct", "members"), [
    ("thread", ["ctx.rip", "ctx.rsp", "ctx.r15", "name", "state", "stack_hi", "next", "arg"]),
    ("percpu", ["current", "apic_id", "ticks", "ist_top"]),
    ("heap_stats", ["total_bytes", "used_bytes", "failed_count"]),
])
def test_struct_layouts_agree_with_gdb(guest_image: Path, struct: str, members: list[str]) -> None:
    layout = ElfFile(guest_image).struct(struct)
    assert layout is not None
    assert [layout.member(m).offset for m in members] == \
        [_gdb_offset(guest_image, struct, m) for m in members]
    assert str(layout.size) == _gdb(guest_image, f"sizeof(struct {struct})")[0]


def test_member_details(guest_image: Path) -> None:
    thread = ElfFile(guest_image).struct("struct thread")
    assert thread is not None
    name, nxt, rip = thread.member("name"), thread.member("next"), thread.member("ctx.rip")
    assert (name.size, name.array_length, name.is_pointer) == (32, 32, False)
    assert (nxt.size, nxt.is_pointer, nxt.type_name) == (8, True, "struct thread *")
    assert (rip.size, rip.type_name, rip.array_length) == (8, "uint64_t", None)
    with pytest.raises(MemberNotFound, match=r"struct thread has no member 'ctx\.rax'"):
        thread.member("ctx.rax")
    with pytest.raises(UsageError, match="struct thread has no member 'nope'"):
        thread.member("nope")


def test_enums_and_variables(guest_image: Path) -> None:
    elf = ElfFile(guest_image)
    assert elf.enum("thread_state") == {0: "THREAD_RUNNING", 1: "THREAD_READY",
                                        2: "THREAD_SLEEPING", 3: "THREAD_BLOCKED",
                                        4: "THREAD_EXITED"}
    assert elf.enum("no_such_enum") is None
    assert elf.variable_type("percpu") == "struct percpu [16]"
    assert elf.variable_type("thread_list") == "struct thread *"
    assert elf.struct("no_such_struct") is None


def test_line_of_a_function_is_in_its_source_file(guest_image: Path) -> None:
    elf = ElfFile(guest_image)
    checksum = elf.symbol("checksum_block")
    assert checksum is not None
    where = elf.line_at(checksum.address)
    assert where is not None and Path(where[0]).name == "main.c"
    info = subprocess.run(["gdb", "-nx", "-batch", "-ex", f"info line *{checksum.address:#x}",
                           str(guest_image)], capture_output=True, text=True, timeout=60).stdout
    assert f"Line {where[1]} of" in info, info
    assert elf.line_at(0x10) is None


def _copy(image: Path, tmp_path: Path, *strip: str) -> Path:
    copy = tmp_path / f"copy{len(strip)}-{'-'.join(strip)}.elf"
    shutil.copy(image, copy)
    if strip:
        subprocess.run(["objcopy", *strip, str(copy)], check=True)
    return copy


def test_an_elf_without_debug_info_keeps_its_symbols(guest_image: Path, tmp_path: Path) -> None:
    elf = ElfFile(_copy(guest_image, tmp_path, "--strip-debug"))
    assert elf.has_symbols and not elf.has_dwarf
    assert elf.symbol("nap") is not None and elf.struct("thread") is None
    assert elf.enum("thread_state") is None and elf.line_at(0x100200) is None
    assert elf.build_id == ElfFile(guest_image).build_id


def test_a_stripped_elf_works_with_what_is_left(guest_image: Path, tmp_path: Path) -> None:
    elf = ElfFile(_copy(guest_image, tmp_path, "--strip-all"))
    assert not elf.has_symbols and not elf.has_dwarf
    assert elf.symbol("nap") is None and elf.symbolize(0x100200) is None
    assert elf.struct("thread") is None and elf.section(".text") is not None
    assert elf.build_id == ElfFile(guest_image).build_id  # same build-id, separate cache entry


@pytest.mark.parametrize("size", [16, 63, 200, 4000, 40000, 100000])
def test_a_truncated_elf_is_a_usage_error(guest_image: Path, tmp_path: Path, size: int) -> None:
    copy = tmp_path / "truncated.elf"
    copy.write_bytes(guest_image.read_bytes()[:size])
    with pytest.raises(UsageError, match=r"truncated\.elf"):
        ElfFile(copy).symbol("nap")


def test_random_bytes_and_a_missing_file_are_usage_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.elf"
    junk.write_bytes(random.Random(1).randbytes(8192))
    with pytest.raises(UsageError, match="not an ELF"):
        _ = ElfFile(junk).build_id
    with pytest.raises(UsageError, match="cannot read"):
        ElfFile(tmp_path / "missing.elf").symbol("x")


def test_corrupt_dwarf_is_a_usage_error(guest_image: Path, tmp_path: Path) -> None:
    from elftools.elf.elffile import ELFFile

    data = bytearray(guest_image.read_bytes())
    with guest_image.open("rb") as f:
        info = ELFFile(f).get_section_by_name(".debug_info")
        start, size = info["sh_offset"], info["sh_size"]
    rng = random.Random(7)
    for seed in range(5):
        corrupt = bytearray(data)
        for _ in range(64):  # garble the unit headers and DIEs
            corrupt[start + rng.randrange(min(size, 4096))] = rng.randrange(256)
        copy = tmp_path / f"corrupt{seed}.elf"
        copy.write_bytes(bytes(corrupt))
        try:
            elf = ElfFile(copy)
            elf.struct("thread")  # a lucky garbling may still parse: fine, no traceback
        except UsageError as exc:
            assert "corrupt" in exc.message


def test_the_second_load_comes_from_the_disk_cache(guest_image: Path, cache: Path,
                                                   parses: list[object]) -> None:
    first = ElfFile(guest_image)
    layout = first.struct("thread")
    assert len(parses) == 1 and not first.loaded_from_cache
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].name.startswith(first.build_id or "?")
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    second = ElfFile(guest_image)
    assert second.struct("thread") == layout and second.symbol("nap") == first.symbol("nap")
    assert second.line_at(0x100200) == first.line_at(0x100200)
    assert len(parses) == 1 and second.loaded_from_cache


@pytest.mark.parametrize("garbage", [b"", b"{not json", b"[1, 2]", b'{"version": 1}',
                                     b'{"version": 1, "symbols": [[1]], "sections": []}'])
def test_a_corrupt_cache_file_is_rebuilt(guest_image: Path, cache: Path, parses: list[object],
                                         garbage: bytes) -> None:
    assert ElfFile(guest_image).build_id
    (path,) = cache.iterdir()
    path.write_bytes(garbage)
    elf = ElfFile(guest_image)
    assert elf.symbol("nap") is not None and not elf.loaded_from_cache
    assert len(parses) == 2
    assert json.loads(path.read_bytes())["build_id"] == elf.build_id  # rewritten


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("UNDEBUG_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert undebug.elf.cache_dir() == tmp_path / "undebug" / "elf"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert undebug.elf.cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "undebug" / "elf"


# -- structs of an ELF the test builds ---------------------------------------------------

SOURCE = r"""
struct empty {};                                /* GNU C: sizeof == 0 */
struct huge { char bytes[1UL << 30]; };         /* 1 GiB */
struct small { unsigned long id; char name[16]; };
struct empty empty_one;
struct huge *huge_pointer;
struct small small_one;
int main(void) { return 0; }
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny program with an empty, a 1 GiB and a normal struct in its DWARF (gcc -g)."""
    folder = tmp_path_factory.mktemp("structs")
    (folder / "structs.c").write_text(SOURCE)
    subprocess.run(["gcc", "-g", "-O0", "-o", str(folder / "structs"), str(folder / "structs.c")],
                   check=True, capture_output=True)
    return folder / "structs"


def test_a_missing_member_is_a_usage_error_naming_struct_and_member(built: Path) -> None:
    from undebug.os.provider import StructValue

    small = ElfFile(built).struct("small")
    assert small is not None and small.size == 24  # 8 + 16, no padding
    value = StructValue(small, 0x1000, bytes(range(24)))
    assert value.int("id") == int.from_bytes(bytes(range(8)), "little")
    with pytest.raises(UsageError, match=r"struct small has no member 'next'") as caught:
        value.int("next")
    assert caught.value.hint and "--elf" in caught.value.hint


@pytest.mark.parametrize(("struct", "size"), [("empty", 0), ("huge", 1 << 30)])
def test_impossible_struct_sizes_are_refused(built: Path, struct: str, size: int) -> None:
    with pytest.raises(UsageError, match=rf"struct {struct} .* impossible size .*: {size} bytes"):
        ElfFile(built).struct(struct)


def test_shared_elf_is_one_per_file_version_and_bounded(guest_image: Path, tmp_path: Path,
                                                        parses: list[object]) -> None:
    """One parsed ElfFile per unchanged file (device, inode, size, mtime); a file
    replaced at the same path is parsed again; a corrupt one raises and is not kept;
    at most SHARED_KEPT are kept, the least recently used dropped first."""
    from undebug.elf import SHARED_KEPT, shared_elf

    path = tmp_path / "guest.elf"
    shutil.copy(guest_image, path)
    first = shared_elf(path)
    assert shared_elf(path) is first and first.has_dwarf and len(parses) == 1
    os.replace(_copy(guest_image, tmp_path, "--strip-debug"), path)
    replaced = shared_elf(path)
    assert replaced is not first and not replaced.has_dwarf
    path.write_bytes(guest_image.read_bytes()[:4000])
    with pytest.raises(UsageError, match=r"guest\.elf"):
        shared_elf(path)
    with pytest.raises(UsageError, match=r"guest\.elf"):
        shared_elf(path)  # not kept: raised again, not an unloaded ElfFile
    kept = [shared_elf(guest_image)]
    for i in range(SHARED_KEPT):
        other = tmp_path / f"other{i}.elf"
        shutil.copy(guest_image, other)
        kept.append(shared_elf(other))
    assert shared_elf(kept[-1].path) is kept[-1] and shared_elf(kept[1].path) is kept[1]
    assert shared_elf(guest_image) is not kept[0]  # the oldest went
