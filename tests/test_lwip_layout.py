"""undebug/os/lwip.py on an lwIP layout unlike the reference guest's: dual-stack (IPv6 makes
``ip_addr_t`` a union with a ``type`` byte), the sockets API on, window scaling.

tests/data/lwip/lwip_state.c is compiled here with ``gcc -g`` against lwIP's own headers
(the Debian source the reference guest's build fetches) and tests/data/lwip/lwipopts.h;
its state is planted by static initialisers, so the linked ELF's loaded segments are the
guest memory these tests read (nothing runs). What the C file planted is the expected
value: the connections, the listener, a TIME_WAIT pcb whose state is 42 (no tcp_state), a
UDP pcb, an interface and ``sockets[2]`` pointing at the IPv6 connection's netconn.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tests.conftest import ROOT
from tests.memory_targets import ImageTarget
from undebug.elf import ElfFile
from undebug.os.lwip import has_lwip, walk_lwip

DATA = ROOT / "tests" / "data" / "lwip"
LWIP_INCLUDE = ROOT / "build" / "lwip-src" / "lwip" / "src" / "include"


@pytest.fixture(scope="module")
def exe(guest_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # guest_image: the reference guest's build fetched lwIP into build/lwip-src
    assert LWIP_INCLUDE.is_dir(), "make guest fetches lwIP into build/lwip-src"
    exe = tmp_path_factory.mktemp("lwip") / "lwip_state.elf"
    subprocess.run(["gcc", "-g", "-O0", "-ffreestanding", "-nostdlib", "-static", "-no-pie",
                    f"-I{DATA}", f"-I{ROOT / 'guest-stubs' / 'refguest' / 'lwip-port'}",
                    f"-I{LWIP_INCLUDE}", "-o", str(exe), str(DATA / "lwip_state.c")],
                   check=True)
    return exe


@pytest.fixture
def target(exe: Path) -> ImageTarget:
    """A fresh image per test (one test writes into it)."""
    regions = []
    with exe.open("rb") as f:
        for segment in ELFFile(f).iter_segments():
            if segment["p_type"] == "PT_LOAD":
                data = bytearray(segment.data()) + bytearray(
                    segment["p_memsz"] - segment["p_filesz"])
                regions.append((segment["p_vaddr"], data))
    return ImageTarget(ElfFile(exe), regions, {})


def test_dual_stack_connections_and_the_socket_table(target: ImageTarget) -> None:
    assert has_lwip(target)
    snapshot = walk_lwip(target)
    tcp = {(s.local_port, s.remote_port): s for s in snapshot.sockets if s.proto == "tcp"}
    v6 = tcp[(443, 50001)]
    assert (v6.state, v6.local_addr, v6.remote_addr) == ("ESTABLISHED", "2001:db8::1",
                                                         "2001:db8::2")
    assert (v6.send_queue, v6.cwnd, v6.rto, v6.fd, v6.list) == (1000, 2920, 6, 2,
                                                                "tcp_active_pcbs")
    v4 = tcp[(80, 50002)]
    assert (v4.state, v4.local_addr, v4.remote_addr, v4.send_queue, v4.fd) == \
        ("CLOSE_WAIT", "192.168.1.10", "192.168.1.20", 0, None)
    listener = tcp[(80, None)]
    assert (listener.state, listener.local_addr, listener.list) == ("LISTEN", "0.0.0.0",
                                                                    "tcp_listen_pcbs")
    (udp,) = [s for s in snapshot.sockets if s.proto == "udp"]
    assert (udp.local_addr, udp.local_port) == ("192.168.1.10", 5353)
    (nif,) = snapshot.interfaces
    assert (nif.name, nif.mac, nif.ipv4, nif.netmask, nif.gateway, nif.mtu) == \
        ("et3", "02:00:00:00:00:42", "192.168.1.10", "255.255.255.0", "192.168.1.1", 9000)
    assert nif.flags == ["UP", "LINK_UP", "ETHARP"] and nif.link


def test_an_absurd_state_is_reported_and_the_rest_shown(target: ImageTarget) -> None:
    snapshot = walk_lwip(target)
    (weird,) = [s for s in snapshot.sockets if s.list == "tcp_tw_pcbs"]
    assert weird.state == "unknown(42)" and weird.remote_port == 50003
    assert any("has state 42, not a tcp_state" in w for w in snapshot.warnings)
    assert len(snapshot.sockets) == 5


def test_socket_offset_and_a_cyclic_list(target: ImageTarget) -> None:
    """fd = index + LWIP_SOCKET_OFFSET (the OS says it); then the active list made
    cyclic in the image (the second pcb pointed back at the first) is cut, once."""
    snapshot = walk_lwip(target, socket_offset=3)
    assert [s.fd for s in snapshot.sockets if s.remote_port == 50001] == [5]
    first = target.read_int(target.address_of("tcp_active_pcbs"))
    layout = target.elf.struct("tcp_pcb")
    assert layout is not None
    second = target.read_int(first + layout.member("next").offset)
    target.write_u64(second + layout.member("next").offset, first)
    snapshot = walk_lwip(target)
    active = [s.remote_port for s in snapshot.sockets if s.list == "tcp_active_pcbs"]
    assert active == [50002, 50001]
    assert any(w.startswith("tcp_active_pcbs loops back") for w in snapshot.warnings)
