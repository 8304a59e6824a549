"""Real Nanos disk images of position-independent programs (KASLR on): the program's load
bias found from the process Nanos made (its saved auxiliary vector), applied to every
symbol of the program in threads, bt, sym and mem; a dynamically linked one's libraries
read from its dynamic linker's link_map chain, matched to the host's files (the image
was built from them) and symbolized from their debug files.

The images are built outside the repository (never committed; /work/nanos/BUILD.md says
how), from the same workers.c as UNDEBUG_NANOS_DISK (threads naming themselves
worker-0..2, looping in worker_main -> do_work -> nanosleep):
UNDEBUG_NANOS_PIE_DISK runs UNDEBUG_NANOS_PIE_PROGRAM, linked ``-static-pie``;
UNDEBUG_NANOS_DYNAMIC_DISK runs UNDEBUG_NANOS_DYNAMIC_PROGRAM, gcc's default link (a PIE
against glibc), with the host's /lib64/ld-linux-x86-64.so.2 and
/lib/x86_64-linux-gnu/libc.so.6 in the image. Expected addresses come from binutils' nm
on the files and the files' own bytes, never from undebug."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import real_image, undebug, wait_for_console
from tests.test_nanos_image import _nm

PIE_LOW, PIE_RANGE = 0x400000, 4 << 20  # Nanos' DEFAULT_PROG_ADDR + PROCESS_PIE_LOAD_ASLR_RANGE
LIBC = Path("/lib/x86_64-linux-gnu/libc.so.6")


def _boot(name: str, disk: str, program: str, *options: str) -> Iterator[Path]:
    disk_path, kernel = real_image(disk), real_image("UNDEBUG_NANOS_KERNEL_ELF")
    elf = real_image(program)
    result = undebug("run", "-d", "--name", name, "--debug-elf", str(kernel),
                     "--debug-elf", str(elf), *options, str(disk_path), timeout=300)
    assert result.code == 0, result.stderr
    try:
        wait_for_console(name, "workers started", timeout=120)
        yield elf
    finally:
        undebug("kill", name)


def _worker_traces(name: str) -> tuple[list[dict[str, Any]], list[str]]:
    bt = undebug("bt", name, "--all", "--json")
    assert bt.code == 0, bt.stderr
    doc = bt.json()
    traces = [t for t in doc["backtraces"] if t["thread"]["name"].startswith("worker-")]
    assert sorted(t["thread"]["name"] for t in traces) == ["worker-0", "worker-1", "worker-2"]
    return traces, doc["warnings"]


def _bias(frames: list[dict[str, Any]], symbols: dict[str, int]) -> int:
    """The one offset between the frames' functions and their addresses in the file."""
    biases = {f["pc"] - f["offset"] - symbols[f["function"]] for f in frames}
    assert len(biases) == 1, frames
    return biases.pop()


def _file_bytes(elf: Path, vaddr: int, size: int) -> bytes:
    """``size`` bytes of ``elf`` at link address ``vaddr``, through its PT_LOADs (pyelftools,
    not undebug's ELF reader)."""
    from elftools.elf.elffile import ELFFile

    with elf.open("rb") as f:
        for segment in ELFFile(f).iter_segments():
            if segment["p_type"] == "PT_LOAD" and \
                    segment["p_vaddr"] <= vaddr < segment["p_vaddr"] + segment["p_filesz"]:
                f.seek(segment["p_offset"] + vaddr - segment["p_vaddr"])
                return f.read(size)
    raise AssertionError(f"{vaddr:#x} is in no PT_LOAD of {elf}")


def _threads_named(name: str) -> None:
    threads = undebug("threads", name, "--json")
    assert threads.code == 0, threads.stderr
    names = [t["name"] for t in threads.json()["threads"]]
    assert sorted(n for n in names if n.startswith("worker-")) == \
        ["worker-0", "worker-1", "worker-2"], names


class TestStaticPie:
    @pytest.fixture(scope="class")
    def pie(self) -> Iterator[Path]:
        yield from _boot("nanospie", "UNDEBUG_NANOS_PIE_DISK", "UNDEBUG_NANOS_PIE_PROGRAM")

    def test_threads_are_listed_by_name(self, pie: Path) -> None:
        _threads_named("nanospie")

    def test_backtraces_and_symbols_are_at_the_program_s_bias(self, pie: Path) -> None:
        traces, warnings = _worker_traces("nanospie")
        symbols = _nm(pie)
        frames = []
        for trace in traces:
            functions = [f["function"] for f in trace["frames"]]
            assert functions.index("do_work") < functions.index("worker_main") < \
                functions.index("start_thread") < functions.index("clone3"), functions
            frames += [f for f in trace["frames"] if f["function"] in symbols]
        bias = _bias(frames, symbols)
        assert PIE_LOW <= bias < PIE_LOW + PIE_RANGE and bias % 4096 == 0, hex(bias)
        assert not any("position-independent" in w for w in warnings), warnings
        sym = undebug("sym", "nanospie", "worker_main", "--json")
        assert sym.code == 0, sym.stderr
        assert (sym.json()["address"], sym.json()["module"]) == \
            (symbols["worker_main"] + bias, pie.name)
        mem = undebug("mem", "nanospie", "worker_main", "16", "--json")
        assert mem.code == 0, mem.stderr
        assert mem.json()["address"] == symbols["worker_main"] + bias
        assert bytes.fromhex(mem.json()["hex"]) == _file_bytes(pie, symbols["worker_main"], 16)
        maps = undebug("maps", "nanospie", "--json")
        assert maps.code == 0, maps.stderr
        text = [r for r in maps.json()["regions"] if f"{pie.name} .text" in r["names"]]
        assert text[0]["start"] <= symbols["worker_main"] + bias < text[-1]["end"], text


class TestDynamic:
    @pytest.fixture(scope="class")
    def dyn(self) -> Iterator[Path]:
        yield from _boot("nanosdyn", "UNDEBUG_NANOS_DYNAMIC_DISK",
                         "UNDEBUG_NANOS_DYNAMIC_PROGRAM")

    def test_threads_are_listed_by_name(self, dyn: Path) -> None:
        _threads_named("nanosdyn")

    def test_backtraces_cross_from_the_program_into_libc(self, dyn: Path) -> None:
        """worker_main <- start_thread <- clone3: the program at its bias, libc at the
        l_addr its dynamic linker recorded, named from the host's libc debug file."""
        traces, _ = _worker_traces("nanosdyn")
        program = _nm(dyn)
        libc = _nm(_debug_file(LIBC))
        mine, theirs = [], []
        for trace in traces:
            functions = [f["function"] for f in trace["frames"]]
            assert functions.index("do_work") < functions.index("worker_main") < \
                functions.index("start_thread"), functions
            assert any(f and "clone3" in f for f in functions[functions.index("start_thread"):]), \
                functions
            mine += [f for f in trace["frames"] if f["function"] in ("do_work", "worker_main")]
            theirs += [f for f in trace["frames"] if f["function"] == "start_thread"]
        bias = _bias(mine, program)
        assert PIE_LOW <= bias < PIE_LOW + PIE_RANGE and bias % 4096 == 0, hex(bias)
        libc_bias = _bias(theirs, libc)
        assert libc_bias % 4096 == 0 and libc_bias != bias
        # the guest's bytes at start_thread's frame are the host libc's at that address
        pc = theirs[0]["pc"]
        mem = undebug("mem", "nanosdyn", hex(pc - 16), "32", "--json")
        assert mem.code == 0, mem.stderr
        assert bytes.fromhex(mem.json()["hex"]) == _file_bytes(LIBC, pc - 16 - libc_bias, 32)
        sym = undebug("sym", "nanosdyn", "start_thread", "--json")
        assert sym.code == 0, sym.stderr
        assert (sym.json()["address"], sym.json()["module"]) == \
            (libc["start_thread"] + libc_bias, "libc.so.6")
        sym = undebug("sym", "nanosdyn", "worker_main", "--json")
        assert (sym.json()["address"], sym.json()["module"]) == \
            (program["worker_main"] + bias, dyn.name)

    def test_stock_gdb_gets_the_program_s_bias_from_qoffsets(self, dyn: Path,
                                                             tmp_path: Path) -> None:
        """gdbserver --symbol-file PROGRAM: qOffsets is the program's bias, and with libc
        added where undebug says it is, gdb unwinds each worker as undebug does."""
        libc_at = undebug("sym", "nanosdyn", "start_thread", "--json").json()["load_offset"]
        sock = tmp_path / "gdb.sock"
        server = subprocess.Popen([sys.executable, "-m", "undebug.cli", "gdbserver", "nanosdyn",
                                   "--listen", str(sock), "--symbol-file", str(dyn)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            assert server.stdout.readline().startswith(f"listening on {sock}")
            out = subprocess.run(["gdb", "-batch", "-nx", "-ex", f"target remote {sock}",
                                  "-ex", f"add-symbol-file {LIBC} -o {libc_at:#x}",
                                  "-ex", "thread apply all bt", "-ex", "detach", str(dyn)],
                                 capture_output=True, text=True, timeout=180).stdout
        finally:
            server.terminate()  # the server this test started, by its Popen
            server.wait(timeout=30)
        assert out.count("in worker_main (") == 3, out
        assert out.count("in start_thread (") == 3, out


class TestDynamicWithoutItsLibraries:
    """--sysroot an empty directory: the libraries are in the guest's link_map but not on
    this "host", so frames in libc stay ?? with the library's name and offset."""

    @pytest.fixture(scope="class")
    def bare(self, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
        empty = tmp_path_factory.mktemp("sysroot")
        yield from _boot("nanosbare", "UNDEBUG_NANOS_DYNAMIC_DISK",
                         "UNDEBUG_NANOS_DYNAMIC_PROGRAM", "--sysroot", str(empty))

    def test_frames_in_a_missing_library_are_named_by_library_and_offset(self,
                                                                         bare: Path) -> None:
        traces, warnings = _worker_traces("nanosbare")
        assert any("libc.so.6" in w and "does not exist on this host" in w
                   for w in warnings), warnings
        for trace in traces:  # each worker is in nanosleep: libc's code, without its CFI
            top = trace["frames"][0]
            assert top["function"] is None, top
            name, _, offset = top["library"].partition("+")
            base = top["pc"] - int(offset, 16)
            assert name == "libc.so.6" and base % 4096 == 0 and base != 0, top
        text = undebug("bt", "nanosbare", "--thread", str(traces[0]["thread"]["id"]))
        assert text.code == 0, text.stderr
        assert f"in ?? ({traces[0]['frames'][0]['library']})" in text.stdout, text.stdout
        sym = undebug("sym", "nanosbare", "worker_main", "--json")  # the program: still there
        assert sym.code == 0 and sym.json()["module"] == bare.name, sym.stderr


def _debug_file(library: Path) -> Path:
    """The host's separate debug file of ``library``, by its build-id (readelf)."""
    out = subprocess.run(["readelf", "-n", str(library)], capture_output=True, text=True,
                         check=True).stdout
    build_id = out.split("Build ID: ", 1)[1].split()[0]
    debug = Path("/usr/lib/debug/.build-id", build_id[:2], build_id[2:] + ".debug")
    if not debug.is_file():
        pytest.skip(f"no debug file of {library} ({debug}): install libc6-dbg")
    return debug
