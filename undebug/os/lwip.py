"""lwIP's network state from guest memory: interfaces, protocol control blocks, sockets.

One walker for every unikernel on lwIP 2.x (the reference guest, Unikraft's lib-lwip,
Nanos' fork). Every offset comes from DWARF by member name: build options change the
layouts (IPv6 makes ``ip_addr_t`` a union with a ``type`` byte; netif hints, backlog and
window scaling add members), so nothing here assumes one. The lists are lwIP's globals
(``netif_list``, ``tcp_{listen,bound,active,tw}_pcbs``, ``udp_pcbs``, ``raw_pcbs``);
with the sockets API, ``sockets[]`` (sockets.c) maps fd = index + ``LWIP_SOCKET_OFFSET``
to a netconn and its pcb. Guest memory is untrusted: every walk is bounded and
cycle-safe (:func:`~undebug.os.provider.walk_list`), an odd value is a warning, and what
is readable is still shown.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

from undebug.elf import StructLayout
from undebug.os.provider import StructValue, read_struct, walk_list
from undebug.target import ReadError, Target

__all__ = ["Interface", "NetSnapshot", "Socket", "guest_network", "has_lwip", "walk_lwip"]

MAX_PCBS = 65_536  # per list: lwIP's pools are far smaller; more is a corrupt list
MAX_NETIFS = 256
MAX_SOCKETS = 65_536
TCP_LISTS = (("tcp_listen_pcbs", "tcp_pcb_listen"), ("tcp_bound_pcbs", "tcp_pcb"),
             ("tcp_active_pcbs", "tcp_pcb"), ("tcp_tw_pcbs", "tcp_pcb"))
# netif.h's NETIF_FLAG_* (macros: not in the DWARF; the same in every lwIP 2.x)
NETIF_FLAGS = ((0x01, "UP"), (0x02, "BROADCAST"), (0x04, "LINK_UP"), (0x08, "ETHARP"),
               (0x10, "ETHERNET"), (0x20, "IGMP"), (0x40, "MLD6"))
IPADDR_TYPE_V6 = 6  # ip_addr.h's IPADDR_TYPE_V6


@dataclass(frozen=True)
class Interface:
    name: str  # lwIP's two letters and number: "en0"
    mac: str | None
    ipv4: str | None
    netmask: str | None
    gateway: str | None
    mtu: int
    flags: list[str]
    link: bool
    address: int  # of the struct netif


@dataclass(frozen=True)
class Socket:
    proto: str  # tcp, udp, raw
    state: str  # lwIP's enum tcp_state name (tcp); "UNCONN" (udp, raw) as ss says
    local_addr: str | None
    local_port: int | None
    remote_addr: str | None
    remote_port: int | None
    send_queue: int | None  # bytes written and not yet acknowledged (snd_lbb - lastack)
    recv_queue: int | None  # bytes lwIP holds that the application has not taken
    cwnd: int | None
    rto: int | None  # lwIP's rto: in slow-timer ticks (TCP_SLOW_INTERVAL, 500 ms by default)
    fd: int | None  # with the sockets API
    thread: str | None  # the thread that owns or waits on it, where the OS tells
    address: int  # of the pcb
    list: str  # the lwIP list it is on

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class NetSnapshot:
    interfaces: list[Interface]
    sockets: list[Socket]
    warnings: list[str] = field(default_factory=list)
    lwip: bool = True  # False: the guest's ELF has no lwIP (nothing was walked)


def has_lwip(target: Target) -> bool:
    """Does the guest's ELF have lwIP's TCP state (symbols and DWARF)?"""
    return target.elf.symbol("tcp_active_pcbs") is not None and \
        target.elf.struct("tcp_pcb") is not None


def _address(value: StructValue, path: str) -> str | None:
    """``ip_addr_t`` member ``path`` as text: IPv4-only (``.addr``) or dual-stack (a union
    ``u_addr`` with a ``type`` byte); None when this layout has neither."""
    layout = value.layout
    if layout.has_member(f"{path}.addr"):  # ip4_addr_t
        return str(ipaddress.IPv4Address(value.bytes(f"{path}.addr")))
    if layout.has_member(f"{path}.u_addr.ip4.addr") and layout.has_member(f"{path}.type"):
        if value.int(f"{path}.type") == IPADDR_TYPE_V6 and \
                layout.has_member(f"{path}.u_addr.ip6.addr"):
            return str(ipaddress.IPv6Address(value.bytes(f"{path}.u_addr.ip6.addr")[:16]))
        return str(ipaddress.IPv4Address(value.bytes(f"{path}.u_addr.ip4.addr")))
    return None


def _optional(value: StructValue, path: str, signed: bool = False) -> int | None:
    return value.int(path, signed) if value.layout.has_member(path) else None


def _head(target: Target, symbol: str) -> int | None:
    """The pointer a list's global holds (``tcp_listen_pcbs`` is a union of two
    pointers: the same first word), or None when the guest has no such global."""
    address = target.address_of(symbol)
    return None if address is None else target.read_int(address)


class _Walker:
    def __init__(self, target: Target, fds: dict[int, int]) -> None:
        self.target = target
        self.fds = fds
        self.warnings: list[str] = []
        self.states = target.elf.enum("tcp_state") or {}

    def _layout(self, name: str) -> StructLayout | None:
        layout = self.target.elf.struct(name)
        if layout is None:
            self.warnings.append(f"no DWARF layout of struct {name}: its list is not shown")
        return layout

    def _list(self, symbol: str, struct: str) -> list[StructValue]:
        try:
            head = _head(self.target, symbol)
        except ReadError as exc:
            self.warnings.append(f"{symbol} unreadable: {exc.message}")
            return []
        if head is None:
            return []
        layout = self._layout(struct)
        if layout is None:
            return []
        return list(walk_list(self.target, layout, head, "next", symbol, self.warnings,
                              limit=MAX_PCBS))

    def _state(self, pcb: StructValue, symbol: str) -> str:
        raw = pcb.int("state")
        name = self.states.get(raw)
        if name is None:
            self.warnings.append(f"{symbol}: pcb {pcb.address:#x} has state {raw}, not a "
                                 "tcp_state")
            return f"unknown({raw})"
        return name

    def _recv_queue(self, pcb: StructValue) -> int | None:
        """Bytes in ``refused_data``: received, offered to the application, not taken."""
        refused = _optional(pcb, "refused_data")
        if not refused:
            return 0 if refused is not None else None
        pbuf = self.target.elf.struct("pbuf")
        if pbuf is None or not pbuf.has_member("tot_len"):
            return None
        try:
            return read_struct(self.target, pbuf, refused).int("tot_len")
        except ReadError:
            return None

    def tcp(self) -> list[Socket]:
        out = []
        for symbol, struct in TCP_LISTS:
            for pcb in self._list(symbol, struct):
                full = pcb.layout.has_member("remote_port")  # not a tcp_pcb_listen
                lport = pcb.int("local_port")
                if symbol == "tcp_active_pcbs" and lport == 0:
                    self.warnings.append(f"{symbol}: pcb {pcb.address:#x} has local port 0")
                send = None
                if full and pcb.layout.has_member("snd_lbb") and pcb.layout.has_member("lastack"):
                    send = (pcb.int("snd_lbb") - pcb.int("lastack")) & 0xFFFF_FFFF
                out.append(Socket(
                    "tcp", self._state(pcb, symbol), _address(pcb, "local_ip"), lport,
                    _address(pcb, "remote_ip") if full else None,
                    pcb.int("remote_port") if full else None, send,
                    self._recv_queue(pcb) if full else None,
                    _optional(pcb, "cwnd") if full else None,
                    _optional(pcb, "rto", signed=True) if full else None,
                    self.fds.get(pcb.address), None, pcb.address, symbol))
        return out

    def connectionless(self, proto: str, symbol: str, struct: str) -> list[Socket]:
        out = []
        for pcb in self._list(symbol, struct):
            port = _optional(pcb, "local_port")
            remote = _optional(pcb, "remote_port")
            out.append(Socket(proto, "UNCONN", _address(pcb, "local_ip"), port,
                              _address(pcb, "remote_ip"), remote, None, None, None, None,
                              self.fds.get(pcb.address), None, pcb.address, symbol))
        return out

    def interfaces(self) -> list[Interface]:
        try:
            head = _head(self.target, "netif_list")
        except ReadError as exc:
            self.warnings.append(f"netif_list unreadable: {exc.message}")
            return []
        layout = self._layout("netif") if head is not None else None
        if head is None or layout is None:
            return []
        out = []
        for nif in walk_list(self.target, layout, head, "next", "netif_list", self.warnings,
                             limit=MAX_NETIFS):
            name = nif.bytes("name").decode("latin-1").rstrip("\0")
            name += str(_optional(nif, "num") or 0)
            mac = None
            if layout.has_member("hwaddr"):
                length = min(_optional(nif, "hwaddr_len") or 0, len(nif.bytes("hwaddr")))
                mac = ":".join(f"{b:02x}" for b in nif.bytes("hwaddr")[:length]) or None
            flags = nif.int("flags")
            out.append(Interface(
                name, mac, _address(nif, "ip_addr"), _address(nif, "netmask"),
                _address(nif, "gw"), nif.int("mtu"),
                [label for bit, label in NETIF_FLAGS if flags & bit], bool(flags & 0x04),
                nif.address))
        return out


def socket_table(target: Target, warnings: list[str], offset: int = 0) -> dict[int, int]:
    """pcb address -> fd, from sockets.c's ``sockets[]`` (fd = index + ``offset``, lwIP's
    LWIP_SOCKET_OFFSET: a macro, so the OS says it). Empty without the sockets API."""
    base = target.address_of("sockets")
    sock = target.elf.struct("lwip_sock")
    conn = target.elf.struct("netconn")
    if base is None or sock is None or conn is None or not sock.has_member("conn"):
        return {}
    symbol = target.elf.symbol("sockets")
    count = min(MAX_SOCKETS, (symbol.size if symbol else 0) // sock.size)
    pcb_path = next((p for p in ("pcb.tcp", "pcb.ip", "pcb") if conn.has_member(p)), None)
    if pcb_path is None:
        return {}
    try:
        table = target.read(base, count * sock.size)
    except ReadError as exc:
        warnings.append(f"sockets[] unreadable: {exc.message}")
        return {}
    fds = {}
    for index in range(count):
        entry = StructValue(sock, base + index * sock.size,
                            table[index * sock.size:(index + 1) * sock.size])
        netconn = entry.int("conn")
        if not netconn:
            continue
        try:
            pcb = read_struct(target, conn, netconn).int(pcb_path)
        except ReadError as exc:
            warnings.append(f"sockets[{index}]: netconn {netconn:#x} unreadable: {exc.message}")
            continue
        if pcb:
            fds[pcb] = index + offset
    return fds


def walk_lwip(target: Target, socket_offset: int = 0,
              fds: dict[int, int] | None = None) -> NetSnapshot:
    """Every interface and pcb of the guest's lwIP, read now; ``fds`` (pcb -> fd) adds
    what the OS's own fd table says to lwIP's ``sockets[]``."""
    warnings: list[str] = []
    walker = _Walker(target, socket_table(target, warnings, socket_offset) | (fds or {}))
    walker.warnings = warnings
    interfaces = walker.interfaces()
    sockets = walker.tcp()
    sockets += walker.connectionless("udp", "udp_pcbs", "udp_pcb")
    sockets += walker.connectionless("raw", "raw_pcbs", "raw_pcb")
    return NetSnapshot(interfaces, sockets, warnings)


def guest_network(target: Target) -> NetSnapshot:
    """:func:`walk_lwip` for a guest on lwIP; for any other, an empty snapshot (``lwip``
    False) whose warning says why (``undebug net`` and the TUI then show QEMU's view only)."""
    if not has_lwip(target):
        return NetSnapshot([], [], [f"{target.elf.path} has no lwIP symbols with DWARF "
                                    "(tcp_active_pcbs, struct tcp_pcb): no guest view of the "
                                    "network, only QEMU's"], lwip=False)
    from undebug.os import provider_for

    return walk_lwip(target, fds=provider_for(target).socket_fds())
