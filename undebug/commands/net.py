"""``undebug net``: a guest's network as ``ss -tanp`` shows a Linux host's, and the NIC as
QEMU sees it, kept apart.

The guest's view is lwIP's own state (:mod:`undebug.os.lwip`); the host's needs no guest
knowledge: QMP ``query-rx-filter`` and HMP ``info network`` / ``info usernet`` (the user-mode
NAT's connections), asked through the supervisor, which owns QMP. ``--capture`` has QEMU
write the NIC's packets to a pcap (a ``filter-dump`` added at run time). On a dump bundle
the guest's view comes from the core (the same walker); QEMU's went with QEMU: ``host`` is
null, with a warning.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from undebug.commands import command
from undebug.commands.inspect import _target_arguments, _with_target
from undebug.errors import UsageError
from undebug.output import Report
from undebug.text import escape

if TYPE_CHECKING:
    from undebug.session.client import SupervisorClient
    from undebug.target import Target

NO_HOST_VIEW = "the host view (QEMU's NIC, NAT and filters) is not available from a dump"


def _arguments(p: argparse.ArgumentParser) -> None:
    _target_arguments(p)
    capture = p.add_mutually_exclusive_group()
    capture.add_argument("--capture", type=Path, metavar="FILE",
                         help="start writing the guest NIC's packets to FILE (pcap, 0600) "
                         "until --capture-stop or the guest ends")
    capture.add_argument("--capture-stop", action="store_true", help="end the capture")


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
    if host is None:
        return lines
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


def net_body(target: Target, args: argparse.Namespace) -> Report:
    """The guest's lwIP view from ``target``; QEMU's through the supervisor when the
    target is live, else ``host`` null and a warning (a bundle holds no QEMU)."""
    from undebug.live_target import LiveTarget
    from undebug.os.lwip import guest_network
    from undebug.session.host_net import host_network

    warnings: list[str] = []
    client = target.client if isinstance(target, LiveTarget) else None
    if client is None and (args.capture is not None or args.capture_stop):
        raise UsageError("--capture needs a live guest, not a dump bundle")
    capture = None if client is None else _capture(client, args)
    snapshot = guest_network(target)
    warnings += snapshot.warnings
    host = None if client is None else host_network(client.net_host()).to_json()
    if client is None:
        warnings.append(NO_HOST_VIEW)
    data = {
        "lwip": snapshot.lwip,
        "interfaces": [asdict(i) for i in snapshot.interfaces],
        "sockets": [s.to_json() for s in snapshot.sockets],
        "host": host,
        "capture": capture,
    }
    return Report(data=data, warnings=warnings, render=lambda: _render(data))


command("net", "the guest's network: interfaces and sockets, and the NIC as QEMU sees it",
        _arguments,
        description="Interfaces and sockets of the guest's lwIP (one line per socket, as ss "
        "-tanp), read from guest memory while the guest is held still; then QEMU's view of "
        "the NIC (rx filter, MAC) and of the user-mode NAT's connections, which needs no "
        "guest knowledge. --capture FILE has QEMU write the NIC's packets to FILE (pcap). "
        "On a dump bundle: the guest's view from the core, and no host view (a warning)."
        )(_with_target(net_body))
