"""Bad input gets a clear message and its documented exit code, never a traceback."""

import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Result, undebug
from tests.test_schema import check
from undebug.cli import build_parser
from undebug.commands import COMMANDS
from undebug.session.store import runtime_dir


def test_every_command_has_help() -> None:
    build_parser()
    for name in COMMANDS:
        result = undebug(name, "--help")
        assert result.code == 0, name
        assert "usage: undebug" in result.stdout


def test_no_command_prints_help_and_exits_2() -> None:
    result = undebug()
    assert result.code == 2
    assert "COMMAND" in result.stdout


def test_bad_argument_exits_2() -> None:
    result = undebug("run", "--smp", "many", "x.elf")
    assert result.code == 2
    assert "invalid int value" in result.stderr


def test_missing_image(tmp_path: Path) -> None:
    result = undebug("run", "--ci", str(tmp_path / "nope.elf"))
    assert result.code == 2
    assert "does not exist" in result.stderr


def test_not_an_elf_says_what_it_found(tmp_path: Path) -> None:
    script = tmp_path / "image.sh"
    script.write_text("#!/bin/sh\n")
    result = undebug("run", "-d", str(script))
    assert result.code == 2
    assert "neither an ELF kernel nor a disk image: found a file starting with b'#!/bin/s" \
        in result.stderr


def test_error_under_json_is_a_json_document(tmp_path: Path) -> None:
    result = undebug("run", "-d", "--json", str(tmp_path / "nope.elf"))
    assert result.code == 2
    doc = result.json()
    assert doc["schema"] == "undebug/1"
    assert doc["error"]["exit_code"] == 2


def test_missing_qemu_exits_3_with_the_install_command(guest_image: Path, tmp_path: Path) -> None:
    # A PATH that has python but no qemu-system-x86_64.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bindir)}
    assert shutil.which("qemu-system-x86_64", path=env["PATH"]) is None
    result = undebug("run", "-d", str(guest_image), env=env)
    assert result.code == 3
    assert "apt-get install qemu-system-x86" in result.stderr


@pytest.mark.parametrize("args", [["--memory", "1"], ["--smp", "0"], ["--forward", "tcp:80"],
                                  ["--forward", "tcp:99999:80"], ["--timeout", "5"]])
def test_bad_options_exit_2(guest_image: Path, args: list[str]) -> None:
    result = undebug("run", "-d", *args, str(guest_image))
    assert result.code == 2, result.stderr
    assert result.stderr.startswith("undebug: error:")


def test_unknown_guest(tmp_path: Path) -> None:
    for command in (["stop", "ghost"], ["cont", "ghost"], ["kill", "ghost"], ["logs", "ghost"]):
        result = undebug(*command)
        assert result.code == 2, command
        assert "no guest named 'ghost'" in result.stderr


def test_name_in_use_is_refused(shared_guest: str, guest_image: Path) -> None:
    result = undebug("run", "-d", "--name", shared_guest, str(guest_image))
    assert result.code == 2
    assert f"a guest named '{shared_guest}' is already running" in result.stderr


def test_ps_json_lists_the_shared_guest(shared_guest: str) -> None:
    doc = undebug("ps", "--json").json()
    names = {g["name"]: g for g in doc["guests"]}
    assert names[shared_guest]["smp"] == 2
    assert names[shared_guest]["accel"] in ("tcg", "kvm")
    check("ps", doc)  # the documented schema, field types included


def in_read_only_runtime_dir(tmp_path: Path, mode: str, *args: str) -> Result:
    """undebug with UNDEBUG_RUNTIME_DIR on a read-only file system: a tmpfs mounted
    read-only in a mount namespace of its own (``unshare -rm``: no root needed, and
    root's permission bypass does not apply to a read-only mount)."""
    runtime = tmp_path / "ro"
    runtime.mkdir(parents=True)
    script = 'mount -t tmpfs -o ro,mode="$1" none "$2" && shift 2 && exec "$@"'
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", mode, str(runtime),
         sys.executable, "-m", "undebug.cli", *args],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "UNDEBUG_RUNTIME_DIR": str(runtime)})
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize(("mode", "problem"), [
    ("0700", "is not writable (mode 0700, or a read-only file system)"),
    ("0755", "private (mode 0755): Read-only file system"),
], ids=["read-only", "wrong-mode"])
def test_unusable_runtime_dir_exits_3_naming_it(guest_image: Path, tmp_path: Path, mode: str,
                                                 problem: str) -> None:
    for args in (["run", "-d", str(guest_image)], ["ps"]):
        result = in_read_only_runtime_dir(tmp_path / args[0], mode, *args)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.code == 3, result.stderr
        assert result.stderr.startswith("undebug: error: ")
        assert f"{tmp_path / args[0] / 'ro'} " in result.stderr and problem in result.stderr


def test_trace_file_that_is_a_directory_is_refused(guest_image: Path, tmp_path: Path) -> None:
    before = sorted(runtime_dir().iterdir())
    result = undebug("run", "-d", "--trace-file", str(tmp_path), str(guest_image))
    assert result.code == 2
    assert result.stderr.startswith(f"undebug: error: --trace-file {tmp_path} is a directory\n")
    assert sorted(runtime_dir().iterdir()) == before  # refused before any session was made


def test_logs_tail_zero_prints_nothing(shared_guest: str) -> None:
    assert undebug("logs", shared_guest).stdout  # there is a console to leave out
    result = undebug("logs", shared_guest, "-n", "0")
    assert (result.code, result.stdout) == (0, "")


@pytest.fixture(scope="module")
def crashed_guest(guest_image: Path) -> Iterator[str]:
    name = "input-crashed"
    assert undebug("run", "-d", "--name", name, "--append", "crash=panic crash_after=50",
                   str(guest_image)).code == 0
    deadline = time.monotonic() + 30
    while next(g["state"] for g in undebug("ps", "--json").json()["guests"]
               if g["name"] == name) != "guest-panicked":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    yield name
    undebug("kill", name)


@pytest.mark.parametrize("state", ["running", "crashed"])
@pytest.mark.parametrize(("args", "message"), [
    (["logs", "{name}", "-n", "-5"], "argument -n/--tail: must be at least 0, not -5"),
    (["wait", "{name}", "--timeout", "-1"], "argument --timeout: must be at least 0, not -1"),
    (["wait", "{name}", "--timeout", "nan"], "argument --timeout: must be at least 0, not nan"),
])
def test_bad_numbers_are_refused_at_parsing(shared_guest: str, crashed_guest: str, state: str,
                                            args: list[str], message: str) -> None:
    name = shared_guest if state == "running" else crashed_guest
    result = undebug(*[a.format(name=name) for a in args])
    assert result.code == 2, result.stderr
    assert f"undebug {args[0]}: error: {message}\n" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("name", ["", "../escape"])
@pytest.mark.parametrize("command", [["run", "-d"], ["attach", "--gdb", "127.0.0.1:1",
                                                     "--elf", "{image}"], ["demo", "--once"]])
def test_a_bad_or_empty_name_is_refused(guest_image: Path, command: list[str],
                                        name: str) -> None:
    args = [a.format(image=guest_image) for a in command]
    before = sorted(runtime_dir().iterdir())
    result = undebug(*args, "--name", name, *([str(guest_image)] if args[0] == "run" else []))
    assert result.code == 2, result.stderr
    assert f"undebug {args[0]}: error: argument --name: bad session name {name!r} (use 1-48 " \
        "letters" in result.stderr
    assert sorted(runtime_dir().iterdir()) == before


@pytest.mark.parametrize("json_flag", [[], ["--json"]], ids=["text", "json"])
def test_an_internal_error_exits_4_with_the_traceback_in_a_private_file(
        json_flag: list[str]) -> None:
    """A real failure no command expects: stdout is /dev/full, so writing the report
    fails with ENOSPC. Exit 4 (never 1: CI reads that as a crash), no traceback."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "undebug.cli", "ps", *json_flag],
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 4, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    error, hint = proc.stderr.splitlines()
    assert error == "undebug: internal error: OSError: [Errno 28] No space left on device"
    match = re.fullmatch(r"  hint: the traceback is in (.+); please report it", hint)
    assert match is not None, hint
    log = Path(match[1])
    assert log.parent == runtime_dir() / "logs"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "No space left on device" in text


def test_a_refused_run_leaves_an_ended_session_of_its_name_alone(guest_image: Path) -> None:
    """Bad options are refused before the name is taken: the ended guest's session (its
    console log) is still there to read."""
    name = "ended-kept"
    assert undebug("run", "--name", name, "--append", "run_for=50", str(guest_image)).code == 0
    result = undebug("run", "-d", "--name", name, "--memory", "1", str(guest_image))
    assert result.code == 2 and "--memory 1 MiB is out of range" in result.stderr
    try:
        assert "refguest: shutdown code=0" in undebug("logs", name).stdout
    finally:
        undebug("kill", name)
