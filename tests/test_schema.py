"""Every command's ``--json`` matches docs/schema/undebug-1.json, on real output.

The schema is the contract scripts rely on (docs/cli.md): each command's document is
checked against the envelope and against its own ``command.NAME`` definition, and a
command that offers ``--json`` without a definition fails here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.conftest import ROOT, undebug, wait_for_console
from undebug.cli import build_parser
from undebug.commands import COMMANDS

SCHEMA = json.loads((ROOT / "docs" / "schema" / "undebug-1.json").read_text())
jsonschema.Draft202012Validator.check_schema(SCHEMA)


def check(name: str, doc: Any) -> None:
    """``doc`` is a valid undebug/1 document of command ``name``."""
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)
    assert "error" not in doc, doc["error"]
    command = {"$defs": SCHEMA["$defs"], "$ref": f"#/$defs/command.{name}"}
    jsonschema.Draft202012Validator(command).validate(doc)


def run_json(*args: str, code: int = 0) -> Any:
    result = undebug(*args, "--json")
    assert result.code == code, result.stderr
    return result.json()


def test_every_json_command_has_a_definition() -> None:
    build_parser()
    offered = {name for name, cmd in COMMANDS.items() if cmd.json}
    defined = {key.removeprefix("command.").split()[0] for key in SCHEMA["$defs"]
               if key.startswith("command.")}
    assert offered <= defined, f"no schema for: {sorted(offered - defined)}"


def test_an_error_is_an_envelope_with_error_only() -> None:
    doc = run_json("threads", "no-such-guest", code=2)
    jsonschema.Draft202012Validator(SCHEMA).validate(doc)
    assert doc["error"]["exit_code"] == 2 and "no guest named" in doc["error"]["message"]
    bad = {"schema": "undebug/1", "warnings": [], "error": {"message": 3}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(SCHEMA).validate(bad)


def test_inspection_commands_match_the_schema(shared_guest: str, tmp_path: Path) -> None:
    check("ps", run_json("ps"))
    check("threads", run_json("threads", shared_guest))
    check("bt", run_json("bt", shared_guest, "--all"))
    check("regs", run_json("regs", shared_guest, "--cpu", "1"))
    check("mem", run_json("mem", shared_guest, "planted_counter", "16"))
    check("sym", run_json("sym", shared_guest, "checksum_block"))
    check("sym", run_json("sym", shared_guest, "0x10"))
    check("dump", run_json("dump", shared_guest, "-o", str(tmp_path), "--sparse"))
    check("eval", run_json("eval", shared_guest, "requests_handled"))
    check("trace stats", run_json("trace", "stats", shared_guest))
    check("trace show", run_json("trace", "show", shared_guest, "--filter", "heartbeat"))


def test_run_control_commands_match_the_schema(guest_image: Path) -> None:
    name = "schema-rc"
    check("run", run_json("run", "-d", "--name", name, "--append", "threads=2",
                          str(guest_image)))
    try:
        wait_for_console(name, "refguest: ready")
        check("break", run_json("break", name, "checksum_block"))
        listed = run_json("break", name, "--list")
        check("break", listed)
        assert [bp["owner"] for bp in listed["breakpoints"]] == ["cli"]
        check("wait", run_json("wait", name, "--timeout", "60"))
        check("step", run_json("step", name))
        check("delete", run_json("delete", name, "1"))
        check("watch", run_json("watch", name, "planted_counter"))
        check("watch", run_json("watch", name, "--list"))
        check("cont", run_json("cont", name))
        check("wait", run_json("wait", name, "--timeout", "60"))  # a watchpoint's stop
        check("delete", run_json("delete", name, "2"))
        check("stop", run_json("stop", name))
        check("cont", run_json("cont", name))
    finally:
        check("kill", run_json("kill", name))


def test_ci_run_and_demo_match_the_schema(guest_image: Path, tmp_path: Path) -> None:
    failed = run_json("run", "--ci", "--timeout", "60", "--append", "crash=panic",
                      "--dump-dir", str(tmp_path), str(guest_image), code=1)
    check("run", failed)
    assert Path(failed["bundle"]).parent == tmp_path
    check("demo", run_json("demo", "--once"))
