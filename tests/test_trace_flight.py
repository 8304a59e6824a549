"""The flight recorder's ring descriptors are guest memory: a guest can corrupt them. Real
QEMU (TCG): the reference guest crashes (and stays paused), the test overwrites its ring
descriptors through the supervisor's memory writes, then reads the flight recorder with
the CLI. A ring whose storage lies outside ``undebug_trace_ring_data`` or overlaps
another ring's, and a ring count larger than ``undebug_trace_rings`` holds, are reported
and skipped (before, their bytes were read and joined to the stream).
"""

from __future__ import annotations

import base64
import struct
import time
from pathlib import Path
from typing import Any

from tests.conftest import undebug
from undebug.elf import ElfFile
from undebug.session.client import SupervisorClient
from undebug.session.store import SessionDir

RING = 128


def write(name: str, address: int, data: bytes) -> None:
    with SupervisorClient(SessionDir.named(name)) as client:
        client.call("write_memory", address=address, data=base64.b64encode(data).decode())


def state(name: str) -> str:
    guests = undebug("ps", "--json").json()["guests"]
    return str(next(g for g in guests if g["name"] == name)["state"])


def flight(name: str) -> dict[str, Any]:
    shown = undebug("trace", "show", name, "--flight-recorder", "--json")
    assert shown.code == 0, shown.stderr
    return shown.json()  # type: ignore[no-any-return]


def test_corrupt_ring_descriptors_are_reported_and_skipped(guest_image: Path) -> None:
    name = "tf-corrupt"
    elf = ElfFile(guest_image)
    rings = elf.symbol("undebug_trace_rings")
    storage = elf.symbol("undebug_trace_ring_data")
    header = elf.symbol("undebug_trace_header")
    main = elf.symbol("worker_main")
    assert rings and storage and header and main
    started = undebug("run", "-d", "--no-trace", "--name", name, "--smp", "2", "--append",
                      "threads=4 crash=null crash_after=200", str(guest_image))
    try:
        assert started.code == 0, started.stderr
        deadline = time.monotonic() + 30
        while state(name) != "guest-panicked":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        intact = flight(name)
        assert intact["warnings"] == [] and intact["damage"] == []
        assert {e["cpu"] for e in intact["events"]} == {0, 1}
        from tracers.flight import read_flight_recorder
        from undebug.live_target import LiveTarget

        with LiveTarget(SessionDir.named(name)) as target:
            before = read_flight_recorder(target)
            ring0 = target.read(rings.address, RING)
        data0, size0 = struct.unpack_from("<QQ", ring0, 8)
        assert storage.address <= data0 < storage.address + storage.size
        assert [r.cpu for r in before.rings] == [0, 1]

        # ring 1 points at ring 0's storage: its records would be read twice
        write(name, rings.address + RING + 8, struct.pack("<QQ", data0, size0))
        doc = flight(name)
        assert any("ring 1" in w and "overlaps" in w for w in doc["warnings"]), doc["warnings"]
        assert {e["cpu"] for e in doc["events"]} == {0} and doc["damage"] == []
        cpu0 = [e["seq"] for e in intact["events"] if e["cpu"] == 0]
        assert [e["seq"] for e in doc["events"]] == cpu0  # ring 0 alone, once

        # ring 1 points into the kernel's code: outside the ring storage
        write(name, rings.address + RING + 8, struct.pack("<QQ", main.address, 4096))
        doc = flight(name)
        assert any("ring 1" in w and "outside undebug_trace_ring_data" in w
                   for w in doc["warnings"]), doc["warnings"]
        assert [e["seq"] for e in doc["events"]] == cpu0 and doc["damage"] == []

        # the header claims 255 rings: only the array's 16 descriptors are read
        count = rings.size // RING
        write(name, header.address + 38, struct.pack("<H", 255))
        doc = flight(name)
        assert f"the trace header claims 255 rings; undebug_trace_rings holds {count}: " \
            f"reading {count}" in doc["warnings"]
    finally:
        undebug("kill", name)
