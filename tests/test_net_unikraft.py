"""``undebug net`` on a real Unikraft app over lib-lwip with the sockets API, the path the
reference guest (NO_SYS, no sockets API) cannot test: fds from sockets.c's ``sockets[]``.

The image is built outside the repository (never committed): UNDEBUG_UNIKRAFT_LWIP_IMAGE is
a Unikraft 0.17 app on lib-lwip (threaded, sockets API, IPv4 or dual stack, virtio-net
through uknetdev) that sets 10.0.2.15/24 gateway 10.0.2.2, listens on TCP port 7
(socket/bind/listen/accept, printing "main: echo listening on port 7") and echoes each
connection in a thread of its own. Each fd undebug reports is checked against gdb's own
evaluation of ``sockets[fd].conn->pcb.tcp`` (``undebug eval``, an independent reader of the
same DWARF); the fds' values follow from lwIP's allocator: ``alloc_socket`` takes the
lowest free index and lib-lwip leaves LWIP_SOCKET_OFFSET at lwIP's default 0, so the
listener (created first) is fd 0 and the connections accepted one after another are 1, 2, 3."""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import undebug, wait_for_console
from tests.test_schema import check

ECHO_PORT = 7
NAME = "uklwip"


@pytest.fixture(scope="module")
def lwip_guest() -> Iterator[int]:
    """The app booted with --forward tcp::7, its address set; yields the host port."""
    value = os.environ.get("UNDEBUG_UNIKRAFT_LWIP_IMAGE")
    if not value:
        pytest.skip("UNDEBUG_UNIKRAFT_LWIP_IMAGE is not set (a Unikraft app on lib-lwip "
                    "built outside the repository)")
    result = undebug("run", "-d", "--name", NAME, "--forward", "tcp::7", str(Path(value)))
    assert result.code == 0, result.stderr
    try:
        wait_for_console(NAME, "main: echo listening on port 7", timeout=90)
        wait_for_console(NAME, "Set IPv4 address 10.0.2.15", timeout=30)
        guest = next(g for g in undebug("ps", "--json").json()["guests"] if g["name"] == NAME)
        (forward,) = guest["forwards"]
        proto, host, target = forward.split(":")
        assert (proto, target) == ("tcp", str(ECHO_PORT)) and int(host) > 0
        yield int(host)
    finally:
        undebug("kill", NAME)


def _connect(port: int) -> socket.socket:
    """A connection proven accepted and served by one echoed message."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=20)
    message = secrets.token_bytes(8)
    conn.sendall(message)
    got = b""
    while len(got) < len(message):
        chunk = conn.recv(64)
        assert chunk, "the echo server closed the connection"
        got += chunk
    assert got == message
    return conn


def _net() -> dict[str, Any]:
    result = undebug("net", NAME, "--json")
    assert result.code == 0, result.stderr
    data: dict[str, Any] = result.json()
    check("net", data)
    assert data["lwip"] is True and data["warnings"] == [], data["warnings"]
    return data


def _gdb(expression: str) -> str:
    result = undebug("eval", NAME, expression, "--json")
    assert result.code == 0, result.stderr
    value: str = result.json()["value"]
    return value


def _established(data: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """remote port -> socket, for the ESTABLISHED TCP sockets on local port 7."""
    return {s["remote_port"]: s for s in data["sockets"]
            if s["proto"] == "tcp" and s["state"] == "ESTABLISHED"
            and s["local_port"] == ECHO_PORT}


def test_three_connections_with_their_fds_and_the_listener(lwip_guest: int) -> None:
    conns = [_connect(lwip_guest) for _ in range(3)]
    try:
        # QEMU's user-mode NAT keeps the client's source port: the guest's remote port
        ports = [c.getsockname()[1] for c in conns]
        data = _net()

        established = _established(data)
        assert sorted(established) == sorted(ports), data["sockets"]
        for index, port in enumerate(ports):
            sock = established[port]
            assert sock["local_addr"] == "10.0.2.15" and sock["remote_addr"] == "10.0.2.2"
            assert sock["fd"] == index + 1, (port, sock)
            assert _gdb(f"sockets[{sock['fd']}].conn->pcb.tcp->remote_port") == str(port)

        listeners = [s for s in data["sockets"] if s["proto"] == "tcp"
                     and s["state"] == "LISTEN" and s["local_port"] == ECHO_PORT]
        assert len(listeners) == 1, data["sockets"]
        assert listeners[0]["fd"] == 0 and listeners[0]["remote_port"] is None
        assert _gdb("sockets[0].conn->pcb.tcp->state") == "LISTEN"
        assert _gdb("sockets[0].conn->pcb.tcp->local_port") == str(ECHO_PORT)

        (nic,) = [n for n in data["interfaces"] if n["mac"] is not None]
        assert (nic["ipv4"], nic["netmask"], nic["gateway"]) == \
            ("10.0.2.15", "255.255.255.0", "10.0.2.2")
        assert nic["mac"] in {n["mac"] for n in data["host"]["nics"]}
        assert nic["link"] is True

        # the client closes one: the guest's echo thread closes its fd, the pcb leaves
        # ESTABLISHED and sockets[1] is freed; the other two keep theirs
        conns[0].close()
        deadline = time.monotonic() + 30
        while True:
            data = _net()
            established = _established(data)
            fds = {s["fd"] for s in data["sockets"]}
            if ports[0] not in established and 1 not in fds:
                break
            assert time.monotonic() < deadline, data["sockets"]
            time.sleep(0.5)
        assert {p: s["fd"] for p, s in established.items()} == {ports[1]: 2, ports[2]: 3}
        assert _gdb("sockets[1].conn") == "0x0"
    finally:
        for conn in conns:
            conn.close()
