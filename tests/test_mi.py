"""The GDB/MI session: routing on recorded gdb transcripts (no gdb), then real gdb + QEMU,
then ``undebug eval``.

The transcripts in tests/data/mi/ were recorded from gdb 13.1 --interpreter=mi3 on
build/refguest.elf against QEMU 7.2's gdbstub by ``python -m tests.test_mi record``
(MiSession's ``transcript``: ``> `` lines are what we sent, the rest is gdb's output in
the order it came). Two are hand-made from recorded lines, and say so at their top.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import GUEST, undebug, wait_for_console
from undebug.elf import ElfFile
from undebug.errors import EnvironmentMissing, UsageError
from undebug.gdb.mi import GdbExited, MiError, MiSession, MiTimeout, c_string
from undebug.gdb.mi_records import ExitEvent, NotifyEvent, StopEvent, StreamEvent, ThreadEvent

DATA = Path(__file__).parent / "data" / "mi"
SEED = 0x5EED000000000000  # planted_counter at boot (guest-stubs/refguest/main.c)

# A stand-in for gdb: a small Python script that replays a transcript through its stdout
# pipe, one block of output per command it reads on stdin. It checks each command against
# the transcript ({ELF} and {SOCK} match any path) and exits 99 on a mismatch; lines
# "#! sleep S", "#! stderr TEXT" and "#! exit N" act, other "#" lines are comments.
FAKE_GDB = r"""
import re, sys, time
lines = open(sys.argv[1]).read().splitlines()
got = ""
for line in lines:
    if line.startswith("> "):
        got = sys.stdin.readline().rstrip("\n")
        want = re.escape(line[2:]).replace(r"\{ELF\}", r"\S+").replace(r"\{SOCK\}", r"\S+")
        if not re.fullmatch(want, got):  # (a mismatch ends it: the caller sees gdb die)
            sys.stderr.write(f"fake gdb: expected {line[2:]!r}, got {got!r}\n")
            sys.exit(99)
    elif line.startswith("#! sleep "):
        time.sleep(float(line[9:]))
    elif line.startswith("#! stderr "):
        sys.stderr.write(line[10:] + "\n")
        sys.stderr.flush()
    elif line.startswith("#! exit "):
        sys.exit(int(line[8:]))
    elif not line.startswith("#"):
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
if got.lstrip("0123456789").startswith("-gdb-exit"):  # the last command: gdb has gone
    sys.exit(0)
for got in sys.stdin:  # the transcript is over: behave like an idle gdb until -gdb-exit
    token = re.match(r"\d*", got).group(0)
    if got[len(token):].startswith("-gdb-exit"):
        sys.stdout.write(token + "^exit\n")
        sys.exit(0)
    sys.stdout.write(token + '^error,msg="fake gdb: no more transcript"\n(gdb) \n')
    sys.stdout.flush()
"""


def fake_gdb(transcript: str, timeout: float = 5.0) -> MiSession:
    """MiSession.start on the fake gdb replaying tests/data/mi/``transcript``."""
    return MiSession.start(GUEST, gdb=[sys.executable, "-c", FAKE_GDB, str(DATA / transcript)],
                           timeout=timeout)


def gone(pid: int) -> bool:
    """True when ``pid`` is no longer a live process (a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# ---- recorded transcripts, fake gdb -------------------------------------------------

def test_connect_reply_is_routed_by_token_past_the_async_records_before_it() -> None:
    with fake_gdb("connect_interrupt.txt") as mi:
        reply = mi.connect("/tmp/any.sock")
        # gdb printed =thread-group-started, =thread-created, ~"...", *stopped, then 3^connected
        assert (reply.token, reply.cls) == (3, "connected")
        assert reply.console == ("0x000000000000fff0 in ?? ()\n",)
        events = mi.events()
        kinds = [type(e).__name__ for e in events]
        assert kinds.index("ThreadEvent") < kinds.index("StopEvent")
        assert ThreadEvent("created", "1", "i1") in events
        stop = mi.wait_stopped(timeout=0)  # already stopped: no wait
        assert stop.frame is not None and stop.frame.addr == 0xFFF0 and stop.thread_id == 1


def test_interrupt_returns_the_stop_that_comes_after_its_done() -> None:
    with fake_gdb("connect_interrupt.txt") as mi:
        mi.connect("/tmp/any.sock")
        assert mi.cont().cls == "running"
        assert mi.running
        stop = mi.interrupt()  # 5^done and (gdb) first; ~"Program received..." and *stopped later
        assert (stop.reason, stop.signal, stop.thread_id) == ("signal-received", "SIGINT", 1)
        assert stop.frame is not None and stop.frame.function == "idle_loop"
        assert stop.frame.file == "sched.c" and stop.frame.line == 280
        assert not mi.running
        text = "".join(e.text for e in mi.events() if isinstance(e, StreamEvent))
        assert "Program received signal SIGINT" in text


def test_evaluate_gives_value_and_whatis_type_and_error_carries_gdbs_message() -> None:
    with fake_gdb("connect_interrupt.txt") as mi:
        mi.connect("/tmp/any.sock")
        mi.cont()
        mi.interrupt()
        value = mi.evaluate("planted_counter")  # 6^done in the transcript, not 5's or 7's
        assert value.type == "volatile uint64_t" and value.value == "6840123409045651466"
        with pytest.raises(MiError, match=r'^No symbol "nosuch" in current context\.$'):
            mi.evaluate("nosuch")
        assert mi.evaluate("sizeof(struct thread)").value == "208"
        name = mi.evaluate("thread_list->name")
        assert name.type == "char [32]" and name.value.startswith('"main", ')
        started = time.monotonic()
        mi.close()  # 13-gdb-exit, 13^exit, and gdb goes
        assert time.monotonic() - started < 1.0 and gone(mi.pid)


def test_breakpoint_hit_brings_breakpoint_modified_then_stopped_and_log_text_with_an_error() -> None:
    with fake_gdb("breakpoint.txt") as mi:
        mi.connect("/tmp/any.sock")
        number = mi.command("-break-insert worker_main").payload["bkpt"]["number"]
        mi.events()
        mi.cont()
        stop = mi.wait_stopped()
        assert stop.reason == "breakpoint-hit" and stop.breakpoint == int(number)
        assert stop.frame is not None and stop.frame.function == "worker_main"
        events = mi.events()
        modified = [e for e in events if isinstance(e, NotifyEvent) and e.cls == "breakpoint-modified"]
        assert modified and modified[0].payload["bkpt"]["times"] == "1"
        assert events.index(modified[0]) < next(i for i, e in enumerate(events)
                                                if isinstance(e, StopEvent))
        with pytest.raises(MiError, match="No symbol \"nosuch\""):
            mi.console("print nosuch")
        logs = [e.text for e in mi.events() if isinstance(e, StreamEvent) and e.kind == "log"]
        assert logs == ['No symbol "nosuch" in current context.\n']


def test_a_command_ends_at_the_prompt_so_records_before_it_are_seen_first() -> None:
    with fake_gdb("slow_running.txt") as mi:
        mi.connect("/tmp/any.sock")
        started = time.monotonic()
        assert mi.cont().cls == "running"  # 4^running, (pause), *running, (gdb)
        assert time.monotonic() - started >= 0.25
        assert mi.running  # the *running record was read before cont() returned


def test_a_reply_after_its_timeout_is_dropped_and_the_next_command_gets_its_own() -> None:
    with fake_gdb("late_reply.txt") as mi:
        started = time.monotonic()
        with pytest.raises(MiTimeout):
            mi.command('-data-evaluate-expression "planted_counter"', timeout=0.2)
        assert time.monotonic() - started < 1.0
        # gdb now sends 3^done (late, for nobody), an async record, then 4^done
        assert mi.command('-data-evaluate-expression "sizeof(struct thread)"').payload == \
            {"value": "208"}
        assert any(isinstance(e, NotifyEvent) and e.cls == "breakpoint-modified"
                   for e in mi.events())


def test_gdb_dying_mid_command_raises_promptly_with_its_stderr() -> None:
    with fake_gdb("gdb_dies.txt", timeout=10.0) as mi:
        started = time.monotonic()
        with pytest.raises(GdbExited, match=r"status 134.*internal-error: oops") as caught:
            mi.command('-data-evaluate-expression "planted_counter"')
        assert time.monotonic() - started < 2.0  # not the 10 s timeout
        assert caught.value.exit_code == 2
        started = time.monotonic()
        with pytest.raises(GdbExited):
            mi.command("-thread-info")  # refused at once
        assert time.monotonic() - started < 0.5
        assert ExitEvent(134) in mi.events()
        pid = mi.pid
    assert gone(pid)


def test_close_kills_a_gdb_that_hangs_on_gdb_exit() -> None:
    mi = fake_gdb("hangs.txt")
    started = time.monotonic()
    mi.close(timeout=0.5)
    assert time.monotonic() - started < 3.0 and gone(mi.pid)
    mi.close()  # twice is harmless


def test_a_newline_cannot_smuggle_a_second_command() -> None:
    with pytest.raises(UsageError):
        c_string('x"\n-target-detach')
    assert c_string('a\\b "c"') == '"a\\\\b \\"c\\""'
    with fake_gdb("connect_interrupt.txt") as mi, pytest.raises(UsageError):
        mi.command("-thread-info\n-gdb-exit")


def test_missing_gdb_is_environment_missing_with_the_install_hint(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(EnvironmentMissing) as caught:
        MiSession.start()
    assert caught.value.exit_code == 3 and "apt-get install gdb" in (caught.value.hint or "")


# ---- real gdb ----------------------------------------------------------------------



class Qemu:
    """The reference guest on a plain QEMU gdbstub (unix socket), held at reset (-S)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="mi-")  # short: unix socket paths max 107 bytes
        self.gdb, self.console = f"{self.dir}/gdb.sock", f"{self.dir}/console.txt"
        qemu = shutil.which("qemu-system-x86_64")
        assert qemu is not None, "qemu-system-x86_64 is not installed (make setup installs it)"
        self.proc = subprocess.Popen([
            qemu, "-M", "pc", "-accel", "tcg", "-m", "128", "-display", "none", "-vga", "none",
            "-nodefaults", "-no-user-config", "-S", "-serial", f"file:{self.console}",
            "-chardev", f"socket,id=g,path={self.gdb},server=on,wait=off", "-gdb", "chardev:g",
            "-kernel", str(GUEST),
        ], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(self.gdb):
            assert self.proc.poll() is None and time.monotonic() < deadline, "QEMU did not start"
            time.sleep(0.01)

    def wait_console(self, needle: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while needle not in Path(self.console).read_text(errors="replace"):
            assert time.monotonic() < deadline, f"{needle!r} not on the console"
            time.sleep(0.05)

    def kill(self) -> None:
        self.proc.kill()  # this PID only
        self.proc.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def booted(guest_image: Path) -> Iterator[tuple[Qemu, MiSession]]:
    """gdb connected to a reference guest that has booted (`ready`), stopped."""
    vm = Qemu()
    try:
        with MiSession.start(GUEST) as mi:
            mi.connect(vm.gdb)
            mi.cont()
            vm.wait_console("refguest: ready")
            mi.interrupt()
            yield vm, mi
    finally:
        vm.kill()


def test_live_planted_counter_is_what_the_guest_set_at_run_time(booted: tuple[Qemu, MiSession]) -> None:
    # The README: SEED at boot, then requests_handled++ and planted_counter++ per request
    # (in that order: one vCPU stopped between the two leaves planted_counter one behind).
    value = booted[1].evaluate("planted_counter")
    requests = int(booted[1].evaluate("requests_handled").value)
    assert value.type == "volatile uint64_t"
    assert requests - 1 <= int(value.value) - SEED <= requests, (value, requests)


def test_live_sizeof_and_strings_agree_with_our_own_dwarf_reader(booted: tuple[Qemu, MiSession]) -> None:
    layout = ElfFile(GUEST).struct("thread")
    assert layout is not None
    assert booted[1].evaluate("sizeof(struct thread)").value == str(layout.size)
    name = booted[1].evaluate("thread_list->name")
    assert name.type == "char [32]" and name.value.startswith('"main"')


def test_live_interrupt_after_continue_works_because_mi_async_is_on(
        booted: tuple[Qemu, MiSession]) -> None:
    mi = booted[1]
    before = int(mi.evaluate("planted_counter").value)
    mi.cont()
    time.sleep(0.3)
    started = time.monotonic()
    stop = mi.interrupt(timeout=5)
    assert time.monotonic() - started < 2 and stop.signal == "SIGINT"
    assert int(mi.evaluate("planted_counter").value) >= before  # it ran; requests count it


def test_live_commands_end_at_the_prompt_not_after_a_timeout() -> None:
    with MiSession.start() as mi:
        mi.command("-data-evaluate-expression 1+1")
        started = time.perf_counter()
        for _ in range(20):
            assert mi.command("-data-evaluate-expression 1+1").payload == {"value": "2"}
        assert time.perf_counter() - started < 2.0  # pygdbmi's write() would need 4 s


def test_live_close_of_a_running_session_leaves_no_gdb_and_the_guest_running(
        guest_image: Path) -> None:
    vm = Qemu()
    try:
        mi = MiSession.start(GUEST)
        mi.connect(vm.gdb)
        mi.cont()
        mi.close()
        assert gone(mi.pid)
        vm.wait_console("refguest: ready")  # gdb detached: the guest runs on
        assert vm.proc.poll() is None
    finally:
        vm.kill()


def test_live_evaluate_at_a_gdbstub_reports_gdb_errors_as_usage_errors(
        guest_image: Path) -> None:
    from undebug.evaluate import evaluate_at

    vm = Qemu()
    try:
        value, type_ = evaluate_at(vm.gdb, GUEST, "sizeof(struct thread)", thread=1)
        assert type_ == "int" and int(value) > 0  # gdb types sizeof as int
        with pytest.raises(UsageError, match='No symbol "nosuch" in current context'):
            evaluate_at(vm.gdb, GUEST, "nosuch")
        with pytest.raises(UsageError, match="no thread 99"):
            evaluate_at(vm.gdb, GUEST, "1", thread=99)
    finally:
        vm.kill()


# ---- undebug eval --------------------------------------------------------------------



def test_eval_escapes_guest_strings_in_the_value() -> None:
    from undebug.commands.eval import value_line

    # gdb octal-escapes most control characters itself, but not every character a terminal
    # obeys (a bidi override is "printable" UTF-8): whatever reaches us raw is escaped here
    line = value_line("t->name", '"evil\x1b]0;owned\x07\u202e"', "char [32]")
    assert line == 't->name = "evil\\x1b]0;owned\\x07\\u202e" (char [32])'


def test_eval_without_gdb_is_exit_3_with_the_install_hint() -> None:
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # python, but no gdb
    result = undebug("eval", "no-such-guest", "planted_counter", env=env)
    assert result.code == 3 and "apt-get install gdb" in result.stderr


def test_eval_of_an_unknown_guest_is_exit_2_before_anything_starts() -> None:
    result = undebug("eval", "no-such-guest", "planted_counter", "--json")
    assert result.code == 2 and result.json()["error"]["exit_code"] == 2


def test_eval_through_the_proxy_prints_value_and_type(shared_guest: str) -> None:
    result = undebug("eval", shared_guest, "planted_counter", "--json")
    assert result.code == 0, result.stderr
    doc = result.json()
    assert doc["schema"] == "undebug/1" and doc["expression"] == "planted_counter"
    assert doc["type"] == "volatile uint64_t" and doc["thread"] is None
    # one stop, both counters (README: planted_counter = SEED + requests_handled, each vCPU
    # at most one request behind, between its two increments)
    both = undebug("eval", shared_guest, "planted_counter - requests_handled", "--json").json()
    assert SEED - 2 <= int(both["value"]) <= SEED, both
    layout = ElfFile(GUEST).struct("thread")
    assert layout is not None
    text = undebug("eval", shared_guest, "sizeof(struct thread)")
    assert text.code == 0 and text.stdout == f"sizeof(struct thread) = {layout.size} (int)\n"
    # gdb detached: the guest ran on (it counts requests) and is running now
    assert int(undebug("eval", shared_guest, "planted_counter", "--json").json()["value"]) > \
        int(doc["value"])
    status = next(g for g in undebug("ps", "--json").json()["guests"] if g["name"] == shared_guest)
    assert status["state"] == "running"


def test_eval_leaves_a_paused_guest_paused(guest_image: Path) -> None:
    name = "eval-paused"
    assert undebug("run", "-d", "--name", name, str(guest_image)).code == 0
    try:
        wait_for_console(name, "refguest: ready")
        assert undebug("stop", name).code == 0
        values = [undebug("eval", name, "planted_counter", "--json").json()["value"]
                  for _ in range(2)]
        assert values[0] == values[1]  # it did not run between the two
        memory = undebug("mem", name, "planted_counter", "8", "--json").json()  # our reader
        assert int(values[0]) == int.from_bytes(bytes.fromhex(memory["hex"]), "little")
        status = next(g for g in undebug("ps", "--json").json()["guests"] if g["name"] == name)
        assert status["state"] != "running" and status["user_paused"]
    finally:
        undebug("kill", name)


def test_eval_of_a_bad_expression_is_exit_2_with_gdbs_message(shared_guest: str) -> None:
    result = undebug("eval", shared_guest, "nosuch + 1")
    assert result.code == 2 and 'No symbol "nosuch" in current context' in result.stderr


@pytest.fixture
def paused_guest(guest_image: Path) -> Iterator[str]:
    """A reference guest (-smp 2, 4 workers) stopped by `undebug stop`, so that a sleeping
    thread's saved registers stay put between two readers."""
    name = "eval-thread"
    assert undebug("run", "-d", "--name", name, "--smp", "2", "--append", "threads=4",
                   str(guest_image)).code == 0
    try:
        wait_for_console(name, "refguest: ready")
        assert undebug("stop", name).code == 0
        yield name
    finally:
        undebug("kill", name)


def _saved_registers(name: str, thread: int) -> dict[str, int]:
    """`undebug regs --thread`: the independent reader of a thread's registers."""
    regs = undebug("regs", name, "--thread", str(thread), "--json").json()
    assert regs["source"] == "saved context"
    return {"rsp": regs["registers"]["rsp"], "pc": regs["registers"]["rip"]}


def _sleeping_workers(name: str) -> list[dict]:
    threads = undebug("threads", name, "--json").json()["threads"]
    return [t for t in threads if t["name"].startswith("worker-") and t["cpu"] is None]


def test_eval_in_a_guest_thread_reads_that_threads_registers(paused_guest: str) -> None:
    workers = _sleeping_workers(paused_guest)
    assert len(workers) >= 2, workers
    for worker in workers[:2]:  # two: a selection that is ignored cannot give both
        got = {}
        for reg in ("rsp", "pc"):
            result = undebug("eval", paused_guest, f"(unsigned long)${reg}", "--thread",
                             str(worker["id"]), "--json")
            assert result.code == 0, result.stderr
            assert result.json()["thread"] == worker["id"]
            got[reg] = int(result.json()["value"])
        assert got == _saved_registers(paused_guest, worker["id"]), worker


def test_eval_thread_is_the_guest_id_where_gdbs_thread_numbers_differ(
        paused_guest: str, runtime_dir: Path) -> None:
    # An OS whose thread list runs newest first (a list that inserts at its head) and not
    # in id order: gdb numbers threads in list order, so its numbers are not the guest's
    # ids. The server is undebug's own, with its thread provider reordering the real list.
    from dataclasses import replace

    from undebug.evaluate import evaluate_at
    from undebug.gdbserver.live import LiveBackend
    from undebug.gdbserver.server import GdbServer
    from undebug.os import provider_for
    from undebug.os.provider import ThreadSnapshot
    from undebug.session.store import SessionDir
    from undebug.target import Target

    def newest_first(target: Target) -> ThreadSnapshot:
        snapshot = provider_for(target).threads()
        return replace(snapshot, threads=snapshot.threads[::-1])

    ids = [t["id"] for t in undebug("threads", paused_guest, "--json").json()["threads"]][::-1]
    worker = next(w for w in _sleeping_workers(paused_guest) if ids.index(w["id"]) + 1 != w["id"])
    backend = LiveBackend(SessionDir.named(paused_guest))
    server = GdbServer(backend, newest_first, runtime_dir / "newest-first.sock")
    serving = threading.Thread(target=server.serve, daemon=True)
    serving.start()
    try:
        got = {reg: int(evaluate_at(server.where, GUEST, f"(unsigned long)${reg}",
                                    thread=worker["id"], resume=False)[0])
               for reg in ("rsp", "pc")}
    finally:
        server.stop()
        serving.join(timeout=10)
        server.close()
        backend.close()
    assert got == _saved_registers(paused_guest, worker["id"])


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def test_eval_interrupted_by_ctrl_c_leaves_neither_gdb_nor_the_proxy(shared_guest: str) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "undebug.cli", "eval", shared_guest,
                             "planted_counter"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    children: set[int] = set()
    deadline = time.monotonic() + 15
    while len(children) < 2 and proc.poll() is None and time.monotonic() < deadline:
        children.update(_children(proc.pid))  # the proxy, then gdb
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)  # gdb and the proxy have only just started
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and out == b"" and b"Traceback" not in err, (out, err)
    deadline = time.monotonic() + 5  # they end after the CLI has exited: give them time
    while not all(gone(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert children and all(gone(pid) for pid in children)
    status = next(g for g in undebug("ps", "--json").json()["guests"] if g["name"] == shared_guest)
    assert status["state"] == "running"  # gdb detached even so: the guest runs as before


def test_eval_killed_by_sigkill_leaves_no_gdbserver_gdb_or_files(shared_guest: str,
                                                                 runtime_dir: Path) -> None:
    session = runtime_dir / shared_guest
    temp = Path(tempfile.gettempdir())
    before = set(temp.iterdir())
    proc = subprocess.Popen([sys.executable, "-m", "undebug.cli", "eval", shared_guest,
                             "planted_counter"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    children: set[int] = set()
    deadline = time.monotonic() + 15
    # Kill it once its gdbserver listens (gdb is connecting), as a user's kill -9 would.
    while proc.poll() is None and time.monotonic() < deadline and \
            not list(session.glob("eval-*.sock")) and not list(temp.glob("ud-eval-*/gdb.sock")):
        children.update(_children(proc.pid))
        time.sleep(0.005)
    children.update(_children(proc.pid))
    assert proc.poll() is None and len(children) == 2, "eval ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=5)
    deadline = time.monotonic() + 10
    while not all(gone(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone(pid) for pid in children), [Path(f"/proc/{p}/cmdline").read_bytes()
                                                for p in children if not gone(p)]
    assert list(session.glob("eval-*.sock")) == []  # the server removed its socket
    assert [p for p in set(temp.iterdir()) - before if p.name.startswith("ud-eval-")] == []
    # The guest is usable: another eval works (nothing holds it).
    assert undebug("eval", shared_guest, "1+1").stdout == "1+1 = 2 (int)\n"


# ---- recording (python -m tests.test_mi record) ---------------------------------------

def record() -> None:
    """Re-record the transcripts from real gdb and QEMU (the hand-made ones stay)."""
    def save(name: str, text: str, vm: Qemu, what: str) -> None:
        text = text.replace(str(GUEST), "{ELF}").replace(vm.gdb, "{SOCK}")
        header = (f"# gdb 13.1 --interpreter=mi3 on build/refguest.elf, QEMU 7.2 gdbstub: {what}\n"
                  "# recorded by `python -m tests.test_mi record`; '> ' lines were sent\n")
        (DATA / name).write_text(header + text)

    vm, out = Qemu(), io.StringIO()
    try:
        with MiSession.start(GUEST, transcript=out) as mi:
            mi.connect(vm.gdb)
            mi.cont()
            vm.wait_console("refguest: ready")
            mi.interrupt()
            mi.evaluate("planted_counter")
            with contextlib.suppress(MiError):
                mi.evaluate("nosuch")
            mi.evaluate("sizeof(struct thread)")
            mi.evaluate("thread_list->name")
        save("connect_interrupt.txt", out.getvalue(), vm,
             "connect, continue, interrupt, evaluate (one error), exit")
    finally:
        vm.kill()
    vm, out = Qemu(), io.StringIO()
    try:
        with MiSession.start(GUEST, transcript=out) as mi:
            mi.connect(vm.gdb)
            mi.command("-break-insert worker_main")
            mi.cont()
            mi.wait_stopped()
            with contextlib.suppress(MiError):
                mi.console("print nosuch")
            mi.command("-break-delete")
        save("breakpoint.txt", out.getvalue(), vm,
             "a breakpoint hit, a console command's error, exit")
    finally:
        vm.kill()


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    record()
