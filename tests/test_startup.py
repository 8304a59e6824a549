"""Start-up: what a command imports. Every command module is imported to build the
parser, so a heavy import at the top of any of them slows every command; ``undebug
threads`` on a warm ELF cache must not load pyelftools, and nothing that lists or
inspects threads needs gdb/MI, QMP, numpy, the launcher or the trace decoder.
(bench/latency.py times it; this checks what is loaded, which does not depend on load.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import undebug
from undebug.elf import ElfFile, _cache_key

# Not needed to parse a command line or to list a guest's threads.
NEVER = ("numpy", "qemu.qmp", "pygdbmi", "tracers", "undebug.gdb", "undebug.gdbserver",
         "undebug.session.launcher", "undebug.session.supervisor", "subprocess", "ctypes",
         "logging")
# Also not needed by `threads` once the ELF's index is in the disk cache (--help scans the
# plugins' entry points, and importlib.metadata imports tempfile).
NOT_FOR_THREADS = ("elftools", "undebug.dwarf", "undebug.unwind", "tempfile")

PROBE = r"""
import contextlib, io, json, sys
import undebug.cli
with contextlib.redirect_stdout(io.StringIO()):
    try:
        code = undebug.cli.main(sys.argv[2:])
    except SystemExit as exc:
        code = exc.code
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def imported(tmp_path: Path, *argv: str) -> tuple[int, list[str]]:
    """Run the real CLI ``main`` in a fresh interpreter: its exit code and sys.modules."""
    out = tmp_path / "modules.json"
    subprocess.run([sys.executable, "-c", PROBE, str(out), *argv], check=True,
                   env=os.environ.copy(), timeout=60)
    result = json.loads(out.read_text())
    return result["code"], result["modules"]


def loaded(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == f or m.startswith(f + ".") for f in forbidden)]


def test_help_imports_nothing_heavy(tmp_path: Path) -> None:
    code, modules = imported(tmp_path, "--help")
    assert code == 0
    assert "undebug.commands.inspect" in modules  # the probe saw the real parser being built
    assert loaded(modules, (*NEVER, "elftools", "undebug.dwarf", "undebug.unwind")) == []


def test_threads_on_a_warm_cache_imports_nothing_it_does_not_use(shared_guest: str,
                                                                 tmp_path: Path) -> None:
    assert undebug("threads", shared_guest).code == 0  # fills the ELF cache if it was cold
    code, modules = imported(tmp_path, "threads", shared_guest)
    assert code == 0
    assert "undebug.os.refguest" in modules  # it did walk the guest's threads
    assert loaded(modules, NEVER + NOT_FOR_THREADS) == []


def test_bt_on_a_warm_cache_never_parses_the_elf(shared_guest: str, tmp_path: Path) -> None:
    """The unwinder's CFI rows come from the disk cache too (undebug/cfi.py): pyelftools
    decoding every FDE was most of a backtrace's time on a real Unikraft image."""
    first = undebug("bt", shared_guest, "--all", "--json")  # fills the caches if cold
    assert first.code == 0, first.stderr
    code, modules = imported(tmp_path, "bt", shared_guest, "--all", "--json")
    assert code == 0
    assert "undebug.cfi" in modules  # it did unwind with CFI rows
    assert loaded(modules, ("elftools", "undebug.dwarf")) == []


def test_the_cache_key_is_read_without_the_parser(guest_image: Path, tmp_path: Path) -> None:
    """The key a cache hit computes without pyelftools: the build-id, and a digest that a
    stripped copy (same build-id, other section headers) does not share; none for a file
    whose headers do not parse (the parser then says what is wrong)."""
    data = guest_image.read_bytes()
    build_id = ElfFile(guest_image).build_id
    key = _cache_key(data)
    assert key is not None and key.startswith(f"{build_id}-")
    stripped = tmp_path / "stripped.elf"
    subprocess.run(["strip", "-o", str(stripped), str(guest_image)], check=True)
    other = _cache_key(stripped.read_bytes())
    assert other is not None and other.startswith(f"{build_id}-") and other != key
    assert _cache_key(b"\x7fELF\x02\x01" + bytes(10)) is None  # truncated header
    assert _cache_key(bytes(64)) is None  # not an ELF
