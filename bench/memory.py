"""Bulk read of 64 MiB of guest RAM: undebug's shared-RAM mmap vs gdb's dump over the gdbstub.

Guest: the reference guest, ``threads=4``, ``-smp 2 -m 256``. undebug side, on a guest
started by ``undebug run -d`` (the supervisor shares guest RAM as a file that
``LiveTarget`` mmaps), timed in a fresh Python process per round: attach
(``LiveTarget(...)``), ``read_physical(0, 64 MiB)`` (first read after attach, then a
second on the same mapping), ``read(VBASE, 64 MiB)`` of guest-virtual memory (walks the
guest's page tables, 4 KiB pages), and the supervisor's RPC paths for 4 MiB:
``_rpc_read(..., physical=False)`` (gdbstub ``m`` packets) and
``_rpc_read(..., physical=True)``. Diagnostic floor: one slice of the mapping itself.

Baseline: gdb 13 ``dump binary memory`` of the same ranges over QEMU's gdbstub on an
identical *second* QEMU started here (the supervisor owns the first guest's only gdbstub
connection): physical 0..64 MiB after ``maint packet Qqemu.PhyMemMode:1``, then virtual
VBASE..VBASE+64 MiB, timed inside gdb. Interleaved rounds, medians.

Correctness: the kernel text (``.text`` at 1 MiB, identical in both guests and unchanged
while paused) read by undebug (physical and virtual) must equal gdb's dump and the ELF.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.threads import GUEST, PlainGuest, UndebugGuest, ensure_guest, median, teardown

ROUNDS = 3
APPEND = "threads=4"
SIZE = 64 << 20
RPC_SIZE = 4 << 20
# Guest-virtual range for the virtual reads: identity-mapped RAM at 128..192 MiB. Lower RAM
# holds unmapped guard pages below thread stacks (page 0 and boot_stack_guard too), which
# neither undebug nor gdb can read through.
VBASE = 0x8000000

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
r["mmap"] = lt._ram is not None
try:
    for key in ("read_physical_s", "read_physical_again_s"):
        t = time.perf_counter(); data = lt.read_physical(0, size); r[key] = time.perf_counter() - t
        assert len(data) == size
    del data
    if lt._ram is not None:
        t = time.perf_counter(); lt._ram.map[0:size]; r["mmap_slice_floor_s"] = time.perf_counter() - t
    t = time.perf_counter(); data = lt.read(vbase, size); r["read_virtual_s"] = time.perf_counter() - t
    assert len(data) == size
    del data
    t = time.perf_counter(); data = lt._rpc_read(vbase, rpc_size, physical=False)
    r["rpc_read_memory_s"] = time.perf_counter() - t
    assert len(data) == rpc_size
    t = time.perf_counter(); data = lt._rpc_read(vbase, rpc_size, physical=True)
    r["rpc_read_physical_s"] = time.perf_counter() - t
    assert len(data) == rpc_size
    if out != "-":
        Path(out + ".phys").write_bytes(lt.read_physical(text_addr, text_size))
        Path(out + ".virt").write_bytes(lt.read(text_addr, text_size))
        Path(out + ".rpc").write_bytes(lt._rpc_read(text_addr, text_size, physical=False))
finally:
    lt.close()
print(json.dumps(r))
"""


def text_section() -> tuple[int, bytes]:
    from elftools.elf.elffile import ELFFile

    with GUEST.open("rb") as f:
        section = ELFFile(f).get_section_by_name(".text")
        return section["sh_addr"], section.data()


def gdb_dumps(guest: PlainGuest, tmp: Path, text: tuple[int, int] | None) -> dict[str, float]:
    guest.stop()
    phys, virt = tmp / "phys.bin", tmp / "virt.bin"
    cmds = ["target remote " + str(guest.gdb_sock), "python import time",
            "maint packet Qqemu.PhyMemMode:1",
            "python t = time.perf_counter()",
            f"dump binary memory {phys} 0 {SIZE:#x}",
            "python print('DUMP phys', time.perf_counter() - t)",
            "maint packet Qqemu.PhyMemMode:0",
            "python t = time.perf_counter()",
            f"dump binary memory {virt} {VBASE:#x} {VBASE + SIZE:#x}",
            "python print('DUMP virt', time.perf_counter() - t)"]
    if text is not None:
        cmds.append(f"dump binary memory {tmp / 'text.virt'} {text[0]:#x} {text[0] + text[1]:#x}")
    cmds.append("detach")
    argv = ["gdb", "-batch", "-nx"]
    for c in cmds:
        argv += ["-ex", c]
    start = time.perf_counter()
    out = subprocess.run([*argv, str(GUEST)], capture_output=True, text=True, check=True,
                         timeout=300).stdout
    wall = time.perf_counter() - start
    times = {line.split()[1]: float(line.split()[2]) for line in out.splitlines()
             if line.startswith("DUMP ")}
    if phys.stat().st_size != SIZE or virt.stat().st_size != SIZE:
        raise RuntimeError(f"gdb dumped {phys.stat().st_size} / {virt.stat().st_size} bytes")
    if text is not None:
        (tmp / "text.phys").write_bytes(phys.read_bytes()[text[0]:text[0] + text[1]])
    phys.unlink()
    virt.unlink()
    return {"gdb_dump_phys_s": times["phys"], "gdb_dump_virt_s": times["virt"], "gdb_wall_s": wall}


def measured_rounds(side: list[str], env: dict[str, str], plain: PlainGuest, tmp: Path,
                    text: tuple[int, bytes], flags: tuple[str, ...], blobs: tuple[str, ...],
                    samples: dict[str, list[float]], check: dict[str, Any]) -> None:
    """ROUNDS rounds of undebug's side (``side`` + the text range + where round 1 writes
    what it read) against gdb's dumps of the identical plain guest; timings go to
    ``samples``, the side's ``flags`` (how it read) to ``check``, and the text each read in
    round 1 (``blobs``: ``ud-text.<suffix>`` for undebug_read_<name>) is compared with the
    ELF's."""
    text_addr, text_bytes = text
    for i in range(ROUNDS):
        out = str(tmp / "ud-text") if i == 0 else "-"
        measured = json.loads(subprocess.run(
            [*side, str(text_addr), str(len(text_bytes)), out], env=env, check=True,
            capture_output=True, text=True).stdout)
        check.update({flag: measured.pop(flag) for flag in flags})
        dumps = gdb_dumps(plain, tmp, (text_addr, len(text_bytes)) if i == 0 else None)
        for key, value in {**measured, **dumps}.items():
            samples.setdefault(key, []).append(value)
    read = {"elf": text_bytes,
            **{f"undebug_{name}": (tmp / f"ud-text.{suffix}").read_bytes()
               for name, suffix in blobs},
            "gdb_dump_physical": (tmp / "text.phys").read_bytes(),
            "gdb_dump_virtual": (tmp / "text.virt").read_bytes()}
    check["region"] = f".text {text_addr:#x}+{len(text_bytes):#x}"
    check["identical"] = {k: v == text_bytes for k, v in read.items()}
    check["all_identical"] = all(check["identical"].values())


def run() -> dict[str, Any]:
    guest = ensure_guest()
    text_addr, text_bytes = text_section()
    tmp = Path(tempfile.mkdtemp(prefix="ud-"))
    samples: dict[str, list[float]] = {}
    plain = ud = None
    check: dict[str, Any] = {}
    try:
        ud = UndebugGuest(tmp / "run", "mem", APPEND)
        (tmp / "plain").mkdir()
        plain = PlainGuest(tmp / "plain", APPEND)
        measured_rounds([sys.executable, "-c", UNDEBUG_SIDE, "mem", str(SIZE), str(RPC_SIZE),
                         str(VBASE)], ud.env, plain, tmp, (text_addr, text_bytes), ("mmap",),
                        (("read_physical", "phys"), ("read_virtual", "virt"),
                         ("rpc_read_memory", "rpc")), samples, check)
        check["mmap_used"] = check.pop("mmap")
    finally:
        teardown(tmp, ud, plain)

    med = {k: median(v) for k, v in samples.items()}

    def mbps(key: str, size: int = SIZE) -> float:
        return round(size / (1 << 20) / med[key], 1)

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
                "mmap_slice_floor": mbps("mmap_slice_floor_s") if "mmap_slice_floor_s" in med
                else None,
                "undebug_read_virtual": mbps("read_virtual_s"),
                "undebug_rpc_read_memory_4mib": mbps("rpc_read_memory_s", RPC_SIZE),
                "undebug_rpc_read_physical_4mib": mbps("rpc_read_physical_s", RPC_SIZE),
                "gdb_dump_physical": mbps("gdb_dump_phys_s"),
                "gdb_dump_virtual": mbps("gdb_dump_virt_s"),
            },
            "speedup_read_physical_vs_gdb_dump": round(
                med["gdb_dump_phys_s"] / med["read_physical_s"], 1),
            "speedup_read_physical_incl_attach_vs_gdb_dump": round(
                med["gdb_dump_phys_s"] / (med["read_physical_s"] + med["attach_s"]), 1),
            "speedup_read_virtual_vs_gdb_dump": round(
                med["gdb_dump_virt_s"] / med["read_virtual_s"], 1),
            "speedup_rpc_read_memory_vs_gdb_dump": round(
                (med["gdb_dump_virt_s"] / SIZE) / (med["rpc_read_memory_s"] / RPC_SIZE), 2),
            "goal": "read_physical >= 50x faster than gdb dump",
            "goal_met": med["gdb_dump_phys_s"] / med["read_physical_s"] >= 50,
            "bytes_agree": check,
            "rounds": ROUNDS,
        },
    }
