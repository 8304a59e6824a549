"""The guest NIC as QEMU sees it, read from the supervisor's raw ``net_host`` answer
(QMP ``query-rx-filter``; HMP ``info network`` and ``info usernet`` text): typed here,
bounded, for ``undebug net`` and the TUI's network pane alike. It needs no guest
knowledge: it is the host's side, kept apart from lwIP's sockets.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["HostNetwork", "NatRow", "NetFilter", "Nic", "host_network", "parse_filters",
           "parse_usernet"]

# a row of HMP `info usernet` (slirp): "  TCP[ESTABLISHED]   88  127.0.0.1 39305  10.0.2.15  7  0  0"
_USERNET_ROW = re.compile(r"^\s*([A-Z]+)\[([^\]]*)\]\s+(-?\d+)\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)"
                          r"\s+(\d+)\s+(\d+)\s*$")
_USERNET_HUB = re.compile(r"^Hub\s+(-?\d+)\s+\(([^)]*)\):")
_FILTER = re.compile(r"^\s+-\s+([^:]+):\s+type=([^,]+),(.*)$")
MAX_HOST_ROWS = 100_000  # lines of HMP text read (QEMU's own output, bounded anyway)


@dataclass(frozen=True)
class Nic:
    """One NIC's receive filter (``query-rx-filter``)."""

    name: str
    mac: str | None
    promiscuous: bool | None
    broadcast_allowed: bool | None
    multicast: str | None
    unicast: str | None
    link: bool | None  # QEMU 7.2 has no query of a NIC's link state (set_link only sets it)


@dataclass(frozen=True)
class NatRow:
    """One connection of the user-mode NAT (slirp), as ``info usernet`` lists it."""

    netdev: str | None
    proto: str
    state: str
    fd: int
    src_addr: str
    src_port: int
    dst_addr: str
    dst_port: int
    recv_queue: int
    send_queue: int


@dataclass(frozen=True)
class NetFilter:
    """A netdev filter (a capture is a ``filter-dump``)."""

    id: str
    type: str
    file: str
    netdev: str


@dataclass(frozen=True)
class HostNetwork:
    nics: list[Nic]
    usernet: list[NatRow]
    filters: list[NetFilter]
    network: str  # HMP ``info network``, as QEMU wrote it

    def to_json(self) -> dict[str, Any]:
        """The ``host`` object of ``net --json`` (docs/cli.md)."""
        return {"nics": [asdict(n) for n in self.nics], "usernet": [asdict(r) for r in self.usernet],
                "filters": [asdict(f) for f in self.filters], "network": self.network}


def parse_usernet(text: str) -> list[NatRow]:
    """The user-mode NAT's rows, each with the netdev (hub) it belongs to."""
    rows, netdev = [], None
    for line in text.splitlines()[:MAX_HOST_ROWS]:
        hub = _USERNET_HUB.match(line)
        if hub:
            netdev = hub.group(2)
            continue
        row = _USERNET_ROW.match(line)
        if row:
            rows.append(NatRow(netdev, row.group(1).lower(), row.group(2), int(row.group(3)),
                               row.group(4), int(row.group(5)), row.group(6),
                               int(row.group(7)), int(row.group(8)), int(row.group(9))))
    return rows


def parse_filters(text: str) -> list[NetFilter]:
    """The netdev filters HMP ``info network`` lists."""
    out = []
    for line in text.splitlines()[:MAX_HOST_ROWS]:
        match = _FILTER.match(line)
        if match:
            props = dict(p.split("=", 1) for p in match.group(3).split(",") if "=" in p)
            out.append(NetFilter(match.group(1).strip(), match.group(2),
                                 props.get("file", ""), props.get("netdev", "")))
    return out


def _optional(value: Any, kind: type) -> Any:
    return value if isinstance(value, kind) else None


def host_network(raw: dict[str, Any]) -> HostNetwork:
    """The supervisor's raw ``net_host`` answer, typed."""
    nics = [Nic(str(nic.get("name", "")), _optional(nic.get("main-mac"), str),
                _optional(nic.get("promiscuous"), bool),
                _optional(nic.get("broadcast-allowed"), bool),
                _optional(nic.get("multicast"), str), _optional(nic.get("unicast"), str), None)
            for nic in raw.get("rx_filters") or [] if isinstance(nic, dict)]
    network = str(raw.get("network", ""))
    return HostNetwork(nics, parse_usernet(str(raw.get("usernet", ""))), parse_filters(network),
                       network)
