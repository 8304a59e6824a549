"""The guest-physical address map as QEMU describes it: RAM, ROM and device MMIO, named.

Two QMP sources, asked by the supervisor: the flat view of the system address space
(HMP ``info mtree -f`` through ``human-monitor-command``: every range the CPU sees, with
the memory region's name, e.g. ``ioapic``, ``virtio-pci-common-virtio-serial``) and
``query-pci`` (each PCI function's memory BARs, by bus/slot/function and vendor:device).
QEMU's text is parsed here, bounded, so that nothing above sees HMP.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["DeviceRange", "machine_map", "parse_flat_view", "pci_ranges"]

MAX_LINES = 20_000
MAX_NAME = 120
_RANGE = re.compile(r"^\s+([0-9a-f]{1,16})-([0-9a-f]{1,16}) \(prio -?\d+, ([a-z/ ]+)\): (.*)$")
_KINDS = {"ram": "ram", "rom": "rom", "romd": "rom", "i/o": "mmio"}


@dataclass(frozen=True)
class DeviceRange:
    """Guest-physical ``[start, end)`` and what backs it: ``kind`` ram, rom or mmio."""

    start: int
    end: int
    kind: str
    name: str
    source: str  # "mtree" or "pci"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DeviceRange:
        return cls(int(raw["start"]), int(raw["end"]), str(raw["kind"]), str(raw["name"]),
                   str(raw["source"]))


def parse_flat_view(text: str) -> list[DeviceRange]:
    """The ranges of the flat view of address space "memory" in ``info mtree -f``."""
    out: list[DeviceRange] = []
    in_memory = False
    for line in text.splitlines()[:MAX_LINES]:
        if line.startswith("FlatView"):
            if out:
                break  # the system view is done: the others are DMA and SMM views
            in_memory = False
        elif line.startswith(' AS "memory"'):
            in_memory = True
        elif in_memory and (found := _RANGE.match(line)):
            start, last = int(found.group(1), 16), int(found.group(2), 16)
            kind = _KINDS.get(found.group(3).strip())
            if kind is None or last < start:
                continue
            name = found.group(4).split(" @", 1)[0].removesuffix(" KVM").strip()
            out.append(DeviceRange(start, last + 1, kind, name[:MAX_NAME], "mtree"))
    return out


def pci_ranges(buses: Any) -> list[DeviceRange]:
    """The memory BARs of every function in a ``query-pci`` reply (I/O-port BARs are not
    in the physical address space)."""
    out: list[DeviceRange] = []
    for bus in _list(buses):
        for dev in _list(bus.get("devices")) if isinstance(bus, dict) else []:
            if not isinstance(dev, dict):
                continue
            ident = _dict(dev.get("id"))
            where = f"{_int(dev.get('bus')):02x}:{_int(dev.get('slot')):02x}." \
                f"{_int(dev.get('function'))}"
            what = str(_dict(dev.get("class_info")).get("desc") or
                       f"{_int(ident.get('vendor')):04x}:{_int(ident.get('device')):04x}")
            for bar in _list(dev.get("regions")):
                if not isinstance(bar, dict) or bar.get("type") != "memory":
                    continue
                start, size = bar.get("address"), bar.get("size")
                if not isinstance(start, int) or not isinstance(size, int) or size <= 0 \
                        or start <= 0 or start + size > 1 << 64:
                    continue  # not assigned yet (the guest has not programmed the BAR)
                name = f"pci {where} {what} BAR{_int(bar.get('bar'))}"
                out.append(DeviceRange(start, start + size, "mmio", name[:MAX_NAME], "pci"))
    return out


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and 0 <= value < 1 << 16 else 0


async def machine_map(client: Any) -> list[DeviceRange]:
    """Ask QEMU (a ``qemu.qmp.QMPClient``) for both maps."""
    text = await client.execute("human-monitor-command", {"command-line": "info mtree -f"})
    buses = await client.execute("query-pci")
    return parse_flat_view(str(text)) + pci_ranges(buses)
