"""``undebug shell``: lines piped in run as the CLI runs them (exit code of the last failing
line), long-running commands are refused, and through a real pty (the shell a subprocess
on a pseudo-terminal, keys written to it) completion, history and ``help`` work."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prompt_toolkit.completion import CompleteEvent
from prompt_toolkit.document import Document

from tests.conftest import real_image, undebug, wait_for_console
from tui.cmdline import refusal, with_target
from undebug.cli import build_parser
from undebug.commands import COMMANDS

TAB, ENTER, UP, CTRL_C, CTRL_D = b"\t", b"\r", b"\x1b[A", b"\x03", b"\x04"
END = rb"(?=[\s\x1b])"  # where a word ends on the screen: a space or the next escape sequence


def _shell(args: list[str], stdin: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "undebug.cli", "shell", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _thread_id(guest: str, name: str) -> int:
    threads = undebug("threads", guest, "--json").json()["threads"]
    return next(t["id"] for t in threads if t["name"] == name)


# ---- a line read against the CLI's parser (no guest needed) ---------------------------

@pytest.mark.parametrize("line, expected", [
    ("threads", "threads web"),
    ("bt --thread 8", "bt web --thread 8"),
    ("regs --thread=3", "regs web --thread=3"),
    ("mem planted_counter 8", "mem web planted_counter 8"),
    ("break checksum_block", "break web checksum_block"),
    ("break --list", "break web --list"),
    ("delete --all", "delete web --all"),
    ("trace stats --json", "trace stats web --json"),
    ("logs -n 5", "logs web -n 5"),
    ("stop", "stop web"),
    ("eval --thread 8 planted_counter", "eval web --thread 8 planted_counter"),
    # every slot filled: the line names its own target
    ("threads other", "threads other"),
    ("break other checksum_block", "break other checksum_block"),
    ("mem other planted_counter 8", "mem other planted_counter 8"),
    ("bt other --thread 8", "bt other --thread 8"),
    ("trace stats rec.utrace", "trace stats rec.utrace"),
    # no TARGET slot: as typed
    ("ps", "ps"), ("run image.elf", "run image.elf"), ("trace", "trace"),
])
def test_the_shells_guest_fills_an_empty_target_slot(line: str, expected: str) -> None:
    assert " ".join(with_target(line.split(), "web")) == expected


@pytest.mark.parametrize("line, refused", [
    ("gdbserver web", True), ("trace record web -o x", True), ("trace show web -f", True),
    ("trace show web --fol", True), ("logs web -fn 3", True), ("logs web --follow", True),
    ("run image.elf", True), ("demo", True), ("attach --name a", True), ("shell web", True),
    ("logs web -n 3", False), ("trace show web", False), ("trace stats web", False),
    ("threads web", False), ("wait web", False),
])
def test_long_running_lines_are_told_apart(line: str, refused: bool) -> None:
    reason = refusal(line.split())
    assert (reason is not None) == refused
    if reason:
        assert reason.endswith(f"undebug {line}")


# ---- piped stdin -------------------------------------------------------------------------

def test_piped_lines_print_what_the_cli_prints_and_exit_with_the_last_failure(shared_guest: str) -> None:
    blocked = _thread_id(shared_guest, "blocked")  # blocked for good: its backtrace is stable
    cli_bt = undebug("bt", shared_guest, "--thread", str(blocked))
    cli_sym = undebug("sym", shared_guest, "planted_counter")
    # a usage error (2), then a wait that times out (1), then a line that works
    out = _shell([shared_guest], "threads\n"
                 f"bt --thread {blocked}\n"
                 "no-such-command\n"
                 "wait --timeout 0.2\n"
                 "sym planted_counter\n")
    assert out.returncode == 1, out.stderr
    assert out.stdout.startswith("ID  NAME")
    assert re.search(rf"^{blocked} +blocked +blocked ", out.stdout, re.M)
    assert cli_bt.stdout in out.stdout and cli_bt.stdout.startswith(f"thread {blocked} blocked")
    assert out.stdout.endswith(cli_sym.stdout)
    assert "invalid choice: 'no-such-command'" in out.stderr
    assert "undebug>" not in out.stdout + out.stderr  # no prompt without a terminal
    assert "\x1b" not in out.stdout  # no colour either

    # the other order: the wait's 1 first, the usage error last
    out = _shell([shared_guest], "wait --timeout 0.2\nno-such-command\nthreads\n")
    assert out.returncode == 2


def test_piped_lines_that_all_work_exit_0_and_json_is_the_clis(shared_guest: str) -> None:
    out = _shell([shared_guest], "# a comment\n\nregs --cpu 0 --json\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1  # one compact document, as the CLI prints to a pipe
    doc = undebug("regs", shared_guest, "--cpu", "0", "--json").json()
    assert set(doc) == set(json.loads(out.stdout))


def test_an_explicit_target_still_works(shared_guest: str) -> None:
    out = _shell(["no-such-guest-started"], "")
    assert out.returncode == 2 and "no-such-guest-started" in out.stderr  # checked up front
    out = _shell([], f"threads {shared_guest}\nthreads\n")
    assert out.stdout.startswith("ID  NAME")
    assert out.returncode == 2  # `threads` without a guest: the CLI's usage error
    assert "the following arguments are required: TARGET" in out.stderr


@pytest.mark.parametrize("line, cli", [
    ("gdbserver", "undebug gdbserver {g}"),
    ("logs -f", "undebug logs {g} -f"),
    ("trace show --follow", "undebug trace show {g} --follow"),
    ("trace record -o /tmp/x.utrace", "undebug trace record {g} -o /tmp/x.utrace"),
    ("run build/refguest.elf", "undebug run build/refguest.elf"),
])
def test_a_long_running_command_is_refused_with_the_cli_line(shared_guest: str, line: str,
                                                            cli: str) -> None:
    started = time.monotonic()
    out = _shell([shared_guest], f"{line}\nsym planted_counter\n")
    assert time.monotonic() - started < 30
    assert out.returncode == 2
    assert cli.format(g=shared_guest) in out.stderr
    assert "planted_counter" in out.stdout  # the shell went on
    assert not (Path(os.environ["UNDEBUG_RUNTIME_DIR"]) / shared_guest / "gdbserver.sock").exists()


def test_py_binds_the_attached_guest_and_resumes_it(shared_guest: str) -> None:
    def state() -> str:
        guests = undebug("ps", "--json").json()["guests"]
        return str(next(g for g in guests if g["name"] == shared_guest)["state"])

    before = state()
    # names, not a count: the guest's short-lived thread comes and goes between two reads
    stable = {t["name"] for t in undebug("threads", shared_guest, "--json").json()["threads"]
              if t["name"] != "short-lived"}
    out = _shell([shared_guest], "py\nprint('threads', sorted(t.raw for t in "
                 "(x.name for x in guest.threads())))\n")
    assert out.returncode == 0, out.stderr
    shown = next(line for line in out.stdout.splitlines() if "threads [" in line)
    assert all(repr(name) in shown for name in stable), (stable, shown)
    assert state() == before  # held only while py ran: left as it was found


# ---- completion, in-process ----------------------------------------------------------

def test_completion_offers_options_subcommands_choices_guests_and_threads(shared_guest: str) -> None:
    from tui.completion import GuestFacts, LineCompleter

    def offered(text: str, name: str | None = shared_guest) -> list[str]:
        completer = LineCompleter(name, GuestFacts())
        return [c.text for c in completer.get_completions(Document(text), CompleteEvent())]

    assert offered("bt --th") == ["--thread"]
    assert offered("trace s") == ["show", "stats"]
    assert offered("mem --format ") == ["hex", "raw"]
    assert offered("help thr") == ["threads"]
    assert shared_guest in offered("threads ", name=None)  # no guest at start: the line names it
    assert shared_guest in offered("py ")
    threads = undebug("threads", shared_guest, "--json").json()["threads"]
    workers = [str(t["id"]) for t in threads if t["name"].startswith("worker-")]
    assert offered("regs --thread worker-") == workers
    assert offered(f"bt {shared_guest} --thread worker-", name=None) == workers  # the line's guest
    assert offered("sym planted_c") == ["planted_counter"]


# ---- through a pty -----------------------------------------------------------------------

def _controlling_tty() -> None:
    """In the child, after setsid: the pty becomes its terminal, so Ctrl-C is SIGINT."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Pty:
    """The shell on a real pseudo-terminal: keys written to it, the screen bytes read."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.proc = subprocess.Popen([sys.executable, "-m", "undebug.cli", "shell", *args],
                                     stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True, preexec_fn=_controlling_tty)
        os.close(slave)
        self.master = master
        self.seen = b""  # every byte the shell wrote to the terminal
        self.at = 0  # where the last match ended: the next one is searched after it

    def expect(self, pattern: bytes, timeout: float = 60) -> None:
        """Read until ``pattern`` appears after the last match."""
        deadline = time.monotonic() + timeout
        while not (found := re.compile(pattern).search(self.seen, self.at)):
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not seen; screen bytes:\n{self.seen[self.at:]!r}")
            if select.select([self.master], [], [], 0.2)[0]:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:  # the shell has gone
                    continue
        self.at = found.end()

    def prompt(self) -> None:
        self.expect(rb"undebug \S*>")  # drawn once the terminal is in raw mode

    def send(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> int:
        self.send(CTRL_D)
        try:
            return self.proc.wait(20)
        finally:
            os.close(self.master)


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    # PROMPT_TOOLKIT_NO_CPR: no cursor-position request a pty would never answer
    return {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state"), "TERM": "xterm",
            "PROMPT_TOOLKIT_NO_CPR": "1"}


@pytest.fixture
def tty(shared_guest: str, shell_env: dict[str, str]) -> Iterator[Pty]:
    pty = Pty([shared_guest], shell_env)
    pty.prompt()
    yield pty
    if pty.proc.poll() is None:
        pty.proc.kill()
        pty.proc.wait()


def test_tab_completes_a_command_name(tty: Pty, shared_guest: str) -> None:
    tty.send(b"thr" + TAB)
    tty.expect(b"eads")  # what the completion added, drawn after the typed part
    tty.send(ENTER)
    tty.expect(rb"threads" + END)  # the line as it was run
    tty.expect(rb"ID  NAME +STATE")  # `threads` ran
    blocked = _thread_id(shared_guest, "blocked")
    tty.expect(rf"\n{blocked} +blocked ".encode())
    tty.prompt()
    assert tty.close() == 0


def test_tab_completes_a_thread_name_to_its_id(tty: Pty, shared_guest: str) -> None:
    blocked = _thread_id(shared_guest, "blocked")
    tty.send(b"bt --thread bloc" + TAB)
    tty.expect(rf"{blocked} blocked".encode())  # the menu's entry: id and name
    tty.send(ENTER)
    tty.expect(rf"bt --thread {blocked}".encode() + END)  # the id replaced the name
    tty.expect(rf"thread {blocked} blocked \(blocked\)".encode())
    tty.expect(rb"wait_for_event")


def test_thread_names_in_completions_are_escaped(tty: Pty) -> None:
    tty.send(b"bt --thread ev" + TAB)  # the hostile thread, offered by its name
    tty.expect(rb"evil\\x1b\]0;owned\\x07")
    tty.send(CTRL_C)
    tty.prompt()
    assert b"\x1b]0;owned" not in tty.seen  # never the raw title sequence


def test_tab_completes_an_elf_symbol_after_break(guest_image: Path, shell_env: dict[str, str]) -> None:
    name = "shell-break"  # its own guest, paused before boot: a breakpoint changes nothing shared
    assert undebug("run", "-d", "--paused", "--name", name, str(guest_image)).code == 0
    try:
        pty = Pty([name], shell_env)
        pty.prompt()
        pty.send(b"break checksum_bl" + TAB)
        pty.expect(b"ock")  # what the completion added
        pty.send(ENTER)
        pty.expect(rb"break checksum_block" + END)  # the line as it was run
        pty.expect(rb"breakpoint 1 at 0x[0-9a-f]+ \(checksum_block, software")
        pty.prompt()
        assert pty.close() == 0
        listed = undebug("break", name, "--list", "--json").json()["breakpoints"]
        assert [b["location"] for b in listed] == ["checksum_block"]
    finally:
        undebug("kill", name)


def test_history_recalls_a_line_after_a_restart(shared_guest: str, shell_env: dict[str, str]) -> None:
    cli = undebug("sym", shared_guest, "planted_counter").stdout.strip().encode()
    first = Pty([shared_guest], shell_env)
    first.prompt()
    first.send(b"sym planted_counter" + ENTER)
    first.expect(re.escape(cli))
    first.prompt()
    assert first.close() == 0
    history = Path(shell_env["XDG_STATE_HOME"]) / "undebug" / "shell_history"
    assert history.stat().st_mode & 0o777 == 0o600

    second = Pty([shared_guest], shell_env)
    second.prompt()
    second.send(UP)
    second.expect(b"sym planted_counter")
    second.send(ENTER)
    second.expect(re.escape(cli))  # the recalled line ran
    second.prompt()
    assert second.close() == 0


def test_help_lists_the_commands_and_help_cmd_shows_its_usage(tty: Pty) -> None:
    build_parser(["help"])  # registers the commands: their help lines
    tty.send(b"help" + ENTER)
    for name in ("break", "bt", "mem", "regs", "sym", "threads", "trace"):  # sorted, as listed
        tty.expect(rf"\n  {name} +{re.escape(COMMANDS[name].help)}".encode())
    tty.prompt()
    tty.send(b"help bt" + ENTER)
    tty.expect(rb"usage: undebug bt ")
    tty.expect(rb"--thread")
    tty.prompt()
    tty.send(CTRL_C)  # an empty line cancelled: the shell goes on
    tty.prompt()
    tty.send(b"exit" + ENTER)
    assert tty.proc.wait(20) == 0


def test_ctrl_c_interrupts_a_running_command_and_the_shell_goes_on(tty: Pty, shared_guest: str) -> None:
    tty.send(b"wait" + ENTER)  # the shared guest runs on: no stop comes
    tty.expect(rb"wait" + END)
    time.sleep(1)
    tty.send(CTRL_C)
    tty.expect(rb"undebug: interrupted")
    tty.prompt()
    tty.send(b"sym planted_counter" + ENTER)
    tty.expect(re.escape(undebug("sym", shared_guest, "planted_counter").stdout.strip().encode()))
    tty.prompt()
    assert tty.close() == 130  # the interrupted line was the last to fail


def test_on_a_real_unikraft_guest_lines_run_and_threads_and_symbols_complete() -> None:
    """UNDEBUG_UNIKRAFT_IMAGE: an app with threads worker-0..2 in worker_main -> do_work."""
    from tui.completion import GuestFacts, LineCompleter

    image = str(real_image("UNDEBUG_UNIKRAFT_IMAGE"))
    name = "shell-uk"
    assert undebug("run", "-d", "--name", name, image).code == 0
    try:
        wait_for_console(name, "worker-2")
        out = _shell([name], "threads\nsym do_work\n")
        assert out.returncode == 0, out.stderr
        for thread in ("idle", "init", "worker-0", "worker-1", "worker-2"):
            assert re.search(rf"^\d+ +{thread} ", out.stdout, re.M), out.stdout
        assert out.stdout.endswith(undebug("sym", name, "do_work").stdout)

        completer = LineCompleter(name, GuestFacts())

        def offered(text: str) -> list[str]:
            return [c.text for c in completer.get_completions(Document(text), CompleteEvent())]
        ids = {t["name"]: str(t["id"]) for t in undebug("threads", name, "--json").json()["threads"]}
        assert offered("bt --thread worker-") == [ids["worker-0"], ids["worker-1"], ids["worker-2"]]
        assert offered("break do_wor") == ["do_work"]
    finally:
        undebug("kill", name)
