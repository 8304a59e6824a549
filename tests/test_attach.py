"""`undebug attach` adopts a QEMU it did not start, over a real TCP gdbstub and QMP."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import check_planted_counter, real_image, undebug
from undebug.session.store import runtime_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (each held until all are picked)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


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


QMP_TCP_PORT: dict[int, int] = {}  # a foreign QEMU's TCP QMP port, by its gdbstub port


@pytest.fixture
def foreign_qemu(guest_image: Path) -> Iterator[tuple[int, Path, Path, Qmp, subprocess.Popen]]:
    """A QEMU started by hand, as a user's existing VM would be (its QMP also on TCP, at
    ``QMP_TCP_PORT[port]``)."""
    tmp = Path(runtime_dir()) / "foreign"
    tmp.mkdir(exist_ok=True)
    port, QMP_TCP_PORT[port] = free_ports(2)
    console = tmp / "console.log"
    proc = subprocess.Popen([
        "qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "128", "-display", "none",
        "-vga", "none", "-nodefaults", "-serial", f"file:{console}",
        "-gdb", f"tcp:127.0.0.1:{port}",
        "-qmp", f"unix:{tmp}/undebug.qmp,server=on,wait=off",
        "-qmp", f"unix:{tmp}/test.qmp,server=on,wait=off",
        "-qmp", f"tcp:127.0.0.1:{QMP_TCP_PORT[port]},server=on,wait=off",
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

    # RAM read in place from the adopted QEMU's memory (process_vm_readv), the supervisor's
    # paths (pmemsave for bulk, the gdbstub for small reads) agree with it; the counter
    # the guest writes at run time checks all of them.
    assert result.json()["status"]["ram_read"] == "qemu-process"
    assert not any("slow" in w for w in result.json()["warnings"])
    from undebug.elf import ElfFile
    from undebug.live_target import LiveTarget
    from undebug.session.store import SessionDir
    from undebug.target import ReadError

    elf = ElfFile(guest_image)
    counter, requests = elf.symbol("planted_counter"), elf.symbol("requests_handled")
    assert counter is not None and requests is not None
    from undebug.session.client import SupervisorClient

    with SupervisorClient(SessionDir.named("adopted")) as client:
        found = client.process_ram()
    assert found.pid == foreign_qemu[4].pid  # SO_PEERCRED named the QEMU this test started
    assert found.layout[0][0] == 0 and found.layout[0][2] == 128 << 20  # -m 128: one block
    with LiveTarget(SessionDir.named("adopted")) as target:  # the guest held still
        assert target._ram is not None and not target.warnings
        fast = target.read_physical(counter.address & ~0xFFFF, 1 << 20)
        bulk = target._rpc_read(counter.address & ~0xFFFF, 1 << 20, physical=True)  # pmemsave
        small = target._rpc_read(counter.address, 8, physical=True)  # gdbstub, physical mode
        handled = target.read_physical(requests.address, 8)
        with pytest.raises(ReadError, match="outside guest RAM"):
            target.read_physical((128 << 20) - 8, 16)  # past the end of -m 128
    at = counter.address & 0xFFFF
    assert fast == bulk and fast[at : at + 8] == small
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


def undebug_without_ptrace(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI (and the supervisor it starts) without CAP_SYS_PTRACE: as root, reading a
    root QEMU's memory is then refused (its capabilities exceed ours), as for a user whose
    QEMU runs as another user."""
    return subprocess.run(["setpriv", "--bounding-set", "-sys_ptrace", sys.executable, "-m",
                           "undebug.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("why", ["tcp-qmp", "no-ptrace"])
def test_attach_without_reads_in_place_warns_why_and_reads_through_the_supervisor(
        foreign_qemu, guest_image: Path, why: str) -> None:
    port, qmp_path, _, _, _ = foreign_qemu
    name = f"slow-{why}"
    args = ["attach", "--name", name, "--gdb", f"127.0.0.1:{port}", "--elf", str(guest_image),
            "--json"]
    if why == "tcp-qmp":
        proc = undebug(*args, "--qmp", f"127.0.0.1:{QMP_TCP_PORT[port]}")
        code, stdout, stderr = proc.code, proc.stdout, proc.stderr
        expected = (f"QMP at 127.0.0.1:{QMP_TCP_PORT[port]} is TCP, whose peer does not tell "
                    "QEMU's pid: pass QEMU's QMP unix socket")
    else:
        done = undebug_without_ptrace(*args, "--qmp", str(qmp_path))
        code, stdout, stderr = done.returncode, done.stdout, done.stderr
        expected = "reading QEMU's memory (pid "
    try:
        assert code == 0, stderr
        reply = json.loads(stdout)
        assert reply["status"]["ram_read"] == "supervisor"
        assert reply["status"]["accel"] == "tcg"  # QMP itself works
        warning = next(w for w in reply["warnings"] if "bulk reads of guest RAM" in w)
        assert expected in warning, warning
        if why == "no-ptrace":
            assert "is not permitted: " in warning and "CAP_SYS_PTRACE" in warning
            assert f"pid {foreign_qemu[4].pid})" in warning  # SO_PEERCRED found QEMU

        from undebug.elf import ElfFile
        from undebug.live_target import LiveTarget
        from undebug.session.store import SessionDir

        elf = ElfFile(guest_image)
        counter, requests = elf.symbol("planted_counter"), elf.symbol("requests_handled")
        assert counter is not None and requests is not None
        with LiveTarget(SessionDir.named(name)) as target:
            assert target._ram is None
            assert any(expected in w for w in target.warnings), target.warnings
            value = target.read_physical(counter.address, 8)
            handled = target.read_physical(requests.address, 8)
        check_planted_counter(int.from_bytes(value, "little"), int.from_bytes(handled, "little"),
                              cpus=1)
    finally:
        undebug("kill", name)


def test_a_real_unikraft_guest_is_read_in_place() -> None:
    """UNDEBUG_UNIKRAFT_IMAGE (built outside the repository, IMAGE.dbg beside it): an app
    with threads worker-0..2, in a QEMU started here by hand, adopted and read in place."""
    image = str(real_image("UNDEBUG_UNIKRAFT_IMAGE"))
    run = Path(runtime_dir()) / "uk-foreign"
    run.mkdir(exist_ok=True)
    console, gdb, qmp = run / "console.log", run / "gdb.sock", run / "qmp.sock"
    proc = subprocess.Popen([
        "qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "64", "-display", "none",
        "-no-reboot", "-nic", "none", "-serial", f"file:{console}",
        "-chardev", f"socket,id=g,path={gdb},server=on,wait=off", "-gdb", "chardev:g",
        "-qmp", f"unix:{qmp},server=on,wait=off", "-kernel", image])
    try:
        deadline = time.monotonic() + 30
        while not (console.exists() and b"worker-2" in console.read_bytes()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        result = undebug("attach", "--name", "ukfast", "--gdb", str(gdb), "--qmp", str(qmp),
                         "--elf", image + ".dbg", "--json")
        assert result.code == 0, result.stderr
        assert result.json()["status"]["ram_read"] == "qemu-process", result.json()["warnings"]
        threads = undebug("threads", "ukfast", "--json")
        assert threads.code == 0, threads.stderr
        assert {"worker-0", "worker-1", "worker-2"} <= {t["name"] for t in
                                                        threads.json()["threads"]}

        from undebug.live_target import LiveTarget
        from undebug.session.store import SessionDir

        with LiveTarget(SessionDir.named("ukfast")) as target:
            assert target._ram is not None and not target.warnings
            head = target.elf.symbol("uk_sched_head")
            assert head is not None
            fast = target.read(head.address, 64)  # in place, through the guest's tables
            assert fast == target._rpc_read(head.address, 64, physical=False)  # the gdbstub
    finally:
        undebug("kill", "ukfast")
        proc.kill()
        proc.wait()
        for path in run.iterdir():
            path.unlink()
        run.rmdir()
