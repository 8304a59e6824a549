"""The SVR4 library walker (undebug/os/solib.py) on real dynamic linker data.

Two sources, both real: a running host process (tests/data/solib_host.c, gcc's default
dynamic PIE link against the host's glibc) whose memory is read through /proc/PID/mem,
so its r_debug / link_map chain is the one glibc's ld.so built; and hostile chains
planted by tests/data/solib_chain.c in structs declared by glibc's own <link.h> (not
mirrors), written to a file and read as guest memory. Expected values come from
/proc/PID/maps and binutils' readelf, never from undebug."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.memory_targets import ImageTarget, ProcessTarget
from undebug.elf import ElfFile
from undebug.os.solib import MAX_NAME, find_libraries, link_map

DATA = Path(__file__).parent / "data"


@dataclass
class Host:
    exe: ElfFile
    target: ProcessTarget
    maps: list[tuple[int, int, str]]  # start, file offset, path
    pid: int

    def base(self, path_end: str) -> int:
        return min(s for s, o, p in self.maps if p.endswith(path_end) and o == 0)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Host]:
    exe = tmp_path_factory.mktemp("solibhost") / "solib_host"
    subprocess.run(["gcc", "-g", "-O1", "-o", str(exe), str(DATA / "solib_host.c")], check=True)
    proc = subprocess.Popen([str(exe)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        maps = []
        for line in Path(f"/proc/{proc.pid}/maps").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 6:
                maps.append((int(fields[0].split("-")[0], 16), int(fields[2], 16), fields[5]))
        target = ProcessTarget(ElfFile(exe), proc.pid)
        yield Host(ElfFile(exe), target, maps, proc.pid)
        target.close()
    finally:
        proc.kill()  # the process this fixture started
        proc.wait(timeout=30)


def _readelf_build_id(path: str) -> str:
    out = subprocess.run(["readelf", "-n", path], capture_output=True, text=True,
                         check=True).stdout
    found = re.search(r"Build ID: ([0-9a-f]+)", out)
    assert found, out
    return found[1]


def test_a_real_process_s_libraries_are_found_and_matched_by_build_id(host: Host,
                                                                     tmp_path: Path) -> None:
    # a sysroot of links to the host's own libraries, without their debug files (whose
    # DWARF takes a cold cache ~20 s to index; the Nanos image tests use them)
    bias = host.base(str(host.exe.path))
    for library in find_libraries(host.target, host.exe, bias, [], [], sysroot=tmp_path):
        if library.entry.name.startswith("/"):
            link = tmp_path / library.entry.name.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(Path(library.entry.name).resolve())
    host.target.link_maps = []
    warnings: list[str] = []
    libraries = find_libraries(host.target, host.exe, bias, warnings, [], sysroot=tmp_path)
    assert warnings == []
    by_name = {Path(lib.entry.name).name: lib for lib in libraries}
    assert {"libc.so.6", "ld-linux-x86-64.so.2"} <= set(by_name), by_name
    libc = by_name["libc.so.6"]
    assert libc.entry.bias == host.base("/libc.so.6")  # glibc's l_addr, as the kernel mapped it
    assert libc.elf is not None and libc.problem is None
    assert libc.elf.build_id == _readelf_build_id(libc.entry.name)
    assert libc.elf.path == tmp_path / libc.entry.name.lstrip("/")
    # the program's own entry (first, l_name "") carries the bias /proc/PID/maps shows
    assert host.target.link_maps[0].name == "" and host.target.link_maps[0].bias == bias
    assert host.target.library_at(libc.entry.bias + 0x1234) == "libc.so.6+0x1234"


def test_a_library_missing_or_different_on_the_host_is_a_warning(host: Host,
                                                                  tmp_path: Path) -> None:
    bias = host.base(str(host.exe.path))
    warnings: list[str] = []
    libraries = find_libraries(host.target, host.exe, bias, warnings, [], sysroot=tmp_path)
    files = [lib for lib in libraries if lib.entry.name.startswith("/")]  # not the vDSO
    assert files and all(lib.elf is None for lib in files)
    assert all("does not exist on this host" in (lib.problem or "") for lib in files)
    assert any("libc.so.6" in w and "shown as ??" in w for w in warnings), warnings
    # another ELF where libc should be: its build-id is not the one in memory
    libc = next(lib for lib in libraries if lib.entry.name.endswith("/libc.so.6"))
    impostor = tmp_path / libc.entry.name.lstrip("/")
    impostor.parent.mkdir(parents=True)
    shutil.copy(host.exe.path, impostor)
    warnings = []
    again = find_libraries(host.target, host.exe, bias, warnings, [], sysroot=tmp_path)
    found = next(lib for lib in again if lib.entry.name == libc.entry.name)
    assert found.elf is None and "build-id mismatch" in (found.problem or ""), found


def test_a_pie_s_bias_from_its_auxiliary_vector_is_the_one_the_kernel_chose(host: Host) -> None:
    """program_bias (undebug/os/nanos_load.py) on the auxiliary vector Linux gave the real
    process (/proc/PID/auxv): AT_ENTRY - e_entry, checked against AT_PHDR and, in memory,
    the build-id; an AT_PHDR that does not fit is refused."""
    from undebug.os.nanos_load import AT_PHDR, program_bias

    raw = Path(f"/proc/{host.pid}/auxv").read_bytes()
    aux = {tag: value for tag, value in struct.iter_unpack("<QQ", raw) if tag}
    assert program_bias(host.target, host.exe, aux) == (host.base(str(host.exe.path)), "")
    aux[AT_PHDR] += 0x1000
    bias, why = program_bias(host.target, host.exe, aux)
    assert bias is None and "not the program the guest runs" in why, why


@dataclass
class Chain:
    elf: ElfFile
    base: int
    data: bytes

    def target(self) -> ImageTarget:
        return ImageTarget(self.elf, [(self.base, bytearray(self.data))], {})

    def at(self, member: str) -> int:
        """The address of ``arena.<member>`` (``lm[2].l_next``), from the DWARF."""
        layout = self.elf.struct("arena")
        assert layout is not None
        path, offset = member, 0
        index = re.match(r"(\w+)\[(\d+)\]\.?(.*)", member)
        if index:
            element = self.elf.struct("link_map")
            assert element is not None
            offset = layout.member(index[1]).offset + int(index[2]) * element.size
            return self.base + offset + (element.member(index[3]).offset if index[3] else 0)
        return self.base + layout.member(path).offset


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Chain:
    folder = tmp_path_factory.mktemp("solibchain")
    exe, image = folder / "solib_chain", folder / "image"
    subprocess.run(["gcc", "-g", "-O0", "-o", str(exe), str(DATA / "solib_chain.c")], check=True)
    subprocess.run([str(exe), str(image)], check=True, timeout=30)
    raw = image.read_bytes()
    assert raw[:8] == b"SOLIBMAP"
    base, size = struct.unpack_from("<2Q", raw, 8)
    return Chain(ElfFile(exe), base, raw[24 : 24 + size])


def test_the_link_map_layout_is_glibc_s(chain: Chain) -> None:
    """The offsets solib.py reads are those of <link.h>'s struct link_map and r_debug,
    as gcc laid them out (DWARF of the program that includes the real header)."""
    link, debug = chain.elf.struct("link_map"), chain.elf.struct("r_debug")
    assert link is not None and debug is not None
    offsets = [link.member(m).offset for m in ("l_addr", "l_name", "l_ld", "l_next", "l_prev")]
    assert offsets == [0, 8, 16, 24, 32] and debug.member("r_map").offset == 8


def test_a_chain_is_read_in_order(chain: Chain) -> None:
    warnings: list[str] = []
    entries = link_map(chain.target(), chain.at("rd"), warnings)
    assert [(e.name, e.bias, e.dynamic) for e in entries] == \
        [("", 0x10000, 0x18000)] + [(f"/lib/lib{i}.so", 0x10000 * (i + 1),
                                     0x10000 * (i + 1) + 0x8000) for i in (1, 2, 3)]
    assert [e.address for e in entries] == [chain.at(f"lm[{i}]") for i in range(4)]
    assert warnings == []


def test_a_chain_that_loops_is_cut_with_a_warning(chain: Chain) -> None:
    target = chain.target()
    target.write_u64(chain.at("lm[3].l_next"), chain.at("lm[1]"))
    warnings: list[str] = []
    entries = link_map(target, chain.at("rd"), warnings)
    assert len(entries) == 4
    assert any("loops back" in w for w in warnings), warnings


def test_a_chain_past_its_limit_is_cut_with_a_warning(chain: Chain) -> None:
    warnings: list[str] = []
    entries = link_map(chain.target(), chain.at("rd"), warnings, limit=2)
    assert [e.name for e in entries] == ["", "/lib/lib1.so"]
    assert any("longer than 2" in w for w in warnings), warnings


def test_an_unterminated_or_unreadable_name_is_cut_with_a_warning(chain: Chain) -> None:
    target = chain.target()
    target.write_u64(chain.at("lm[1].l_name"), chain.at("longname"))  # 8 KiB of 'x', no NUL
    target.write_u64(chain.at("lm[2].l_name"), 0xDEAD0000)  # outside the memory
    target.write_u64(chain.at("lm[3].l_next"), 0xBEEF0000)  # a broken link
    warnings: list[str] = []
    entries = link_map(target, chain.at("rd"), warnings)
    assert entries[1].name == "x" * MAX_NAME
    assert entries[2].name == ""
    assert len(entries) == 4
    assert any("no end within" in w for w in warnings), warnings
    assert any("0xdead0000 is unreadable" in w for w in warnings), warnings
    assert any("broken at 0xbeef0000" in w for w in warnings), warnings
    # a name the guest has not paged in is read where the caller says (the file's bytes)
    warnings = []
    entries = link_map(target, chain.at("rd"), warnings,
                       unpaged=lambda a: b"/lib64/ld.so\0rest" if a == 0xDEAD0000 else None)
    assert entries[2].name == "/lib64/ld.so"


@pytest.mark.parametrize("at", ["", "@0x500000"])
def test_a_pie_program_is_at_its_link_address_with_a_warning_unless_given_at(
        guest_image: Path, host: Host, at: str) -> None:
    """On an OS that knows no process mappings (the reference guest), a PIE program from
    --debug-elf without @ADDR stays at its link addresses, said in a warning; @ADDR
    places it (its lowest PT_LOAD, at link address 0 here, goes there)."""
    from tests.conftest import undebug, wait_for_console
    from tests.test_nanos_image import _nm

    result = undebug("run", "-d", "--name", "piehost", "--debug-elf", str(guest_image),
                     "--debug-elf", f"{host.exe.path}{at}", str(guest_image))
    assert result.code == 0, result.stderr
    try:
        wait_for_console("piehost", "refguest: ready")
        sym = undebug("sym", "piehost", "solib_host_marker", "--json")
        assert sym.code == 0, sym.stderr
        offset = int(at[1:], 16) if at else 0
        assert sym.json()["address"] == _nm(host.exe.path)["solib_host_marker"] + offset
        warned = [w for w in sym.json()["warnings"] if "position-independent" in w]
        assert bool(warned) == (not at), sym.json()["warnings"]
    finally:
        undebug("kill", "piehost")
