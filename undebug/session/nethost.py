"""The guest NIC as QEMU sees it, and packet capture of it: QMP requests the supervisor
makes for ``undebug net`` (it owns the one QMP connection).

Raw answers only (``query-rx-filter``; HMP ``info network`` and ``info usernet`` through
``human-monitor-command``); reading them is the command's job. A capture is QEMU's
``filter-dump`` object on the guest's netdev, added and deleted at run time: QEMU writes
the pcap itself, one packet per write, so the file is whole at every moment.
"""

from __future__ import annotations

import re
from typing import Any

from undebug.session.protocol import ErrorCode
from undebug.session.qmp_link import QmpLink, request
from undebug.session.runcontrol import RequestError

__all__ = ["CAPTURE_ID", "capture_start", "capture_stop", "host_view"]

CAPTURE_ID = "undebug-capture"
_NETDEV = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


async def host_view(qmp: QmpLink | None) -> dict[str, Any]:
    """``rx_filters`` (query-rx-filter's list; empty without a NIC), ``network`` and
    ``usernet`` (HMP text)."""
    try:
        filters = await request(qmp, "query-rx-filter")
    except RequestError as exc:
        if exc.code != ErrorCode.BAD_REQUEST:  # no NIC: QEMU says "no net client"
            raise
        filters = []
    network = await request(qmp, "human-monitor-command", **{"command-line": "info network"})
    usernet = await request(qmp, "human-monitor-command", **{"command-line": "info usernet"})
    if not isinstance(filters, list):
        filters = []
    for nic in filters:  # the VLAN table lists all 4096 ids when VLANs are not filtered
        if isinstance(nic, dict):
            nic.pop("vlan-table", None)
    return {"rx_filters": filters,
            "network": str(network), "usernet": str(usernet)}


async def capture_start(qmp: QmpLink | None, path: str, netdev: str) -> dict[str, Any]:
    if not path.startswith("/"):
        raise RequestError(ErrorCode.BAD_REQUEST, "the capture file must be an absolute path")
    if not _NETDEV.match(netdev):
        raise RequestError(ErrorCode.BAD_REQUEST, f"bad netdev id {netdev!r}")
    await request(qmp, "object-add", **{"qom-type": "filter-dump", "id": CAPTURE_ID,
                                         "netdev": netdev, "file": path, "queue": "all"})
    return {"id": CAPTURE_ID, "file": path, "netdev": netdev}


async def capture_stop(qmp: QmpLink | None) -> dict[str, Any]:
    await request(qmp, "object-del", id=CAPTURE_ID)
    return {"id": CAPTURE_ID}
