"""Security defaults: private runtime dir and sockets, forwards on loopback only."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

from tests.conftest import undebug, wait_for_console
from tests.test_attach import free_port
from undebug.session.store import SessionDir, runtime_dir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_session_files_are_private(shared_guest: str) -> None:
    session = SessionDir.named(shared_guest)
    assert mode(runtime_dir()) == 0o700
    assert mode(session.path) == 0o700
    for name in ("control.sock", "qmp.sock", "gdb.sock", "trace.sock", "console.log",
                 "session.json", "spec.json", "supervisor.log", "trace.utrace", "lock"):
        assert mode(session.path / name) & 0o077 == 0, name


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP listener on ``port``, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hexport = local.rsplit(":", 1)
            if int(hexport, 16) == port and state == "0A":  # LISTEN
                found.add(address)
    return found


def test_forward_binds_loopback_only(guest_image: Path) -> None:
    port = free_port()
    assert undebug("run", "-d", "--name", "fwd", "--forward", f"tcp:{port}:80",
                   str(guest_image)).code == 0
    try:
        wait_for_console("fwd", "refguest: ready")
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        undebug("kill", "fwd")
