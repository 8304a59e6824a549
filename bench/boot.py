"""Boot to ready under the supervisor vs plain QEMU; CLI latency vs a bare Python start.

Baselines, measured in the same run, interleaved: (1) ``qemu-system-x86_64`` started
directly with the same machine, until the reference guest prints ``refguest: ready``;
(2) ``python -c pass`` for the cost of any Python command. Machines here are noisy, so
the numbers that matter are the ratios.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GUEST = ROOT / "build" / "refguest.elf"
ROUNDS = 7
APPEND = "threads=4"


def _wait_ready(console: Path, timeout: float = 60) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if console.exists() and b"refguest: ready" in console.read_bytes():
            return time.monotonic()
        time.sleep(0.002)
    raise RuntimeError(f"no ready line in {console}")


def plain_qemu(tmp: Path) -> float:
    console = tmp / "plain.log"
    console.unlink(missing_ok=True)
    start = time.monotonic()
    proc = subprocess.Popen([
        "qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "128", "-smp", "2",
        "-display", "none", "-vga", "none", "-nodefaults", "-serial", f"file:{console}",
        "-kernel", str(GUEST), "-append", APPEND])
    try:
        return _wait_ready(console) - start
    finally:
        proc.kill()
        proc.wait()


def undebug_run(env: dict[str, str], rundir: Path) -> float:
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "undebug.cli", "run", "-d", "--name", "bench",
                    "--smp", "2", "--append", APPEND, str(GUEST)], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    try:
        return _wait_ready(rundir / "bench" / "console.log") - start
    finally:
        subprocess.run([sys.executable, "-m", "undebug.cli", "kill", "bench"], env=env,
                       check=True, stdout=subprocess.DEVNULL)


def command_time(argv: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - start


def run() -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ud-bench-"))
    env = {**os.environ, "UNDEBUG_RUNTIME_DIR": str(tmp / "run")}
    samples: dict[str, list[float]] = {"plain_qemu_s": [], "undebug_run_s": [],
                                       "python_start_s": [], "undebug_ps_s": []}
    try:
        for _ in range(ROUNDS):
            samples["plain_qemu_s"].append(plain_qemu(tmp))
            samples["undebug_run_s"].append(undebug_run(env, tmp / "run"))
            samples["python_start_s"].append(command_time([sys.executable, "-c", "pass"], env))
            samples["undebug_ps_s"].append(
                command_time([sys.executable, "-m", "undebug.cli", "ps"], env))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in samples.items()}
    return {
        "samples": samples,
        "summary": {
            "median_s": {k: round(v, 4) for k, v in med.items()},
            "boot_overhead_ratio": round(med["undebug_run_s"] / med["plain_qemu_s"], 2),
            "boot_overhead_ms": round((med["undebug_run_s"] - med["plain_qemu_s"]) * 1000, 1),
            "ps_over_python_start_ratio": round(med["undebug_ps_s"] / med["python_start_s"], 2),
        },
    }
