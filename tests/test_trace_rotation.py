"""A live guest's recording stays under ``--trace-max-size`` and a full disk only costs
trace data: the reference guest floods its stub in real QEMU (TCG), the supervisor records.

* with a 256 KiB cap the recordings (session dir and ``--trace-file``) keep the newest
  chunks, decode as one session without damage or disagreeing loss, and what was dropped
  is in the session record (``ps --json``) and in ``trace stats``;
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

from tests.conftest import undebug, wait_for_console
from tracers.chunks import CHUNK_COUNT, chunk_paths
from tracers.decode import decode_file


def guest_record(name: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = undebug("ps", "--json", env=env)
    assert result.code == 0, result.stderr
    return next(g for g in result.json()["guests"] if g["name"] == name)


def test_a_flooding_guest_is_recorded_in_capped_chunks(guest_image: Path,
                                                       tmp_path: Path) -> None:
    cap = 256 << 10
    copy = tmp_path / "flood.utrace"
    name = "tr-capped"
    run = undebug("run", "-d", "--name", name, "--smp", "2", "--trace-max-size", "256K",
                  "--trace-file", str(copy), "--append",
                  "threads=4 trace_flood=200000 run_for=100000", str(guest_image))
    try:
        assert run.code == 0, run.stderr
        wait_for_console(name, "trace_flood done")
        time.sleep(1)  # the workers go on: the recorder has rotated past the flood's end
        assert undebug("stop", name).code == 0  # the recording stops growing
        wait_until_still(copy)
        check_capped_recording(name, copy, cap, guest_image)
    finally:
        undebug("kill", name)


def wait_until_still(recording: Path, timeout: float = 30) -> None:
    """Until the recorder has written what QEMU still had buffered when the guest
    stopped (under load that takes a while): the chunks' names and sizes hold for 1.5 s."""
    def shape() -> list[tuple[str, int]]:
        try:
            return [(p.name, p.stat().st_size) for _, p in chunk_paths(recording)]
        except FileNotFoundError:  # rotated away between the listing and the stat
            return []

    deadline = time.monotonic() + timeout
    last, still = shape(), 0
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = shape()
        still = still + 1 if now == last else 0
        if still == 3:  # 1.5 s: under load QEMU may pause between pieces of one buffer
            return
        last = now
    raise AssertionError(f"{recording} still changing after {timeout}s: {last}")


def check_capped_recording(name: str, copy: Path, cap: int, guest_image: Path) -> None:
    session_file = Path(os.environ["UNDEBUG_RUNTIME_DIR"]) / name / "trace.utrace"
    for recording in (copy, session_file):
        sizes = [p.stat().st_size for _, p in chunk_paths(recording)]
        # the full chunks leave the one being written its share of the cap, unless the
        # newest full one alone is more (a chunk is cut at the first SYNC past its size,
        # and the stub sends one every 4096 records of a CPU)
        assert 2 <= len(sizes) <= CHUNK_COUNT, sizes
        assert len(sizes) == 2 or sum(sizes[:-1]) <= cap * 3 // 4, sizes
    stats = undebug("trace", "stats", str(copy), "--elf", str(guest_image), "--json")
    assert stats.code == 0, stats.stderr
    doc = stats.json()
    assert len(doc["sessions"]) == 1 and doc["damage"] == [] and doc["truncated"] is None
    assert doc["loss"] and all(x["agree"] for x in doc["loss"]), doc["loss"]
    # joined oldest first, the chunks hold exactly the records each holds alone
    alone = [decode_file(p) for _, p in chunk_paths(copy)]
    assert all(d.damage == [] and d.truncated is None for d in alone)
    assert doc["records"] == sum(len(d.records) for d in alone) > 0
    rotation = doc["rotation"]
    assert rotation["max_size"] == cap and rotation["dropped_chunks"] > 0
    # the session record says the same, for both recordings; every byte received is
    # in a chunk kept or dropped (plus a header copy at the start of every later chunk)
    trace = guest_record(name)["trace"]
    recordings = trace["recordings"]
    chunks = chunk_paths(copy)
    kept = sum(p.stat().st_size for _, p in chunks)
    assert rotation["dropped_bytes"] + kept == trace["received_bytes"] + 80 * (chunks[-1][0] - 1)
    assert {r["file"] for r in recordings} == {str(session_file), str(copy.resolve())}
    assert all(r["dropped_chunks"] > 0 and r["write_error"] is None for r in recordings)
    by_name = undebug("trace", "stats", name, "--json")
    assert by_name.code == 0 and by_name.json()["rotation"]["dropped_chunks"] > 0


@pytest.fixture
def full_disk(tmp_path: Path) -> Any:
    """A 1 MiB tmpfs (root only), unmounted afterwards."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    assert done.returncode == 0, f"cannot mount a 1 MiB tmpfs to fill (the test needs root, " \
        f"as CI has): {done.stderr.strip()}"
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
