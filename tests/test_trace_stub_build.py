"""The guest stub's compile-time checks: a ring too small for the largest record (with the
LOST and SYNC the slow path may write before it) does not build."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import ROOT


def build(out: Path, cflags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["make", "-C", str(ROOT / "guest-stubs"), f"OUT={out}",
                           f"EXTRA_CFLAGS={cflags}"], capture_output=True, text=True)


def test_a_ring_too_small_for_the_largest_record_does_not_compile(tmp_path: Path) -> None:
    small = build(tmp_path / "small", "-DUNDEBUG_RING_BYTES=256")
    assert small.returncode != 0
    assert "ring size: too small for the largest record" in small.stderr
    # 21 slots (LOST 2 + SYNC 3 + 16) is the least that builds, as a power of two: 512
    assert build(tmp_path / "ok", "-DUNDEBUG_RING_BYTES=512").returncode == 0
