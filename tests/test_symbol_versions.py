"""A library's versioned symbols (``clock_nanosleep@@GLIBC_2.17``) named as gdb names
them: without the version, and of the aliases at one address the one gdb picks. Checked
against the host's real libc and its separate debug file (libc6-dbg), with gdb's own
``info symbol`` on the same file as the expected answer."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.test_nanos_image import _nm
from tests.test_nanos_pie import LIBC, _debug_file
from undebug.elf import ElfFile


def _versioned(debug: Path) -> dict[str, tuple[str, int]]:
    """Versioned name -> (nm's type letter, link address), by binutils' nm."""
    out = subprocess.run(["nm", str(debug)], capture_output=True, text=True, check=True).stdout
    return {parts[2]: (parts[1], int(parts[0], 16)) for line in out.splitlines()
            if len(parts := line.split()) == 3 and "@" in parts[2]}


def test_every_versioned_function_is_named_as_gdb_names_it() -> None:
    debug = _debug_file(LIBC)
    addresses = sorted({a for kind, a in _versioned(debug).values() if kind in "TtWw"})
    assert len(addresses) > 100, len(addresses)  # glibc has hundreds
    commands = [arg for a in addresses for arg in ("-ex", f"info symbol {a:#x}")]
    gdb = subprocess.run(["gdb", "-batch", "-nx", *commands, str(LIBC)], capture_output=True,
                         text=True, timeout=300).stdout.splitlines()
    assert len(gdb) == len(addresses), gdb[:5]
    elf = ElfFile(debug, LIBC)
    named = {a: elf.symbolize(a) for a in addresses}
    expected = {a: line.split(" in section ")[0] for a, line in zip(addresses, gdb, strict=True)}
    assert named == expected
    assert named[_nm(debug)["clock_nanosleep@@GLIBC_2.17"]] == "clock_nanosleep"


def test_a_name_is_found_with_or_without_its_version() -> None:
    debug = _debug_file(LIBC)
    symbols = _versioned(debug)
    elf = ElfFile(debug, LIBC)
    for spelled in ("clock_nanosleep", "clock_nanosleep@@GLIBC_2.17",
                    "clock_nanosleep@GLIBC_2.2.5"):
        found = elf.symbol(spelled)
        assert found is not None, spelled
        assert (found.name, found.address) == \
            ("clock_nanosleep", symbols["clock_nanosleep@@GLIBC_2.17"][1])
    # two versions of a function at two addresses (glibc has several: realpath, ...): the
    # plain name is the default (@@) one, as the linker binds a new program; an old one
    # by its full name (an indirect function's default, nm's "i", is not one undebug
    # takes for a function)
    defaults = {n.split("@")[0]: a for n, (kind, a) in symbols.items()
                if "@@" in n and kind in "TW"}
    pairs = [(n, a, defaults[n.split("@")[0]]) for n, (_, a) in symbols.items()
             if "@@" not in n and defaults.get(n.split("@")[0], a) != a]
    assert pairs, "no symbol at two versions and addresses in the host's libc"
    for old_name, old, new in pairs:
        plain, by_old = elf.symbol(old_name.split("@")[0]), elf.symbol(old_name)
        assert plain is not None and by_old is not None, old_name
        if plain.binding != "local":  # not shadowed by a static of the same name
            assert plain.address == new, old_name
        assert by_old.address == old, old_name


def test_module_colon_symbol_and_a_miss_naming_every_file(tmp_path: Path) -> None:
    """resolve_in over a program (gcc -g here, with its own clock_nanosleep, as the Nanos
    kernel has one) and the host's libc at made-up offsets: the first file's name wins,
    MODULE:SYMBOL picks libc's, and a miss names both files."""
    from undebug.errors import UsageError
    from undebug.locations import resolve_in

    source = tmp_path / "own.c"
    source.write_text("int clock_nanosleep(void) { return 1; }\nint main(void) { return 0; }\n")
    program = tmp_path / "own"
    subprocess.run(["gcc", "-g", "-o", str(program), str(source)], check=True)
    libc_at = _versioned(_debug_file(LIBC))["clock_nanosleep@@GLIBC_2.17"][1]
    modules = [(ElfFile(program), 0x1000), (ElfFile(_debug_file(LIBC), LIBC), 0x7F0000000000)]
    first = resolve_in(modules, "clock_nanosleep")
    assert first.address == _nm(program)["clock_nanosleep"] + 0x1000
    assert first.also == ("libc.so.6",)
    chosen = resolve_in(modules, "libc.so.6:clock_nanosleep")
    assert chosen.address == libc_at + 0x7F0000000000 and chosen.elf is modules[1][0]
    assert resolve_in(modules, "own.c:2").elf is modules[0][0]  # FILE:LINE still
    with pytest.raises(UsageError) as miss:
        resolve_in(modules, "no_such_function")
    assert str(program) in miss.value.message and str(LIBC) in miss.value.message
