"""Front-end commands that live outside undebug/ (the TUI) register through the
``undebug.cli`` entry-point group, so undebug itself never imports their toolkits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _install_plugin(site: Path, module: str, body: str) -> None:
    """A real installed distribution (dist-info with entry_points.txt) on a path entry."""
    (site / f"{module}.py").write_text(body)
    info = site / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[undebug.cli]\n{module} = {module}\n")


def _run(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    return subprocess.run([sys.executable, "-m", "undebug.cli", *args], capture_output=True,
                          text=True, env=env, timeout=60)


def test_an_entry_point_adds_a_command(tmp_path: Path) -> None:
    _install_plugin(tmp_path, "ud_plugin_hello", '''
from undebug.commands import command
from undebug.output import Report

@command("hello-plugin", "a command from a plugin")
def hello(args):
    return Report(data={"greeting": "hi"}, render=lambda: ["hi from the plugin"])
''')
    listed = _run(tmp_path, "--help")
    assert listed.returncode == 0 and "hello-plugin" in listed.stdout
    ran = _run(tmp_path, "hello-plugin")
    assert ran.returncode == 0 and ran.stdout == "hi from the plugin\n", ran.stderr


def test_a_plugin_whose_toolkit_is_missing_is_named_and_the_rest_works(tmp_path: Path) -> None:
    _install_plugin(tmp_path, "ud_plugin_broken", "import no_such_toolkit_here\n")
    listed = _run(tmp_path, "--help")
    assert listed.returncode == 0 and "threads" in listed.stdout
    assert "commands of ud_plugin_broken are unavailable" in listed.stderr
    assert "No module named 'no_such_toolkit_here'" in listed.stderr
    assert "Traceback" not in listed.stderr
