"""The supervisor client's typed edge: a reply of the wrong shape is a SessionError naming
the op and the field (never a KeyError or TypeError in a command), and what parses writes
back the same JSON, a newer supervisor's unknown fields included."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import undebug
from undebug.errors import EXIT_USAGE, SessionError
from undebug.session.client import SupervisorClient
from undebug.session.replies import (
    Reply,
    parse_event,
    parse_ram_layout,
    parse_registers,
    parse_status,
    recorded_status,
)
from undebug.session.store import SessionDir

# The shape guest.py's status() writes (every field of docs/protocol.md's status).
STATUS: dict[str, Any] = {
    "name": "g", "state": "paused", "user_paused": True, "mode": "launch",
    "image": "/img.elf", "elf": "/img.elf", "accel": "tcg", "accel_reason": "no KVM",
    "smp": 2, "memory_mb": 128, "append": "threads=8", "forwards": ["tcp:8080:80"],
    "supervisor_pid": 10, "qemu_pid": 11, "started": 1790000000.25, "uptime_s": 3.5,
    "outcome": None, "console": "/run/g/console.log", "run_token": 4,
    "last_stop": {"cpu": 1, "pc": 4096, "signal": 5, "reason": "breakpoint", "breakpoint": 2},
    "breakpoints": [{"id": 2, "address": 4096, "hardware": False, "location": "main",
                     "owner": "gdb", "when_register": None, "when_value": None}],
    "frozen": False, "shared_ram": True,
    "trace": {"received_bytes": 64, "recordings": [{"file": "/run/g/trace.utrace",
                                                     "dropped_chunks": 0}]},
    "warnings": [], "qemu_state": "paused", "ram_read": "shared-file",
}


def status_with(**changes: Any) -> dict[str, Any]:
    status = copy.deepcopy(STATUS)
    status.update(changes)
    return status


def test_a_status_parses_into_its_fields() -> None:
    status = parse_status(Reply(STATUS, "test"))
    assert (status.name, status.state, status.smp, status.memory_mb) == ("g", "paused", 2, 128)
    assert status.last_stop is not None and status.last_stop.breakpoint == 2
    assert status.last_stop.cpu == 1 and status.last_stop.pc == 4096
    assert [(bp.id, bp.address, bp.owner) for bp in status.breakpoints] == [(2, 4096, "gdb")]
    assert status.forwards == ("tcp:8080:80",) and status.qemu_state == "paused"


def test_to_json_gives_back_the_status_it_parsed() -> None:
    crashed = status_with(outcome={"kind": "panic", "reason": "guest panicked", "ok": False,
                                   "exit_code": None, "run_state": "guest-panicked"})
    for raw in (STATUS, crashed, status_with(last_stop=None, breakpoints=[])):
        written = json.dumps(parse_status(Reply(raw, "test")).to_json())
        assert written == json.dumps(raw)  # the same text: values and key order


def test_a_status_without_qemu_state_stays_without_it() -> None:
    raw = status_with()
    del raw["qemu_state"]  # pause/resume replies and session.json do not ask QEMU
    assert "qemu_state" not in parse_status(Reply(raw, "test")).to_json()


def test_to_json_keeps_the_order_and_the_values_now_held() -> None:
    raw = dict(reversed(list(status_with(future={"x": 1}).items())))
    status = parse_status(Reply(raw, "test"))
    written = json.dumps(status.to_json())
    assert written == json.dumps(raw)  # the same text: values and key order
    ended = dataclasses.replace(status, state="ended").to_json()
    assert list(ended) == list(raw) and ended["state"] == "ended"


def test_status_warnings_are_typed() -> None:
    status = parse_status(Reply(status_with(warnings=["trace recording: disk full"]), "t"))
    assert status.warnings == ("trace recording: disk full",)
    with pytest.raises(SessionError, match="field 'warnings' must be a list of strings"):
        parse_status(Reply(status_with(warnings=[3]), "test"))


def test_unknown_fields_pass_through_to_json() -> None:
    raw = status_with(trace_dropped_bytes=4096, disk_full={"path": "/x"})
    raw["last_stop"]["thread_hint"] = "x"
    status = parse_status(Reply(raw, "test"))
    assert status.extra == {"trace": STATUS["trace"], "trace_dropped_bytes": 4096,
                            "disk_full": {"path": "/x"}}
    assert status.to_json() == raw
    assert status.to_json()["last_stop"]["thread_hint"] == "x"


@pytest.mark.parametrize(("change", "field", "what"), [
    ({"smp": "2"}, "'smp'", "an integer or null"),
    ({"smp": True}, "'smp'", "an integer or null"),
    ({"state": None}, "'state'", "a string"),
    ({"started": "now"}, "'started'", "a number"),
    ({"mode": "borrow"}, "'mode'", "one of launch, attach"),
    ({"forwards": [1]}, "'forwards'", "a list of strings"),
    ({"outcome": {"kind": "panic", "reason": "x", "ok": "no", "exit_code": None,
                  "run_state": None}}, "'outcome.ok'", "true or false"),
    ({"breakpoints": [{"id": 1, "address": "0x10", "hardware": False, "location": "m",
                       "owner": "cli"}]}, "'breakpoints[0].address'", "an integer"),
    ({"breakpoints": [{"id": 1, "address": 16, "hardware": False, "location": "m",
                       "owner": "root"}]}, "'breakpoints[0].owner'", "one of cli, gdb, crash"),
    ({"last_stop": {"cpu": 0, "pc": 1, "signal": 5, "breakpoint": None}},
     "'last_stop.reason'", "is missing"),
    ({"breakpoints": {"id": 1}}, "'breakpoints'", "a list"),
])
def test_a_malformed_status_names_the_field(change: dict[str, Any], field: str,
                                            what: str) -> None:
    with pytest.raises(SessionError) as caught:
        parse_status(Reply(status_with(**change), "guest 'g': the status reply"))
    assert caught.value.message.startswith("guest 'g': the status reply is malformed: ")
    assert field in caught.value.message and what in caught.value.message


def test_a_missing_status_field_is_named() -> None:
    raw = status_with()
    del raw["run_token"]
    with pytest.raises(SessionError, match="field 'run_token' is missing"):
        parse_status(Reply(raw, "test"))


def test_a_reply_that_is_not_an_object() -> None:
    with pytest.raises(SessionError, match="must be an object"):
        parse_status(Reply([1, 2], "test"))


def test_events_parse_by_type_and_write_back() -> None:
    stopped = {"time": 1.5, "type": "stopped", "cpu": 0, "pc": 16, "signal": 5,
               "reason": "step", "breakpoint": None}
    ended = {"time": 2.0, "type": "ended", "outcome": {
        "kind": "exit", "reason": "guest exited with code 0", "ok": True, "exit_code": 0,
        "run_state": None}}
    for raw in (stopped, ended, {"time": 3.0, "type": "resume"}):
        assert parse_event(Reply(raw, "test")).to_json() == raw
    event = parse_event(Reply(stopped, "test"))
    assert event.stop is not None and event.stop.reason == "step" and event.outcome is None
    with pytest.raises(SessionError, match="field 'outcome' is missing"):
        parse_event(Reply({"time": 1.0, "type": "crashed"}, "test"))


def test_registers_and_ram_layout() -> None:
    cpus = parse_registers(Reply({"cpus": [{"cpu": 0, "stub_thread": "p1.1",
                                            "registers": {"rip": 16}}]}, "test"))
    assert cpus[0].cpu == 0 and cpus[0].registers == {"rip": 16}
    with pytest.raises(SessionError, match=r"'cpus\[0\].registers.rip' must be an integer"):
        parse_registers(Reply({"cpus": [{"cpu": 0, "stub_thread": "p1.1",
                                         "registers": {"rip": "16"}}]}, "test"))
    assert parse_ram_layout(Reply({"layout": [[0, 0, 4096]]}, "test")) == [(0, 0, 4096)]
    with pytest.raises(SessionError, match=r"'layout\[0\]' must be 3 non-negative integers"):
        parse_ram_layout(Reply({"layout": [[0, -1, 4096]]}, "test"))


# ---- through a real socket: a supervisor that answers garbage ---------------------------

@pytest.fixture
def fake_supervisor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """A control socket that answers every request with the next of the results the test
    puts in the list (our own server: the client is what is under test)."""
    monkeypatch.setenv("UNDEBUG_RUNTIME_DIR", str(tmp_path / "rt"))
    session = SessionDir.named("fake")
    session.path.mkdir(parents=True)
    results: list[Any] = []
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(session.control_socket))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                request = json.loads(line)
                stream.write(json.dumps({"id": request["id"], "ok": True,
                                         "result": results.pop(0)}).encode() + b"\n")
                stream.flush()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield results
    server.close()


def test_the_client_reports_a_malformed_status_by_op_and_field(
        fake_supervisor: list[Any]) -> None:
    fake_supervisor += [status_with(memory_mb="128M"), status_with(), {"outcome": "gone"}]
    with SupervisorClient(SessionDir.named("fake"), timeout=5) as client:
        with pytest.raises(SessionError) as caught:
            client.status()
        assert caught.value.message == (
            "guest 'fake': the status reply is malformed: field 'memory_mb' must be an "
            "integer or null (got a string)")
        assert client.status().memory_mb == 128  # the connection is still usable
        with pytest.raises(SessionError, match="the kill reply is malformed: field 'outcome'"):
            client.kill()


def test_a_corrupt_session_record_names_the_field(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNDEBUG_RUNTIME_DIR", str(tmp_path / "rt"))
    session = SessionDir.named("old")
    session.path.mkdir(parents=True)
    session.write_record(status_with(name="old", breakpoints=None))
    with pytest.raises(SessionError, match="the session record of 'old' is malformed: "
                                           "field 'breakpoints' must be a list"):
        recorded_status(session)
    os.unlink(session.record_file)
    with pytest.raises(SessionError, match="no guest named 'old'"):
        recorded_status(session)


@pytest.mark.parametrize("command", [["break", "fake", "--list"], ["delete", "fake", "--all"]])
def test_a_command_reports_a_malformed_breakpoint_list_not_a_traceback(
        fake_supervisor: list[Any], command: list[str]) -> None:
    fake_supervisor.append(status_with(breakpoints=[{"id": 1, "address": 16, "location": "m",
                                                     "owner": "cli"}]))
    result = undebug(*command)
    assert result.code == EXIT_USAGE, result.stderr
    assert "the status reply is malformed: field 'breakpoints[0].hardware' is missing" \
        in result.stderr


def test_ps_shows_an_ended_guest_from_its_record_with_unknown_fields(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record of a guest whose supervisor was killed: listed as ended, with why, and
    with every field it holds (a newer supervisor's too); a corrupt one is a warning."""
    monkeypatch.setenv("UNDEBUG_RUNTIME_DIR", str(tmp_path / "rt"))
    for name, record in [("old", status_with(name="old", state="running", supervisor_pid=77,
                                             trace_dropped_chunks=3, warnings=["disk full"])),
                         ("bad", status_with(name="bad", smp="two"))]:
        session = SessionDir.named(name)
        session.path.mkdir(parents=True)
        session.write_record(record)
    result = undebug("ps", "--json")
    assert result.code == 0, result.stderr
    document = result.json()
    [guest] = document["guests"]
    expected = status_with(name="old", state="ended", supervisor_pid=77,
                           trace_dropped_chunks=3, warnings=["disk full"], outcome={
                               "kind": "killed", "reason": "supervisor died (pid 77)",
                               "ok": False, "exit_code": None, "run_state": None})
    assert guest == {**expected, "export": None}  # ps adds a live export's counts: none
    assert document["warnings"] == ["the session record of 'bad' is malformed: field 'smp' "
                                    "must be an integer or null (got a string)",
                                    "old: disk full"]


def test_ps_does_not_call_a_guest_ended_when_its_live_status_is_malformed(
        fake_supervisor: list[Any]) -> None:
    SessionDir.named("fake").write_record(status_with(name="fake", state="running"))
    fake_supervisor.append(status_with(name="fake", smp="two"))
    document = undebug("ps", "--json").json()
    assert document["guests"] == []
    assert document["warnings"] == ["guest 'fake': the status reply is malformed: field 'smp' "
                                    "must be an integer or null (got a string)"]
