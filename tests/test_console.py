"""The crash line a verdict quotes from a guest's console. The consoles here are written by
the test (fake data), in the formats the reference guest and Unikraft 0.17 were seen to
print: Unikraft's UK_CRASH("...") reason is a CRIT-level line with no crash word in it."""

from __future__ import annotations

from pathlib import Path

import pytest

from undebug.console import crash_line


@pytest.mark.parametrize(("console", "expected"), [
    (b"refguest: ready\nPANIC: planted panic (crash=panic)\nbacktrace: ...\n",
     b"PANIC: planted panic (crash=panic)"),
    (b"[    0.105512] Info: [libukboot] <boot.c @  218> Init Table @ 0x1298a8\n"
     b"[    0.106001] CRIT: [libkvmplat] <setup.c @   85> Bootstrap processor init "
     b"failed: -95\n",
     b"[    0.106001] CRIT: [libkvmplat] <setup.c @   85> Bootstrap processor init failed: -95"),
    (b"worker-0: iteration 20\nworker-1: iteration 20\n", None),
])
def test_the_last_crash_like_line_is_quoted(tmp_path: Path, console: bytes,
                                            expected: bytes | None) -> None:
    path = tmp_path / "console.log"
    path.write_bytes(console)
    assert crash_line(path) == expected
