"""``undebug net``: a guest's network as ``ss -tanp`` shows a Linux host's, and the NIC as
QEMU sees it, kept apart.

The guest's view is lwIP's own state (:mod:`undebug.os.lwip`); the host's needs no guest
knowledge: QMP ``query-rx-filter`` and HMP ``info network`` / ``info usernet`` (the user-mode
NAT's connections), asked through the supervisor, which owns QMP. ``--capture`` has QEMU
write the NIC's packets to a pcap (a ``filter-dump`` added at run time).
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from undebug.commands import add_elf_arguments, command
from undebug.errors import UsageError
from undebug.output import Report
from undebug.session.client import SupervisorClient
from undebug.session.store import SessionDir
from undebug.text import escape

if TYPE_CHECKING:
    from undebug.os.lwip import NetSnapshot

# a row of HMP `info usernet` (slirp): "  TCP[ESTABLISHED]   88  127.0.0.1 39305  10.0.2.15  7  0  0"
_USERNET_ROW = re.compile(r"^\s*([A-Z]+)\[([^\]]*)\]\s+(-?\d+)\s+(\S+)\s+(\d+)\s+(\S+)\s+(\d+)"
                          r"\s+(\d+)\s+(\d+)\s*$")
_USERNET_HUB = re.compile(r"^Hub\s+(-?\d+)\s+\(([^)]*)\):")
_FILTER = re.compile(r"^\s+-\s+([^:]+):\s+type=([^,]+),(.*)$")
MAX_HOST_ROWS = 100_000  # lines of HMP text read (QEMU's own output, bounded anyway)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="a guest's name (see undebug ps)")
    add_elf_arguments(p)
    p.add_argument("--no-stop", action="store_true",
                   help="do not pause a running guest (what is read may be torn)")
    capture = p.add_mutually_exclusive_group()
    capture.add_argument("--capture", type=Path, metavar="FILE",
                         help="start writing the guest NIC's packets to FILE (pcap, 0600) "
                         "until --capture-stop or the guest ends")
    capture.add_argument("--capture-stop", action="store_true", help="end the capture")


def parse_usernet(text: str) -> list[dict[str, Any]]:
    """The user-mode NAT's rows: proto, state, fd, source/destination address and port,
    recv_queue, send_queue, and the netdev they belong to."""
    rows, netdev = [], None
    for line in text.splitlines()[:MAX_HOST_ROWS]:
        hub = _USERNET_HUB.match(line)
        if hub:
            netdev = hub.group(2)
            continue
        row = _USERNET_ROW.match(line)
        if row:
            rows.append({"netdev": netdev, "proto": row.group(1).lower(), "state": row.group(2),
                         "fd": int(row.group(3)), "src_addr": row.group(4),
                         "src_port": int(row.group(5)), "dst_addr": row.group(6),
                         "dst_port": int(row.group(7)), "recv_queue": int(row.group(8)),
                         "send_queue": int(row.group(9))})
    return rows


def parse_filters(text: str) -> list[dict[str, str]]:
    """The netdev filters HMP ``info network`` lists (a capture is a ``filter-dump``)."""
    out = []
    for line in text.splitlines()[:MAX_HOST_ROWS]:
        match = _FILTER.match(line)
        if match:
            props = dict(p.split("=", 1) for p in match.group(3).split(",") if "=" in p)
            out.append({"id": match.group(1).strip(), "type": match.group(2),
                        "file": props.get("file", ""), "netdev": props.get("netdev", "")})
    return out


def host_view(raw: dict[str, Any]) -> dict[str, Any]:
    """The supervisor's raw ``net_host`` answer, as the ``host`` object."""
    nics = []
    for nic in raw.get("rx_filters") or []:
        if isinstance(nic, dict):
            nics.append({"name": str(nic.get("name", "")), "mac": nic.get("main-mac"),
                         "promiscuous": nic.get("promiscuous"),
                         "broadcast_allowed": nic.get("broadcast-allowed"),
                         "multicast": nic.get("multicast"), "unicast": nic.get("unicast"),
                         # QEMU 7.2 has no query of a NIC's link state (set_link only sets it)
                         "link": None})
    network = str(raw.get("network", ""))
    return {"nics": nics, "usernet": parse_usernet(str(raw.get("usernet", ""))),
            "filters": parse_filters(network), "network": network}


def _capture(client: SupervisorClient, args: argparse.Namespace) -> dict[str, Any] | None:
    if args.capture_stop:
        client.capture_stop()
        return {"state": "stopped", "file": None}
    if args.capture is None:
        return None
    path = args.capture.resolve()
    if path.is_dir():
        raise UsageError(f"--capture {args.capture} is a directory", hint="name a file")
    try:  # ours, 0600, before QEMU opens it (QEMU truncates it and keeps the mode)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        os.fchmod(fd, 0o600)
        os.close(fd)
    except OSError as exc:
        raise UsageError(f"--capture {args.capture}: {exc.strerror}") from None
    client.capture_start(str(path))
    return {"state": "started", "file": str(path)}


def _guest_view(args: argparse.Namespace, warnings: list[str]) -> NetSnapshot | None:
    from undebug.os.lwip import has_lwip, walk_lwip
    from undebug.target import open_target

    with open_target(args.name, args.elf, stop=not args.no_stop, force=args.force) as target:
        warnings += target.warnings
        if not has_lwip(target):
            warnings.append(f"{target.elf.path} has no lwIP symbols with DWARF "
                            "(tcp_active_pcbs, struct tcp_pcb): no guest view of the "
                            "network, only QEMU's")
            return None
        snapshot = walk_lwip(target)
    warnings += snapshot.warnings
    return snapshot


def _endpoint(addr: str | None, port: int | None) -> str:
    host = "*" if addr in (None, "0.0.0.0", "::") else str(addr)
    return f"{host}:{port if port else '*'}"


def _render(data: dict[str, Any]) -> list[str]:
    lines = []
    for nif in data["interfaces"]:
        lines.append(f"{escape(nif['name'])}: mac {nif['mac'] or '-'} inet {nif['ipv4']} "
                     f"netmask {nif['netmask']} gateway {nif['gateway']} mtu {nif['mtu']} "
                     f"<{','.join(nif['flags'])}>")
    table = [("Netid", "State", "Recv-Q", "Send-Q", "Local Address:Port",
              "Peer Address:Port", "Process")]
    for s in data["sockets"]:
        who = ",".join(p for p in (f"fd={s['fd']}" if s["fd"] is not None else "",
                                   f"thread={escape(s['thread'])}" if s["thread"] else "") if p)
        table.append((s["proto"], escape(s["state"]),
                      "-" if s["recv_queue"] is None else str(s["recv_queue"]),
                      "-" if s["send_queue"] is None else str(s["send_queue"]),
                      _endpoint(s["local_addr"], s["local_port"]),
                      _endpoint(s["remote_addr"], s["remote_port"]), who))
    if data["lwip"]:
        widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                  for r in table]
    host = data["host"]
    for nic in host["nics"]:
        lines.append(f"host: NIC {escape(nic['name'])} mac {nic['mac']}"
                     f"{' promiscuous' if nic['promiscuous'] else ''}")
    if not host["nics"]:
        lines.append("host: no NIC")
    for row in host["usernet"]:
        lines.append(f"host: NAT {row['proto']} {escape(row['state'])} "
                     f"{row['src_addr']}:{row['src_port']} -> {row['dst_addr']}:{row['dst_port']}")
    for flt in host["filters"]:
        lines.append(f"host: filter {escape(flt['id'])} {escape(flt['type'])} "
                     f"{escape(flt['file'])}")
    if data.get("capture"):
        capture = data["capture"]
        lines.append(f"capture {capture['state']}" +
                     (f": {escape(capture['file'])}" if capture["file"] else ""))
    return lines


@command("net", "the guest's network: interfaces and sockets, and the NIC as QEMU sees it",
         _arguments,
         description="Interfaces and sockets of the guest's lwIP (one line per socket, as ss "
         "-tanp), read from guest memory while the guest is held still; then QEMU's view of "
         "the NIC (rx filter, MAC) and of the user-mode NAT's connections, which needs no "
         "guest knowledge. --capture FILE has QEMU write the NIC's packets to FILE (pcap).")
def net(args: argparse.Namespace) -> Report:
    warnings: list[str] = []
    with SupervisorClient(SessionDir.named(args.name)) as client:
        capture = _capture(client, args)
        snapshot = _guest_view(args, warnings)
        host = host_view(client.net_host())
    data = {
        "lwip": snapshot is not None,
        "interfaces": [asdict(i) for i in snapshot.interfaces] if snapshot else [],
        "sockets": [s.to_json() for s in snapshot.sockets] if snapshot else [],
        "host": host,
        "capture": capture,
    }
    return Report(data=data, warnings=warnings, render=lambda: _render(data))
