"""An adopted QEMU's RAM read from QEMU's own memory (undebug/session/process_ram.py), on
a QEMU the test starts itself with the reference guest: the RAM ranges QEMU reports,
its pid from the QMP socket, and the fallback to the gdbstub (with a warning) when there
is no QMP to ask."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

from tests.conftest import undebug
from tests.test_attach import foreign_qemu  # noqa: F401 (a fixture)
from undebug.session.process_ram import map_process_ram, peer_pid, ram_ranges


def test_ram_ranges_and_pid_from_a_real_qemu(foreign_qemu) -> None:  # noqa: F811
    _, qmp_path, _, _, proc = foreign_qemu

    async def ask() -> tuple[list[tuple[int, int]], list[tuple[int, int, int]], int]:
        from qemu.qmp import QMPClient

        client = QMPClient("test")
        await client.connect(str(qmp_path))
        try:
            mtree = await client.execute("human-monitor-command",
                                         {"command-line": "info mtree -f"})
            ram = await map_process_ram(client, str(qmp_path))
            try:
                return ram_ranges(mtree), ram.layout, peer_pid(str(qmp_path))
            finally:
                ram.close()
        finally:
            await client.disconnect()

    ranges, layout, pid = asyncio.run(ask())
    assert pid == proc.pid
    # -m 128 on pc: RAM below the legacy VGA/BIOS hole and up to 128 MiB, nothing above
    assert ranges[0][0] == 0 and ranges[-1][1] == (128 << 20) - 1, ranges
    assert all(a[1] < b[0] for a, b in itertools.pairwise(ranges)), ranges
    # pc.ram is one block: its pieces around the holes below 1 MiB are read as one
    assert [(g, s) for g, _, s in layout] == [(0, 128 << 20)], layout
    assert layout[0][1] > 0


def test_without_qmp_reads_fall_back_to_the_gdbstub_with_a_warning(
        foreign_qemu, guest_image: Path) -> None:  # noqa: F811
    port = foreign_qemu[0]
    time.sleep(0.5)
    assert undebug("attach", "--name", "noqmp", "--gdb", f"127.0.0.1:{port}",
                   "--elf", str(guest_image)).code == 0
    try:
        threads = undebug("threads", "noqmp", "--json")
        assert threads.code == 0, threads.stderr
        warnings = threads.json()["warnings"]
        assert any(w.startswith("reads go through the gdbstub (slow)") for w in warnings), \
            warnings
    finally:
        undebug("kill", "noqmp")
