"""The network pane, like ``ss -tanp``: the guest's interfaces and one row per socket as
its lwIP has them, and below, apart, QEMU's view that needs no guest knowledge (the NIC's
filter and the user-mode NAT's connections) — :meth:`undebug.api.Session.network`, what
``undebug net`` reads."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.widgets import DataTable, Static

from tui.widgets.pane import Focus
from tui.widgets.per_stop import PerStopPane
from tui.widgets.text import guest
from undebug import api
from undebug.os.lwip import Socket

SOCKET_COLUMNS = ("Netid", "State", "Recv-Q", "Send-Q", "Local Address:Port",
                  "Peer Address:Port", "Process")
NAT_COLUMNS = ("Proto", "State", "Source", "Destination", "Recv-Q", "Send-Q")
STATE_STYLES = {"ESTABLISHED": "green", "LISTEN": "cyan", "TIME_WAIT": "dim"}


def endpoint(addr: str | None, port: int | None) -> str:
    """``addr:port`` as ss writes it: ``*`` for any address or port."""
    host = "*" if addr in (None, "0.0.0.0", "::") else str.__str__(addr)
    return f"{host}:{port if port else '*'}"


def socket_cells(s: Socket) -> tuple[Text, ...]:
    state = str.__str__(s.state)
    style = STATE_STYLES.get(state, "red" if state.startswith("unknown") else "")
    who = ", ".join(p for p in (f"fd={s.fd}" if s.fd is not None else "",
                                f"thread={str.__str__(s.thread)}" if s.thread else "") if p)
    return (Text(s.proto), guest(state, style),
            Text("-" if s.recv_queue is None else str(s.recv_queue)),
            Text("-" if s.send_queue is None else str(s.send_queue)),
            guest(endpoint(s.local_addr, s.local_port)),
            guest(endpoint(s.remote_addr, s.remote_port)), guest(who, default=""))


class NetPane(PerStopPane[api.Network]):
    pane_id = "net"
    pane_title = "network"
    DEFAULT_CSS = """
    NetPane { overflow-y: auto; }
    NetPane > DataTable { height: 2fr; min-height: 5; border: round $primary-darken-2; }
    NetPane > #net-nat { height: 1fr; min-height: 4; }
    NetPane > Static { height: auto; max-height: 4; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static(id="net-interfaces")
        yield DataTable[Text](cursor_type="row", id="net-sockets")
        yield Static(id="net-nics")
        yield DataTable[Text](cursor_type="row", id="net-nat")
        yield Static(id="net-note")

    def on_mount(self) -> None:
        sockets = self.query_one("#net-sockets", DataTable)
        sockets.add_columns(*SOCKET_COLUMNS)
        sockets.border_title = "sockets (the guest's lwIP)"
        nat = self.query_one("#net-nat", DataTable)
        nat.add_columns(*NAT_COLUMNS)
        nat.border_title = "host: QEMU's user-mode NAT (no guest knowledge)"

    def fetch(self, session: api.Session) -> api.Network:
        return session.network()

    def paint(self, data: api.Network, title: str) -> None:
        interfaces = Text("\n").join(
            guest(f"{i.name}: mac {i.mac or '-'} inet {i.ipv4} netmask {i.netmask} gateway "
                  f"{i.gateway} mtu {i.mtu} <{','.join(i.flags)}>"
                  f"{'' if i.link else ' (no link)'}") for i in data.interfaces)
        self.query_one("#net-interfaces", Static).update(
            interfaces if data.lwip else Text("no lwIP in this guest: QEMU's view only",
                                              style="yellow"))
        sockets: DataTable[Any] = self.query_one("#net-sockets", DataTable)
        sockets.clear()
        for s in data.sockets:
            sockets.add_row(*socket_cells(s))
        sockets.border_title = f"sockets (the guest's lwIP): {title}"
        nat: DataTable[Any] = self.query_one("#net-nat", DataTable)
        nat.clear()
        nics = Text("host: no QEMU to ask", style="dim")
        if data.host is not None:
            nics = Text("\n").join([
                *(guest(f"host: NIC {n.name} mac {n.mac or '-'}"
                        f"{' promiscuous' if n.promiscuous else ''}") for n in data.host.nics),
                *(guest(f"host: filter {f.id} {f.type} {f.file}") for f in data.host.filters)]
                or [Text("host: no NIC", style="yellow")])
            for row in data.host.usernet:
                nat.add_row(Text(row.proto), guest(row.state),
                            guest(f"{row.src_addr}:{row.src_port}"),
                            guest(f"{row.dst_addr}:{row.dst_port}"), Text(str(row.recv_queue)),
                            Text(str(row.send_queue)))
        self.query_one("#net-nics", Static).update(nics)
        self.note(data.warnings)

    def equivalent(self, focus: Focus) -> list[str]:
        return [f"undebug net {focus.guest}"]
