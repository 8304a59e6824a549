"""`undebug attach` adopts a QEMU it did not start, over a real TCP gdbstub and QMP."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import check_planted_counter, undebug
from undebug.session.store import runtime_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Qmp:
    """The test's own QMP connection (QEMU takes several -qmp sockets)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(str(path))
        self.file = self.sock.makefile("rw")
        self.file.readline()
        self.execute("qmp_capabilities")

    def execute(self, command: str) -> dict:
        self.file.write(json.dumps({"execute": command}) + "\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "return" in reply or "error" in reply:
                return reply


@pytest.fixture
def foreign_qemu(guest_image: Path) -> Iterator[tuple[int, Path, Path, Qmp, subprocess.Popen]]:
    """A QEMU started by hand, as a user's existing VM would be."""
    tmp = Path(runtime_dir()) / "foreign"
    tmp.mkdir(exist_ok=True)
    port = free_port()
    console = tmp / "console.log"
    proc = subprocess.Popen([
        "qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "128", "-display", "none",
        "-vga", "none", "-nodefaults", "-serial", f"file:{console}",
        "-gdb", f"tcp:127.0.0.1:{port}",
        "-qmp", f"unix:{tmp}/undebug.qmp,server=on,wait=off",
        "-qmp", f"unix:{tmp}/test.qmp,server=on,wait=off",
        "-kernel", str(guest_image), "-append", "threads=2"])
    try:
        deadline = time.monotonic() + 10
        while not (tmp / "test.qmp").exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        qmp = Qmp(tmp / "test.qmp")
        yield port, tmp / "undebug.qmp", console, qmp, proc
    finally:
        proc.kill()
        proc.wait()
        for path in tmp.iterdir():
            path.unlink()
        tmp.rmdir()


def heartbeats(console: Path) -> int:
    return console.read_bytes().count(b"refguest: heartbeat")


def test_attach_keeps_a_running_guest_running(foreign_qemu, guest_image: Path) -> None:
    port, qmp_path, console, qmp, _ = foreign_qemu
    time.sleep(1.5)
    result = undebug("attach", "--name", "adopted", "--gdb", f"127.0.0.1:{port}",
                     "--qmp", str(qmp_path), "--elf", str(guest_image), "--json")
    assert result.code == 0, result.stderr
    assert result.json()["status"]["state"] == "running"
    assert qmp.execute("query-status")["return"]["status"] == "running"
    before = heartbeats(console)
    time.sleep(2.5)
    assert heartbeats(console) > before  # the guest kept running after the attach

    # No shared RAM with an adopted QEMU: bulk physical reads go through QMP pmemsave,
    # small ones through the gdbstub; both see the counter the guest writes at run time.
    from undebug.elf import ElfFile
    from undebug.session.store import SessionDir
    from undebug.target import LiveTarget

    elf = ElfFile(guest_image)
    counter, requests = elf.symbol("planted_counter"), elf.symbol("requests_handled")
    assert counter is not None and requests is not None
    with LiveTarget(SessionDir.named("adopted")) as target:  # the guest held still
        assert target._ram is None
        bulk = target.read_physical(counter.address & ~0xFFFF, 1 << 20)  # pmemsave
        small = target.read_physical(counter.address, 8)  # gdbstub, physical mode
        handled = target.read_physical(requests.address, 8)
    at = counter.address & 0xFFFF
    assert bulk[at : at + 8] == small
    check_planted_counter(int.from_bytes(small, "little"), int.from_bytes(handled, "little"),
                          cpus=1)

    assert undebug("stop", "adopted").code == 0
    assert qmp.execute("query-status")["return"]["status"] == "paused"
    assert undebug("cont", "adopted").code == 0
    assert qmp.execute("query-status")["return"]["status"] == "running"

    assert undebug("kill", "adopted").code == 0  # detaches; the guest runs on
    assert qmp.execute("query-status")["return"]["status"] == "running"
    assert "adopted" not in undebug("ps").stdout


def test_attach_to_nothing_fails_clearly(guest_image: Path) -> None:
    """One error line, said once, and a hint naming a supervisor log that exists (the
    session directory is gone by then)."""
    port = free_port()
    result = undebug("attach", "--name", "nobody", "--gdb", f"127.0.0.1:{port}",
                     "--elf", str(guest_image))
    assert result.code == 2
    error, hint = result.stderr.splitlines()
    assert error == (f"undebug: error: cannot connect to the gdbstub at 127.0.0.1:{port}: "
                     "Connection refused")
    prefix = "  hint: is QEMU running with -gdb tcp::PORT (or a unix socket) there?; " \
        "supervisor log: "
    assert hint.startswith(prefix)
    log = Path(hint.removeprefix(prefix))
    assert "cannot connect to the gdbstub" in log.read_text()
    assert "nobody" not in undebug("ps").stdout
    assert not (runtime_dir() / "nobody").exists()


@pytest.mark.parametrize("with_qmp", [True, False], ids=["qmp", "gdbstub-only"])
def test_an_adopted_qemu_that_exits_ends_the_guest(foreign_qemu, guest_image: Path,
                                                   with_qmp: bool) -> None:
    port, qmp_path, _, _, proc = foreign_qemu
    name = f"gone-{with_qmp}".lower()
    qmp = ["--qmp", str(qmp_path)] if with_qmp else []
    assert undebug("attach", "--name", name, "--gdb", f"127.0.0.1:{port}", *qmp,
                   "--elf", str(guest_image)).code == 0
    try:
        proc.kill()
        deadline = time.monotonic() + 10
        while (mine := next(g for g in undebug("ps", "--json").json()["guests"]
                            if g["name"] == name))["state"] != "ended":
            assert time.monotonic() < deadline, mine
            time.sleep(0.2)
        assert mine["outcome"]["kind"] == "exit" and mine["outcome"]["ok"] is False
        assert mine["outcome"]["reason"].startswith("the adopted QEMU has gone (exit status "
                                                    "unknown): ")
    finally:
        undebug("kill", name)
