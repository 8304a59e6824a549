"""The per-guest supervisor with the real reference guest in real QEMU: clients come and
go without disturbing the guest, reads see run-time memory, nothing is orphaned."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import check_planted_counter, supervisor_loop_wakeups_per_s, undebug, wait_for_console
from undebug.elf import ElfFile
from undebug.session.client import SupervisorClient
from undebug.session.replies import Reply, parse_status
from undebug.session.store import SessionDir, runtime_dir


def client(name: str) -> SupervisorClient:
    return SupervisorClient(SessionDir.named(name), timeout=30)


def read_u64(c: SupervisorClient, address: int) -> int:
    data = base64.b64decode(c.call("read_memory", address=address, size=8)["data"])
    return int(struct.unpack("<Q", data)[0])


def gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def guest_status(name: str) -> dict:
    return next(g for g in undebug("ps", "--json").json()["guests"] if g["name"] == name)


def test_planted_threads_on_the_console(shared_guest: str) -> None:
    log = undebug("logs", shared_guest).stdout
    for name in ["worker-0", "worker-7", "sleeper", "blocked", "short-lived", "idle0", "idle1"]:
        assert f" name={name} " in log, name
    assert "refguest: ready " in log
    assert "refguest: cpus=2 " in log


def test_hostile_thread_name_is_escaped_in_logs(shared_guest: str) -> None:
    raw = subprocess.run([sys.executable, "-m", "undebug.cli", "logs", shared_guest],
                         capture_output=True, check=True).stdout
    assert b"name=evil\\x1b]0;owned\\x07 " in raw
    assert b"\x1b" not in raw and b"\x07" not in raw


def test_logs_follow_leaves_the_supervisor_asleep_and_ends_with_the_guest(
        guest_image: Path) -> None:
    """``logs -f`` sees the guest's end on one kept connection: a connect per look
    would wake the supervisor's event loop at every 0.1 s poll."""
    name = "logsf"
    assert undebug("run", "-d", "--name", name, "--no-trace", "--append",
                   "threads=1 run_for=6000", str(guest_image)).code == 0
    follower = None
    try:
        wait_for_console(name, "refguest: ready")
        follower = subprocess.Popen([sys.executable, "-m", "undebug.cli", "logs", name, "-f"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert supervisor_loop_wakeups_per_s(name, seconds=2.0) < 3
        out, err = follower.communicate(timeout=60)  # the guest ends: so does the follower
        assert follower.returncode == 0, err
    finally:
        if follower is not None and follower.poll() is None:
            follower.kill()
        undebug("kill", name)
    assert "refguest: ready" in out and "shutdown code=0" in out, out[-500:]


def test_planted_counter_is_read_from_guest_memory(shared_guest: str, guest_image: Path) -> None:
    """The counter lives in .bss (zero in the file): a reader that fell back to the
    ELF would see 0, a frozen guest the same value twice. At one stop it is the seed plus
    requests_handled, a second variable read at the same stop."""
    elf = ElfFile(guest_image)
    symbol, requests = elf.symbol("planted_counter"), elf.symbol("requests_handled")
    assert symbol is not None and requests is not None
    with client(shared_guest) as c:
        c.call("pause")
        try:
            first = read_u64(c, symbol.address)
            check_planted_counter(first, read_u64(c, requests.address), cpus=2)
        finally:
            c.call("resume")
        time.sleep(0.5)
        second = read_u64(c, symbol.address)
    assert second > first


def test_reads_keep_the_run_state_the_user_chose(shared_guest: str, guest_image: Path) -> None:
    symbol = ElfFile(guest_image).symbol("planted_counter")
    assert symbol is not None
    with client(shared_guest) as c:
        assert c.call("pause")["state"] == "paused"
        first = read_u64(c, symbol.address)
        regs = c.call("read_registers")["cpus"]
        time.sleep(0.3)
        assert read_u64(c, symbol.address) == first  # still paused after reads
        status = c.call("status")
        assert status["state"] == "paused" and status["qemu_state"] == "paused"
        assert c.call("resume")["state"] == "running"
        read_u64(c, symbol.address)
        assert c.call("status")["qemu_state"] == "running"  # a read while running resumes
    assert len(regs) == 2 and all(cpu["registers"]["rip"] > 0 for cpu in regs)
    assert "cr3" in regs[0]["registers"]


def test_two_clients_at_once(shared_guest: str) -> None:
    with client(shared_guest) as watcher, client(shared_guest) as actor:
        watcher.call("subscribe")
        actor.call("pause")
        assert watcher.call("status")["state"] == "paused"
        actor.call("resume")
        seen = []
        deadline = time.monotonic() + 10
        while {"stop", "resume"} - set(seen) and time.monotonic() < deadline:
            event = watcher.next_event(1.0)
            if event:
                seen.append(event.type)
        assert {"stop", "resume"} <= set(seen)


def test_typed_replies_of_the_real_supervisor_give_back_its_json(shared_guest: str) -> None:
    """What the client parses from a real supervisor is what the supervisor sent: the
    dataclasses lose no field (``ps --json`` and ``stop --json`` show ``to_json()``)."""
    with client(shared_guest) as c:
        c.subscribe()
        raw = c.call("status")
        assert parse_status(Reply(raw, "status")).to_json() == raw
        status = c.status()
        assert (status.name, status.smp, status.append) == (shared_guest, 2, "threads=8")
        assert status.supervisor_pid == SessionDir.named(shared_guest).read_record()[
            "supervisor_pid"] and status.qemu_state == "running"
        paused = c.pause()
        assert paused.state == "paused" and paused.qemu_state is None  # pause asks no QEMU
        assert "qemu_state" not in paused.to_json()
        cpus = c.read_registers()
        c.resume()
        deadline = time.monotonic() + 10
        events = []
        while len(events) < 3 and time.monotonic() < deadline:
            if (event := c.next_event(1.0)) is not None:
                events.append(event)
    # QMP's STOP and RESUME, and the pause's own event (before or after QMP's STOP) with
    # the vCPU the gdbstub's interrupt reply named, as the pause's status says.
    assert [e.type for e in events if e.type != "user_paused"] == ["stop", "resume"]
    mine = [e for e in events if e.type == "user_paused"]
    assert len(mine) == 1 and mine[0].extra["cpu"] == paused.paused_cpu in (0, 1), mine
    assert [c.cpu for c in cpus] == [0, 1] and all(c.registers["rip"] > 0 for c in cpus)


CLIENT_SCRIPT = """
import sys, time
from undebug.session.client import SupervisorClient
from undebug.session.store import SessionDir, runtime_dir
c = SupervisorClient(SessionDir.named(sys.argv[1]))
c.call("subscribe")
print("connected", flush=True)
while True:
    c.call("read_registers")
"""


@pytest.mark.parametrize("paused", [False, True], ids=["running", "paused"])
def test_killed_client_leaves_the_guest_as_it_was(shared_guest: str, paused: bool) -> None:
    if paused:
        undebug("stop", shared_guest)
    proc = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, shared_guest],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
        time.sleep(0.3)  # mid-conversation
        proc.kill()
        proc.wait()
        time.sleep(0.5)
        mine = guest_status(shared_guest)
        assert mine["state"] == ("paused" if paused else "running")
        assert mine["qemu_state"] == ("paused" if paused else "running")
    finally:
        undebug("cont", shared_guest)


def test_resume_of_a_crashed_guest_is_refused(guest_image: Path) -> None:
    name = "crashed"
    assert undebug("run", "-d", "--name", name, "--append", "crash=panic crash_after=50",
                   str(guest_image)).code == 0
    wait_for_console(name, "PANIC: planted panic")
    deadline = time.monotonic() + 10
    while guest_status(name)["state"] != "guest-panicked":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    result = undebug("cont", name)
    assert result.code == 2
    assert "cannot run on: guest panicked: PANIC: planted panic" in result.stderr
    assert undebug("kill", name).code == 0


def test_a_killed_supervisor_takes_qemu_along(guest_image: Path) -> None:
    name = "orphan-check"
    assert undebug("run", "-d", "--name", name, str(guest_image)).code == 0
    status = guest_status(name)
    os.kill(status["supervisor_pid"], signal.SIGKILL)
    assert gone(status["qemu_pid"])
    ended = guest_status(name)
    assert ended["state"] == "ended"
    assert ended["outcome"] == {"kind": "killed", "ok": False, "exit_code": None,
                                "run_state": None,
                                "reason": f"supervisor died (pid {status['supervisor_pid']})"}
    assert "ended (killed)" in undebug("ps").stdout
    undebug("kill", name)


def test_a_qemu_that_aborts_is_named_with_its_last_words(guest_image: Path) -> None:
    """QEMU 7.2 under TCG can abort on its own assertion (guest-stubs/refguest/main.c, the
    watched globals); ps must say QEMU died of SIGABRT and what QEMU printed, not just
    "killed". The abort cannot be caused on demand, so this test appends the line QEMU
    printed when it happened here to the real stderr file, then sends the signal itself."""
    name = "aborted"
    assert undebug("run", "-d", "--name", name, str(guest_image)).code == 0
    try:
        status = guest_status(name)
        said = "ERROR:../../softmmu/cpus.c:502:qemu_mutex_lock_iothread_impl: assertion failed"
        with open(SessionDir.named(name).path / "qemu.stderr", "a") as stderr:
            stderr.write(f"**\n{said}\n")
        os.kill(status["qemu_pid"], signal.SIGABRT)
        assert gone(status["qemu_pid"])
        deadline = time.monotonic() + 10
        while guest_status(name)["state"] != "ended" and time.monotonic() < deadline:
            time.sleep(0.1)
        outcome = guest_status(name)["outcome"]
        assert (outcome["kind"], outcome["ok"]) == ("killed", False)
        assert outcome["reason"] == ("QEMU was killed by signal 6 (SIGABRT); its last line on "
                                     f"stderr: {said}")
    finally:
        undebug("kill", name)


def test_kill_returns_as_soon_as_the_guest_is_gone(guest_image: Path) -> None:
    """`kill` costs little more than the CLI's own start (an unknown name, refused at
    once, has the same start): it waited ~2 s before. Best of three, the machine is
    shared."""
    def seconds(*args: str) -> float:
        start = time.monotonic()
        undebug(*args)
        return time.monotonic() - start

    baseline = min(seconds("kill", "no-such-guest") for _ in range(3))
    kills = []
    for _ in range(3):
        assert undebug("run", "-d", "--name", "quick-kill", str(guest_image)).code == 0
        kills.append(seconds("kill", "quick-kill"))
        assert "quick-kill" not in undebug("ps").stdout
    assert min(kills) - baseline < 0.6, (kills, baseline)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill-9"])
def test_foreground_run_ends_its_guest_when_it_goes(guest_image: Path, how: int) -> None:
    name = f"fg-{how}"
    proc = subprocess.Popen([sys.executable, "-m", "undebug.cli", "run", "--name", name,
                             str(guest_image)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_console(name, "refguest: ready")
        status = guest_status(name)
        proc.send_signal(how)
        code = proc.wait(20)
        assert gone(status["qemu_pid"])
        assert gone(status["supervisor_pid"])
        if how == signal.SIGINT:
            assert code == 130
            assert b"Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        proc.kill()
        undebug("kill", name)


def test_foreground_run_keeps_a_crashed_guest_paused_until_ctrl_c(guest_image: Path) -> None:
    name = "fg-crash"
    proc = subprocess.Popen([sys.executable, "-m", "undebug.cli", "run", "--name", name,
                             "--append", "crash=panic crash_after=100", str(guest_image)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while next((g["state"] for g in undebug("ps", "--json").json()["guests"]
                    if g["name"] == name), None) != "guest-panicked":
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
        time.sleep(0.5)
        assert proc.poll() is None  # still there: the crash is left for inspection
        assert undebug("bt", name, "--all").code == 0
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 130
        err = proc.stderr.read().decode()  # type: ignore[union-attr]
        assert "panic in crash_panic (main.c:" in err  # the crash in words
        assert ": PANIC: planted panic (crash=panic)" in err
        assert f"paused for inspection as '{name}'" in err
        assert "PANIC: planted panic (crash=panic)" in proc.stdout.read().decode()  # type: ignore[union-attr]
    finally:
        proc.kill()
        undebug("kill", name)


def test_parallel_runs_with_one_name_one_wins(guest_image: Path) -> None:
    """An ended session of the name is there (its supervisor was killed); six runs race
    to replace it: one gets the name, the others a clear refusal, no traceback."""
    name = "contested"
    assert undebug("run", "-d", "--name", name, str(guest_image)).code == 0
    status = guest_status(name)
    os.kill(status["supervisor_pid"], signal.SIGKILL)
    assert gone(status["supervisor_pid"]) and gone(status["qemu_pid"])
    command = [sys.executable, "-m", "undebug.cli", "run", "-d", "--name", name,
               "--accel", "tcg", str(guest_image)]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(6)]
    try:
        results = [(proc.communicate(timeout=60)[1], proc.returncode) for proc in procs]
        assert sorted(code for _, code in results) == [0, 2, 2, 2, 2, 2], results
        for err, code in results:
            assert "Traceback" not in err
            if code == 2:
                assert err.startswith(f"undebug: error: a guest named '{name}' is already "
                                      "running\n"), err
        mine = [g for g in undebug("ps", "--json").json()["guests"] if g["name"] == name]
        assert len(mine) == 1 and mine[0]["state"] == "running"
        assert mine[0]["supervisor_pid"] != status["supervisor_pid"]
    finally:
        undebug("kill", name)


def _processes() -> dict[int, tuple[int, str, bytes]]:
    """pid -> (parent pid, command name, command line) of every process we can see."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
                cmdline = Path(entry.path, "cmdline").read_bytes()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            found[int(entry.name)] = (int(stat[stat.rindex(")") + 2 :].split()[1]), comm, cmdline)
    return found


def _wait_for(find, timeout: float = 30):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while (found := find()) is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    return found


def _ram_links(pid: int) -> list[str]:
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return [link for link in links if "memfd:" in link or link.startswith("/dev/shm/")]


def test_a_supervisor_killed_as_qemu_starts_leaves_no_ram_file(guest_image: Path) -> None:
    """kill -9 of the supervisor once QEMU holds the guest's RAM, before the supervisor
    could do anything more about it: no RAM file is left, then or after the next run."""
    name = "ram-kill"
    session = SessionDir.named(name)
    run = subprocess.Popen([sys.executable, "-m", "undebug.cli", "run", "-d", "--name", name,
                            str(guest_image)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    try:
        marker = os.fsencode(session.path)

        def supervisor() -> int | None:
            return next((pid for pid, (_, _, cmd) in _processes().items()
                         if b"undebug.session.supervisor" in cmd and marker in cmd), None)

        supervisor_pid = _wait_for(supervisor)

        def qemu() -> int | None:
            return next((pid for pid, (ppid, comm, _) in _processes().items()
                         if ppid == supervisor_pid and comm.startswith("qemu-system")), None)

        qemu_pid = _wait_for(qemu)
        os.kill(supervisor_pid, signal.SIGSTOP)
        _wait_for(lambda: _ram_links(qemu_pid) or None)
        os.kill(supervisor_pid, signal.SIGKILL)
        assert gone(qemu_pid)
        err = run.communicate(timeout=60)[1]
        assert run.returncode == 2 and "Traceback" not in err, err
        assert "the supervisor failed to start" in err
    finally:
        run.kill()
    assert ram_files(name) == []
    assert undebug("run", "--ci", "--name", name, "--append", "run_for=100",
                   str(guest_image)).code == 0
    assert ram_files(name) == []


def ram_files(name: str) -> list[str]:
    """Files named after session ``name`` in the tmpfs directory undebug once kept guest
    RAM in (``/dev/shm/undebug-$UID``)."""
    shm = Path(f"/dev/shm/undebug-{os.getuid()}")
    return [p.name for p in shm.iterdir() if p.name.startswith(name)] if shm.is_dir() else []


def test_leftovers_of_killed_commands_are_taken_over(guest_image: Path, tmp_path: Path) -> None:
    """What a run killed at the wrong moment leaves: a session directory with no lock
    held and no record (killed before its supervisor started), and a directory moved
    aside to be deleted (killed between the rename and the delete). The next run takes
    the name over and deletes the rest."""
    image = tmp_path / "leftover.elf"
    image.write_bytes(guest_image.read_bytes())
    never_started = runtime_dir() / "leftover"
    never_started.mkdir()
    (never_started / "spec.json").write_text("{}")
    aside = runtime_dir() / ".ended-leftover-0badc0de"
    aside.mkdir()
    (aside / "trace.utrace").write_bytes(b"\0" * 4096)
    result = undebug("run", "--ci", "--json", "--append", "run_for=100", str(image))
    assert result.code == 0, result.stderr
    assert result.json()["name"] == "leftover"
    assert not aside.exists() and not never_started.exists()


def test_ctrl_c_while_the_guest_starts_leaves_nothing_running(guest_image: Path) -> None:
    """SIGINT to `run` once its supervisor exists but before it is ready: exit 130, and
    the supervisor (in a session of its own, so the SIGINT is not its) and QEMU go too."""
    name = "interrupted-start"
    session = SessionDir.named(name)
    run = subprocess.Popen([sys.executable, "-m", "undebug.cli", "run", "--name", name,
                            str(guest_image)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        marker = os.fsencode(session.path)
        supervisor_pid = _wait_for(lambda: next(
            (pid for pid, (_, _, cmd) in _processes().items()
             if b"undebug.session.supervisor" in cmd and marker in cmd), None))
        assert not session.record_file.exists()  # not ready yet
        run.send_signal(signal.SIGINT)
        assert run.wait(30) == 130
        assert gone(supervisor_pid)
        assert [pid for pid, (_, _, cmd) in _processes().items() if marker in cmd] == []
        assert name not in undebug("ps").stdout
    finally:
        run.kill()
        undebug("kill", name)


def test_ps_reports_what_the_supervisor_and_qemu_cost(shared_guest: str) -> None:
    """CPU seconds and RSS, as /proc says (read here independently, around the ps)."""
    page = os.sysconf("SC_PAGE_SIZE")

    def rss(pid: int) -> int:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page

    status = guest_status(shared_guest)
    before = rss(status["supervisor_pid"])
    cost = guest_status(shared_guest)["cost"]
    after = rss(status["supervisor_pid"])
    assert cost["supervisor_cpu_s"] > 0 and cost["qemu_cpu_s"] > 0
    assert min(before, after) - (4 << 20) <= cost["supervisor_rss_bytes"] <= \
        max(before, after) + (4 << 20)
    assert abs(cost["qemu_rss_bytes"] - rss(status["qemu_pid"])) <= 16 << 20
    assert "SUPERVISOR" in undebug("ps").stdout.splitlines()[0]
