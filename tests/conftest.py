"""Shared fixtures: an isolated runtime dir, the reference guest, and one booted guest
that read-only tests share (booting under TCG costs about a second each)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
GUEST = ROOT / "build" / "refguest.elf"


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def undebug(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
    """Run the real CLI in a subprocess, as a user would."""
    proc = subprocess.run([sys.executable, "-m", "undebug.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env or os.environ.copy(),
                          errors="backslashreplace")
    assert "Traceback" not in proc.stderr, proc.stderr
    return Result(proc.returncode, proc.stdout, proc.stderr)


PLANTED_SEED = 0x5EED000000000000  # planted_counter at boot (guest-stubs/refguest/README.md)


def check_planted_counter(counter: int, requests_handled: int, cpus: int) -> None:
    """``planted_counter`` read at one stop is the boot seed plus the requests handled
    (both incremented per request, requests_handled first), short by at most one request
    per vCPU caught between the two increments. ``requests_handled`` is a second variable
    read independently, so a wrong address or a stale read cannot pass."""
    assert 0 <= PLANTED_SEED + requests_handled - counter <= cpus, (
        f"planted_counter {counter:#x} vs seed + requests_handled "
        f"{PLANTED_SEED + requests_handled:#x}")


def wait_for_console(name: str, needle: str, timeout: float = 60) -> str:
    """Poll a guest's console until ``needle`` appears; returns the escaped log."""
    deadline = time.monotonic() + timeout
    while True:
        out = undebug("logs", name).stdout
        if needle in out:
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not on the console of {name} after {timeout}s:\n{out}")
        time.sleep(0.2)


def real_image(variable: str,
               what: str = "a real unikernel image built outside the repository") -> Path:
    """The path in environment variable ``variable`` (a real unikernel image, never part of
    this repository), or a skip that names the variable and what it should hold."""
    value = os.environ.get(variable)
    if not value:
        pytest.skip(f"{variable} is not set ({what})")
    return Path(value)


def supervisor_loop_wakeups_per_s(name: str, seconds: float = 3.0) -> float:
    """Voluntary context switches of the supervisor's main thread (its event loop: the
    trace stream is read by a thread of its own) per second."""
    [pid] = [g["supervisor_pid"] for g in undebug("ps", "--json").json()["guests"]
             if g["name"] == name]
    status = Path(f"/proc/{pid}/task/{pid}/status")

    def switches() -> int:
        line = next(x for x in status.read_text().splitlines()
                    if x.startswith("voluntary_ctxt_switches:"))
        return int(line.split()[1])

    before = switches()
    time.sleep(seconds)
    return (switches() - before) / seconds


def boot(name: str, append: str, guest_image: Path) -> str:
    """A reference guest of its own (-smp 2), booted and ready."""
    result = undebug("run", "-d", "--name", name, "--smp", "2", "--append", append,
                     str(guest_image))
    assert result.code == 0, result.stderr
    wait_for_console(name, "refguest: ready")
    return name


@pytest.fixture(scope="session", autouse=True)
def runtime_dir() -> Iterator[Path]:
    """A private, short runtime dir (unix socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ud-"))
    old = os.environ.get("UNDEBUG_RUNTIME_DIR")
    os.environ["UNDEBUG_RUNTIME_DIR"] = str(path)
    os.environ["UNDEBUG_CACHE_DIR"] = str(path / "cache")  # never the user's own cache
    os.environ["UNDEBUG_DUMP_DIR"] = str(path / "dumps")  # run --ci's bundles, not in ./
    yield path
    for session in path.iterdir():  # end whatever a failed test left behind
        undebug("kill", session.name)
    shutil.rmtree(path, ignore_errors=True)
    if old is None:
        del os.environ["UNDEBUG_RUNTIME_DIR"]
    else:
        os.environ["UNDEBUG_RUNTIME_DIR"] = old


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """build/refguest.elf, built by make if missing (make test builds it first)."""
    if not GUEST.exists():
        subprocess.run(["make", "-s", "guest"], cwd=ROOT, check=True)
    return GUEST


@pytest.fixture(scope="session")
def nocfi_image(guest_image: Path) -> Path:
    """build/refguest-nocfi.elf: the reference guest whose trap entry has no CFI (the same
    make builds it beside refguest.elf)."""
    image = GUEST.with_name("refguest-nocfi.elf")
    if not image.exists():
        subprocess.run(["make", "-s", "guest"], cwd=ROOT, check=True)
    return image


@pytest.fixture(scope="session")
def shared_guest(guest_image: Path) -> Iterator[str]:
    """One running reference guest (-smp 2, 8 workers) for tests that do not change it."""
    name = "shared"
    result = undebug("run", "-d", "--name", name, "--smp", "2", "--append", "threads=8",
                     str(guest_image))
    assert result.code == 0, result.stderr
    wait_for_console(name, "refguest: ready")
    yield name
    undebug("kill", name)
