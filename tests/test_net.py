"""``undebug net`` on the reference guest's real lwIP stack (virtio-net, QEMU user
networking, ``run --forward``): connections the test opens from the host are found in
lwIP's pcb lists with the right ports and states, the NIC and the NAT as QEMU sees them,
a pcap of the test's own packets, and a planted cyclic pcb list (the guest option
``corrupt=cyclic-pcbs`` makes ``tcp_bound_pcbs`` loop) reported and bounded."""

from __future__ import annotations

import secrets
import socket
import stat
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import undebug, wait_for_console
from tests.test_schema import check

ECHO_PORT = 7  # guest-stubs/refguest/README.md: TCP and UDP echo


def _boot_with_network(name: str, guest_image: Path, append: str = "") -> dict[str, int]:
    """A guest with --forward tcp::7 and udp::7 (free host ports); proto -> host port,
    as its status reports them."""
    result = undebug("run", "-d", "--name", name, "--smp", "2", "--append", append,
                     "--forward", "tcp::7", "--forward", "udp:0:7", str(guest_image))
    assert result.code == 0, result.stderr
    wait_for_console(name, "refguest: ready")
    guest = next(g for g in undebug("ps", "--json").json()["guests"] if g["name"] == name)
    ports = {}
    for forward in guest["forwards"]:
        proto, host, target = forward.split(":")
        assert target == str(ECHO_PORT) and int(host) > 0
        ports[proto] = int(host)
    assert set(ports) == {"tcp", "udp"}
    return ports


@pytest.fixture(scope="module")
def net_guest(guest_image: Path) -> Iterator[tuple[str, dict[str, int]]]:
    name = "net"
    ports = _boot_with_network(name, guest_image)
    yield name, ports
    undebug("kill", name)


def _connect(port: int) -> socket.socket:
    """A connection to the guest's echo service, proven open by one echoed message."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    message = secrets.token_bytes(8)
    conn.sendall(message)
    got = b""
    while len(got) < len(message):
        chunk = conn.recv(64)
        assert chunk, "the echo service closed the connection"
        got += chunk
    assert got == message
    return conn


def _net(name: str, *args: str) -> dict[str, Any]:
    result = undebug("net", name, "--json", *args)
    assert result.code == 0, result.stderr
    doc: dict[str, Any] = result.json()
    check("net", doc)
    return doc


def _tcp(doc: dict[str, Any], remote_port: int) -> list[dict[str, Any]]:
    return [s for s in doc["sockets"] if s["proto"] == "tcp" and s["remote_port"] == remote_port]


def test_three_connections_listener_and_udp(net_guest: tuple[str, dict[str, int]]) -> None:
    name, ports = net_guest
    conns = [_connect(ports["tcp"]) for _ in range(3)]
    client_ports = [conn.getsockname()[1] for conn in conns]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udp.settimeout(10)
        udp.sendto(b"ping", ("127.0.0.1", ports["udp"]))
        assert udp.recvfrom(64)[0] == b"ping"
        doc = _net(name)
    finally:
        udp.close()
        for conn in conns:
            conn.close()
    assert doc["lwip"] is True
    # QEMU's user network hands the guest the host client's own source port
    for port in client_ports:
        found = _tcp(doc, port)
        assert len(found) == 1, found
        assert found[0]["state"] == "ESTABLISHED" and found[0]["local_port"] == ECHO_PORT
        assert found[0]["local_addr"] == "10.0.2.15" and found[0]["remote_addr"] == "10.0.2.2"
        assert found[0]["list"] == "tcp_active_pcbs"
        assert found[0]["send_queue"] == 0 and found[0]["cwnd"] > 0
    listeners = [s for s in doc["sockets"] if s["state"] == "LISTEN"]
    assert [(s["proto"], s["local_port"], s["list"]) for s in listeners] == \
        [("tcp", ECHO_PORT, "tcp_listen_pcbs")]
    assert [s["local_port"] for s in doc["sockets"] if s["proto"] == "udp"] == [ECHO_PORT]
    # the guest's own interface and QEMU's view of its NIC: two sources, one MAC
    (nif,) = doc["interfaces"]
    (nic,) = doc["host"]["nics"]
    assert nif["ipv4"] == "10.0.2.15" and nif["gateway"] == "10.0.2.2" and nif["link"]
    assert nif["mac"] == nic["mac"] and nif["mtu"] == 1500
    forwarded = {(r["proto"], r["src_port"]) for r in doc["host"]["usernet"]
                 if r["state"] == "HOST_FORWARD"}
    assert forwarded == {("tcp", ports["tcp"]), ("udp", ports["udp"])}
    assert doc["warnings"] == []


def test_closed_connection_goes_to_time_wait_or_vanishes(
        net_guest: tuple[str, dict[str, int]]) -> None:
    name, ports = net_guest
    keep, gone = _connect(ports["tcp"]), _connect(ports["tcp"])
    try:
        gone_port = gone.getsockname()[1]
        assert [s["state"] for s in _tcp(_net(name), gone_port)] == ["ESTABLISHED"]
        gone.close()
        deadline = time.monotonic() + 20
        while True:
            doc = _net(name)
            states = [s["state"] for s in _tcp(doc, gone_port)]
            if states in ([], ["TIME_WAIT"]):
                break
            assert time.monotonic() < deadline, states
            time.sleep(0.2)
        assert [s["state"] for s in _tcp(doc, keep.getsockname()[1])] == ["ESTABLISHED"]
    finally:
        keep.close()


def _pcap_packets(path: Path) -> list[bytes]:
    data = path.read_bytes()
    magic, _, _, _, _, _, linktype = struct.unpack_from("<IHHiIII", data)
    assert magic == 0xA1B2C3D4 and linktype == 1  # pcap, Ethernet
    packets, offset = [], 24
    while offset + 16 <= len(data):
        _, _, caplen, _ = struct.unpack_from("<IIII", data, offset)
        packets.append(data[offset + 16:offset + 16 + caplen])
        offset += 16 + caplen
    assert offset == len(data), "a truncated pcap record"
    return packets


def _tcp_payloads(packets: list[bytes]) -> list[tuple[int, int, bytes]]:
    """(source port, destination port, payload) of every IPv4 TCP packet."""
    out = []
    for frame in packets:
        if len(frame) < 54 or frame[12:14] != b"\x08\x00" or frame[23] != 6:
            continue
        ip_len = (frame[14] & 0x0F) * 4
        total = struct.unpack_from(">H", frame, 16)[0]
        tcp = 14 + ip_len
        sport, dport = struct.unpack_from(">HH", frame, tcp)
        data_off = (frame[tcp + 12] >> 4) * 4
        out.append((sport, dport, frame[tcp + data_off:14 + total]))
    return out


def test_capture_holds_the_test_packets(net_guest: tuple[str, dict[str, int]],
                                        tmp_path: Path) -> None:
    name, ports = net_guest
    pcap = tmp_path / "guest.pcap"
    started = _net(name, "--capture", str(pcap))
    assert started["capture"] == {"state": "started", "file": str(pcap)}
    assert [f["type"] for f in started["host"]["filters"]] == ["filter-dump"]
    assert stat.S_IMODE(pcap.stat().st_mode) == 0o600
    payload = b"undebug-capture-" + secrets.token_hex(8).encode()
    with _connect(ports["tcp"]) as conn:
        conn.sendall(payload)
        assert conn.recv(len(payload), socket.MSG_WAITALL) == payload
        client_port = conn.getsockname()[1]
    stopped = _net(name, "--capture-stop")
    assert stopped["capture"]["state"] == "stopped" and stopped["host"]["filters"] == []
    flows = _tcp_payloads(_pcap_packets(pcap))
    assert (client_port, ECHO_PORT, payload) in flows  # to the guest ...
    assert (ECHO_PORT, client_port, payload) in flows  # ... and its echo
    second = undebug("net", name, "--capture-stop")  # nothing runs now
    assert second.code == 2 and "QEMU refused object-del" in second.stderr


def test_cyclic_pcb_list_is_reported_and_bounded(guest_image: Path) -> None:
    name = "net-cyclic"
    ports = _boot_with_network(name, guest_image, "corrupt=cyclic-pcbs")
    try:
        wait_for_console(name, "refguest: corrupt=cyclic-pcbs planted")
        with _connect(ports["tcp"]) as conn:  # the stack serves on
            started = time.monotonic()
            doc = _net(name)
            assert time.monotonic() - started < 10
            assert [s["state"] for s in _tcp(doc, conn.getsockname()[1])] == ["ESTABLISHED"]
        bound = [s for s in doc["sockets"] if s["list"] == "tcp_bound_pcbs"]
        assert sorted(s["local_port"] for s in bound) == [1001, 1002]  # each once
        assert any(w.startswith("tcp_bound_pcbs loops back") for w in doc["warnings"])
        assert any(s["state"] == "LISTEN" for s in doc["sockets"])
    finally:
        undebug("kill", name)


def test_guest_without_lwip_still_shows_the_host_view(
        net_guest: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    """An ELF built here without lwIP stands for a guest without it (--elf ... --force)."""
    name, _ = net_guest
    source = tmp_path / "nolwip.c"
    source.write_text("int counter;\nvoid _start(void) { for (;;) counter++; }\n")
    elf = tmp_path / "nolwip.elf"
    subprocess.run(["gcc", "-g", "-O0", "-nostdlib", "-static", "-o", str(elf), str(source)],
                   check=True)
    result = undebug("net", name, "--json", "--elf", str(elf), "--force")
    assert result.code == 0, result.stderr
    doc = result.json()
    check("net", doc)
    assert doc["lwip"] is False and doc["sockets"] == [] and doc["interfaces"] == []
    assert any("no lwIP symbols" in w for w in doc["warnings"])
    assert [n["mac"] for n in doc["host"]["nics"]] == ["52:54:00:12:34:56"]
    text = undebug("net", name, "--elf", str(elf), "--force")
    assert "host: NIC" in text.stdout and "no lwIP symbols" in text.stderr


def test_a_bundle_lists_the_open_connection_as_the_live_guest_did(
        net_guest: tuple[str, dict[str, int]], tmp_path: Path) -> None:
    """``net BUNDLE``: the guest's lwIP view read from the core equals the live one at the
    dump (guest paused in between); the host view went with QEMU: null and a warning."""
    name, ports = net_guest
    conn = _connect(ports["tcp"])
    client_port = conn.getsockname()[1]
    try:
        assert undebug("stop", name).code == 0
        try:
            live = _net(name)
            dumped = undebug("dump", name, "-o", str(tmp_path), "--sparse", "--json")
            assert dumped.code == 0, dumped.stdout + dumped.stderr
        finally:
            assert undebug("cont", name).code == 0
        offline = _net(dumped.json()["bundle"])
        text = undebug("net", dumped.json()["bundle"])
    finally:
        conn.close()
    (mine,) = _tcp(offline, client_port)
    assert mine["state"] == "ESTABLISHED" and mine["local_port"] == ECHO_PORT
    assert offline["sockets"] == live["sockets"]
    assert offline["interfaces"] == live["interfaces"] and offline["lwip"] is True
    assert live["host"]["nics"] and offline["host"] is None and offline["capture"] is None
    assert any("host view" in w and "not available from a dump" in w
               for w in offline["warnings"])
    assert text.code == 0 and "ESTABLISHED" in text.stdout and "host:" not in text.stdout
    refused = undebug("net", dumped.json()["bundle"], "--capture", str(tmp_path / "x.pcap"))
    assert refused.code == 2 and "live guest" in refused.stderr
