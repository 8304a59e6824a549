"""Security defaults: private runtime dir and sockets, forwards on loopback only, guest
text escaped in what the Python API prints."""

from __future__ import annotations

import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import undebug as api
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


def _python_examples() -> list[tuple[str, str]]:
    """Every ```python block of the README and docs/cli.md, as (where, code)."""
    found = []
    for doc in ("README.md", "docs/cli.md"):
        text = (Path(__file__).resolve().parents[1] / doc).read_text()
        found += [(doc, code) for code in re.findall(r"```python\n(.*?)```", text, re.S)]
    return found


@pytest.mark.parametrize(("doc", "code"), _python_examples(), ids=lambda v: str(v)[:12])
def test_documented_python_examples_are_terminal_safe(shared_guest: str, doc: str,
                                                      code: str) -> None:
    """Run as a user would copy them, against the guest with the hostile thread name:
    its escape sequence reaches stdout only escaped."""
    proc = subprocess.run([sys.executable, "-c", code.replace('"web"', repr(shared_guest))],
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert b"evil\\x1b]0;owned\\x07" in proc.stdout
    assert b"\x1b" not in proc.stdout and b"\x07" not in proc.stdout


def test_guest_text_compares_raw_and_prints_escaped(shared_guest: str) -> None:
    with api.attach(shared_guest) as guest:
        evil = next(t for t in guest.threads() if t.name.startswith("evil"))
    assert evil.name == "evil\x1b]0;owned\x07" == evil.name.raw
    assert str(evil.name) == f"{evil.name}" == "evil\\x1b]0;owned\\x07"
