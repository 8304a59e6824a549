"""Bulk read of 64 MiB of an *adopted* guest's RAM (``undebug attach``): QEMU's own memory
(undebug/session/process_ram.py: pid from the QMP socket, ``gpa2hva``, ``/proc/PID/mem``)
vs gdb's dump over the gdbstub.

Guest: the reference guest, ``threads=4``, ``-M pc -smp 2 -m 256``, in a QEMU the
benchmark starts by hand (two QMP sockets: one for undebug, one for the benchmark), then
``undebug attach --gdb SOCK --qmp SOCK``. undebug side, in a fresh Python process per
round: attach (``LiveTarget(...)``), ``read_physical(0, 64 MiB)``. Baseline: gdb 13
``dump binary memory`` of physical 0..64 MiB (``maint packet Qqemu.PhyMemMode:1``) over
QEMU's gdbstub on an identical second QEMU (the supervisor owns the first one's only
gdbstub connection), timed inside gdb. Interleaved rounds, medians. Correctness: the
kernel text read by both equals the ELF's.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.memory import text_section
from bench.threads import (
    GUEST,
    READY,
    PlainGuest,
    Qmp,
    ensure_guest,
    median,
    teardown,
    undebug_env,
    wait_ready,
)

ROUNDS = 3
APPEND = "threads=4"
SIZE = 64 << 20

UNDEBUG_SIDE = r"""
import json, sys, time
from undebug.session.store import SessionDir
from undebug.target import LiveTarget
name, size, text_addr, text_size, out = sys.argv[1:6]
size, text_addr, text_size = int(size), int(text_addr), int(text_size)
r = {}
t = time.perf_counter()
lt = LiveTarget(SessionDir.named(name))
r["attach_s"] = time.perf_counter() - t
r["direct"] = lt._ram is not None
try:
    t = time.perf_counter(); data = lt.read_physical(0, size); r["read_physical_s"] = time.perf_counter() - t
    assert len(data) == size
    if out != "-":
        open(out, "wb").write(data[text_addr:text_addr + text_size])
finally:
    lt.close()
print(json.dumps(r))
"""


class AdoptedQemu:
    """The QEMU a user started: gdbstub and two QMP sockets, run to ``ready``."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir()
        self.gdb_sock, self.qmp_sock = directory / "gdb.sock", directory / "undebug.qmp"
        console = directory / "console.log"
        self.proc = subprocess.Popen([
            "qemu-system-x86_64", "-S",
            "-chardev", f"socket,id=g,path={self.gdb_sock},server=on,wait=off", "-gdb",
            "chardev:g", "-qmp", f"unix:{self.qmp_sock},server=on,wait=off",
            "-qmp", f"unix:{directory / 'bench.qmp'},server=on,wait=off",
            "-serial", f"file:{console}", "-M", "pc", "-accel", "tcg", "-m", "256",
            "-smp", "2", "-display", "none", "-vga", "none", "-nodefaults",
            "-kernel", str(GUEST), "-append", APPEND], stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not (directory / "bench.qmp").exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("QEMU made no QMP socket")
                time.sleep(0.05)
            self.qmp = Qmp(directory / "bench.qmp")
            self.qmp.execute("cont")
            wait_ready(console, 60)
            self.qmp.execute("stop")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # only the QEMU this object started, by its Popen (PID)
        self.proc.wait()


def gdb_dump(guest: PlainGuest, tmp: Path, text: tuple[int, int] | None) -> float:
    phys = tmp / "phys.bin"
    cmds = ["target remote " + str(guest.gdb_sock), "python import time",
            "maint packet Qqemu.PhyMemMode:1", "python t = time.perf_counter()",
            f"dump binary memory {phys} 0 {SIZE:#x}",
            "python print('DUMP', time.perf_counter() - t)", "detach"]
    argv = ["gdb", "-batch", "-nx"]
    for c in cmds:
        argv += ["-ex", c]
    out = subprocess.run([*argv, str(GUEST)], capture_output=True, text=True, check=True,
                         timeout=600).stdout
    seconds = next(float(line.split()[1]) for line in out.splitlines()
                   if line.startswith("DUMP "))
    if phys.stat().st_size != SIZE:
        raise RuntimeError(f"gdb dumped {phys.stat().st_size} bytes")
    if text is not None:
        (tmp / "text.gdb").write_bytes(phys.read_bytes()[text[0] : text[0] + text[1]])
    phys.unlink()
    return seconds


def run() -> dict[str, Any]:
    guest = ensure_guest()
    text_addr, text_bytes = text_section()
    tmp = Path(tempfile.mkdtemp(prefix="ud-"))
    env = undebug_env(tmp / "run")
    samples: dict[str, list[float]] = {}
    adopted = plain = None
    direct = False
    try:
        adopted = AdoptedQemu(tmp / "adopted")
        subprocess.run([sys.executable, "-m", "undebug.cli", "attach", "--name", "adopted",
                        "--gdb", str(adopted.gdb_sock), "--qmp", str(adopted.qmp_sock),
                        "--elf", str(GUEST)], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run([sys.executable, "-m", "undebug.cli", "stop", "adopted"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        (tmp / "plain").mkdir()
        plain = PlainGuest(tmp / "plain", APPEND, ready=READY)
        for i in range(ROUNDS):
            out = str(tmp / "text.undebug") if i == 0 else "-"
            side = json.loads(subprocess.run(
                [sys.executable, "-c", UNDEBUG_SIDE, "adopted", str(SIZE), str(text_addr),
                 str(len(text_bytes)), out], env=env, check=True, capture_output=True,
                text=True).stdout)
            direct = side.pop("direct")
            side["gdb_dump_phys_s"] = gdb_dump(plain, tmp, (text_addr, len(text_bytes))
                                               if i == 0 else None)
            for key, value in side.items():
                samples.setdefault(key, []).append(value)
        identical = {"undebug": (tmp / "text.undebug").read_bytes() == text_bytes,
                     "gdb": (tmp / "text.gdb").read_bytes() == text_bytes}
    finally:
        subprocess.run([sys.executable, "-m", "undebug.cli", "kill", "adopted"], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        teardown(tmp, plain, adopted)  # type: ignore[arg-type]
    med = {k: median(v) for k, v in samples.items()}
    ratio = med["gdb_dump_phys_s"] / med["read_physical_s"]
    return {
        "samples": samples,
        "summary": {
            "size_mib": SIZE >> 20, "guest": guest,
            "baseline": "gdb 13 dump binary memory (physical) over QEMU 7.2's gdbstub (unix "
                        "socket), on an identical second QEMU (-M pc -accel tcg -m 256 -smp 2)",
            "direct_reads_used": direct,
            "median_s": {k: round(v, 4) for k, v in med.items()},
            "mb_per_s": {"undebug_attached_read_physical": round(64 / med["read_physical_s"], 1),
                         "gdb_dump_physical": round(64 / med["gdb_dump_phys_s"], 1)},
            "speedup_read_physical_vs_gdb_dump": round(ratio, 1),
            "speedup_incl_attach_vs_gdb_dump": round(
                med["gdb_dump_phys_s"] / (med["read_physical_s"] + med["attach_s"]), 1),
            "goal": "attached read_physical >= 50x faster than gdb dump",
            "goal_met": ratio >= 50,
            "text_identical": identical,
            "rounds": ROUNDS,
        },
    }
