"""Bulk read of 64 MiB of an attached guest's RAM: undebug's in-place read of the adopted
QEMU's memory vs gdb's dump over the gdbstub.

Guest: the reference guest, ``threads=4``, ``-smp 2 -m 256``, in a QEMU this bench starts
itself (as a user's VM would be, e.g. by ``ops run``), with a unix-socket gdbstub and a
second QMP unix socket for ``undebug attach --gdb SOCK --qmp SOCK`` (stopped, so its
workers do not load the host). undebug side, timed in a fresh Python process per round:
attach (``LiveTarget(...)``: the supervisor's ``process_ram`` reply, QEMU's pid checked),
``read_physical(0, 64 MiB)`` (``process_vm_readv`` on QEMU, twice), ``read(VBASE, 64 MiB)``
of guest-virtual memory (page-table walk), and the supervisor's slow paths for 4 MiB, as
an adopted guest read before this (QMP ``pmemsave`` and gdbstub ``m`` packets).

Baseline: gdb 13 ``dump binary memory`` of the same ranges over QEMU's gdbstub on an
identical *second* QEMU started here (the supervisor owns the first one's only gdbstub
connection), as in bench/memory.py (whose gdb round this reuses). Interleaved rounds,
medians. Correctness: the kernel text read by undebug in place (physical and virtual)
must equal gdb's dump and the ELF.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.memory import ROUNDS, SIZE, VBASE, measured_rounds, text_section
from bench.threads import (
    GUEST,
    PlainGuest,
    ensure_guest,
    median,
    teardown,
    undebug,
    undebug_env,
)

APPEND = "threads=4"
RPC_SIZE = 4 << 20
NAME = "adopted"

UNDEBUG_SIDE = r"""
import json, sys, time
from pathlib import Path
from undebug.session.store import SessionDir
from undebug.live_target import LiveTarget
name, size, rpc_size, vbase, text_addr, text_size, out = sys.argv[1:8]
size, rpc_size, vbase, text_addr, text_size = map(int, (size, rpc_size, vbase, text_addr, text_size))
r = {}
t = time.perf_counter()
lt = LiveTarget(SessionDir.named(name))
r["attach_s"] = time.perf_counter() - t
r["in_place"] = lt._ram is not None
r["warnings"] = lt.warnings
try:
    for key in ("read_physical_s", "read_physical_again_s"):
        t = time.perf_counter(); data = lt.read_physical(0, size); r[key] = time.perf_counter() - t
        assert len(data) == size
    del data
    t = time.perf_counter(); data = lt.read(vbase, size); r["read_virtual_s"] = time.perf_counter() - t
    assert len(data) == size
    del data
    t = time.perf_counter(); data = lt._rpc_read(vbase, rpc_size, physical=True)
    r["rpc_pmemsave_s"] = time.perf_counter() - t
    t = time.perf_counter(); data = lt._rpc_read(vbase, rpc_size, physical=False)
    r["rpc_gdbstub_s"] = time.perf_counter() - t
    assert len(data) == rpc_size
    if out != "-":
        Path(out + ".phys").write_bytes(lt.read_physical(text_addr, text_size))
        Path(out + ".virt").write_bytes(lt.read(text_addr, text_size))
finally:
    lt.close()
print(json.dumps(r))
"""


class AdoptedGuest:
    """A QEMU started here, then adopted with ``undebug attach`` (``undebug kill`` at close
    detaches; the QEMU is then ended by PID)."""

    def __init__(self, directory: Path, runtime: Path) -> None:
        directory.mkdir()
        qmp = directory / "undebug.qmp"
        self.qemu = PlainGuest(directory, APPEND, args=(
            "-qmp", f"unix:{qmp},server=on,wait=off"))
        self.env = undebug_env(runtime)
        self.attached = False
        try:
            reply = json.loads(undebug("attach", "--name", NAME, "--gdb", str(self.qemu.gdb_sock),
                                       "--qmp", str(qmp), "--elf", str(GUEST),
                                       "--json", env=self.env, capture_output=True).stdout)
            self.attached = True
            self.ram_read = reply["status"]["ram_read"]
            self.warnings = reply["warnings"]
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.attached:
            subprocess.run([sys.executable, "-m", "undebug.cli", "kill", NAME], env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        self.qemu.close()


def run() -> dict[str, Any]:
    guest = ensure_guest()
    text_addr, text_bytes = text_section()
    tmp = Path(tempfile.mkdtemp(prefix="ud-"))
    samples: dict[str, list[float]] = {}
    plain = adopted = None
    check: dict[str, Any] = {}
    try:
        adopted = AdoptedGuest(tmp / "adopted", tmp / "run")
        check["status_ram_read"] = adopted.ram_read
        check["attach_warnings"] = adopted.warnings
        (tmp / "plain").mkdir()
        plain = PlainGuest(tmp / "plain", APPEND)
        measured_rounds([sys.executable, "-c", UNDEBUG_SIDE, NAME, str(SIZE), str(RPC_SIZE),
                         str(VBASE)], adopted.env, plain, tmp, (text_addr, text_bytes),
                        ("in_place", "warnings"),
                        (("read_physical", "phys"), ("read_virtual", "virt")), samples, check)
        check["in_place_used"] = check.pop("in_place")
        check["target_warnings"] = check.pop("warnings")
    finally:
        teardown(tmp, adopted, plain)

    med = {k: median(v) for k, v in samples.items()}

    def mbps(key: str, size: int = SIZE) -> float:
        return round(size / (1 << 20) / med[key], 1)

    speedup = med["gdb_dump_phys_s"] / med["read_physical_s"]
    return {
        "samples": samples,
        "summary": {
            "size_mib": SIZE >> 20,
            "guest": guest,
            "virtual_range": f"{VBASE:#x}..{VBASE + SIZE:#x}",
            "baseline": "gdb 13 dump binary memory over QEMU 7.2's gdbstub (unix socket), on an "
                        "identical second QEMU (-M pc -accel tcg -m 256 -smp 2, threads=4)",
            "median_s": {k: round(v, 4) for k, v in med.items()},
            "mb_per_s": {
                "undebug_read_physical": mbps("read_physical_s"),
                "undebug_read_physical_again": mbps("read_physical_again_s"),
                "undebug_read_virtual": mbps("read_virtual_s"),
                "undebug_rpc_pmemsave_4mib": mbps("rpc_pmemsave_s", RPC_SIZE),
                "undebug_rpc_gdbstub_4mib": mbps("rpc_gdbstub_s", RPC_SIZE),
                "gdb_dump_physical": mbps("gdb_dump_phys_s"),
                "gdb_dump_virtual": mbps("gdb_dump_virt_s"),
            },
            "speedup_read_physical_vs_gdb_dump": round(speedup, 1),
            "speedup_read_physical_incl_attach_vs_gdb_dump": round(
                med["gdb_dump_phys_s"] / (med["read_physical_s"] + med["attach_s"]), 1),
            "speedup_read_virtual_vs_gdb_dump": round(
                med["gdb_dump_virt_s"] / med["read_virtual_s"], 1),
            "goal": "read_physical on an attached guest >= 50x faster than gdb dump",
            "goal_met": speedup >= 50 and bool(check.get("in_place_used")),
            "bytes_agree": check,
            "rounds": ROUNDS,
        },
    }
