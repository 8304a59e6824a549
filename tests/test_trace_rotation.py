"""A full disk only costs trace data: the reference guest floods its stub in real QEMU
(TCG), the supervisor records.

* on a 1 MiB tmpfs that the stream fills, ``stop`` and ``cont`` still succeed and ``ps``
  warns that the disk is full (before, ENOSPC on session.json failed run control).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import undebug


def guest_record(name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = undebug("ps", "--json", env=env)
    assert result.code == 0, result.stderr
    return next(g for g in result.json()["guests"] if g["name"] == name)


@pytest.fixture
def full_disk(tmp_path: Path) -> Any:
    """A 1 MiB tmpfs (root only), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        for _ in range(50):
            if subprocess.run(["umount", str(mount)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)


def test_a_full_disk_is_a_warning_and_run_control_goes_on(guest_image: Path,
                                                          full_disk: Path) -> None:
    env = {**os.environ, "UNDEBUG_RUNTIME_DIR": str(full_disk / "rt")}
    name = "tr-full"
    started = undebug("run", "-d", "--name", name, "--trace-max-size", "0", "--append",
                      "threads=2 trace_flood=400000 run_for=100000", str(guest_image), env=env)
    try:
        assert started.code == 0, started.stderr
        deadline = time.monotonic() + 60
        while os.statvfs(full_disk).f_bavail > 0:
            assert time.monotonic() < deadline, "the trace never filled the disk"
            time.sleep(0.2)
        time.sleep(0.5)
        for op, state in (("stop", "paused"), ("cont", "running"), ("stop", "paused")):
            result = undebug(op, name, env=env)
            assert result.code == 0, (op, result.stdout, result.stderr)
            assert guest_record(name, env)["state"] == state
        record = guest_record(name, env)
        assert any("disk is full" in w for w in record["warnings"]), record["warnings"]
        [recording] = record["trace"]["recordings"]
        assert recording["unwritten_bytes"] > 0
        ps = undebug("ps", env=env)
        assert ps.code == 0 and f"warning: {name}: trace recording" in ps.stderr, ps.stderr
    finally:
        undebug("kill", name, env=env)
