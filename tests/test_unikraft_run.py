"""A real Unikraft image through ``undebug run``: its debug ELF found beside it, its threads
by name with no --elf, its crash kept (the crash breakpoint at
ukplat_terminate(UKPLAT_CRASH)) and told in words, its exit code read as Unikraft means it.

The images are built outside the repository (never committed): UNDEBUG_UNIKRAFT_IMAGE is
an app with threads worker-0..2 in worker_main -> do_work (each prints its name as it
starts); UNDEBUG_UNIKRAFT_CRASH_IMAGE
the same app whose worker-1 writes through NULL in do_work about 1 s after boot."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from tests.conftest import real_image, undebug, wait_for_console


def test_threads_by_name_with_no_elf() -> None:
    image = real_image("UNDEBUG_UNIKRAFT_IMAGE")
    assert undebug("run", "-d", "--name", "ukw", str(image)).code == 0
    try:
        wait_for_console("ukw", "worker-2")  # the app has started its threads
        threads = undebug("threads", "ukw", "--json")
        assert threads.code == 0, threads.stderr
        names = {t["name"] for t in threads.json()["threads"]}
        assert {"idle", "init", "worker-0", "worker-1", "worker-2"} <= names, names
        bt = undebug("bt", "ukw", "--all", "--json")
        assert bt.code == 0, bt.stderr
        for trace in bt.json()["backtraces"]:
            if trace["thread"]["name"].startswith("worker-"):
                assert "worker_main" in [f["function"] for f in trace["frames"]], trace
    finally:
        undebug("kill", "ukw")


def test_ci_verdict_names_the_fault_the_function_and_the_thread() -> None:
    image = real_image("UNDEBUG_UNIKRAFT_CRASH_IMAGE")
    result = undebug("run", "--ci", "--timeout", "60", str(image))
    assert result.code == 1
    last = result.stdout.splitlines()[-1]
    assert last.startswith("undebug: FAIL: page fault writing 0x0 in do_work ("), last
    assert last.endswith(", thread worker-1"), last


def test_a_crashed_guest_is_kept_with_its_faulting_thread() -> None:
    image = real_image("UNDEBUG_UNIKRAFT_CRASH_IMAGE")
    assert undebug("run", "-d", "--name", "ukc", str(image)).code == 0
    try:
        waited = undebug("wait", "ukc", "--timeout", "60")
        assert waited.code == 1 and "guest crashed: page fault writing 0x0" in waited.stdout
        bt = undebug("bt", "ukc", "--json")
        assert bt.code == 0, bt.stderr
        trace = bt.json()["backtraces"][0]
        assert trace["thread"]["name"] == "worker-1"
        functions = [f["function"] for f in trace["frames"] if f.get("function")]
        assert functions[:1] == ["ukplat_terminate"], functions
        assert functions.index("do_page_fault") < functions.index("do_work") < \
            functions.index("worker_main"), functions
        assert "cannot run on" in undebug("cont", "ukc").stderr
    finally:
        undebug("kill", "ukc")


def test_an_attached_crashing_guest_is_kept(tmp_path: Path) -> None:
    """A QEMU the user started, with isa-debug-exit at 0x501 as Unikraft's own tooling
    does: Unikraft's crash writes it first, which ends QEMU, unless undebug's crash
    breakpoint (set at attach) stops the guest before."""
    image = real_image("UNDEBUG_UNIKRAFT_CRASH_IMAGE")
    gdb, qmp = tmp_path / "gdb.sock", tmp_path / "qmp.sock"
    proc = subprocess.Popen([
        "qemu-system-x86_64", "-M", "pc", "-accel", "tcg", "-m", "64", "-display", "none",
        "-nodefaults", "-serial", f"file:{tmp_path / 'console.log'}", "-S",
        "-gdb", f"unix:{gdb},server=on,wait=off", "-qmp", f"unix:{qmp},server=on,wait=off",
        "-device", "pvpanic", "-device", "isa-debug-exit,iobase=0x501,iosize=2",
        "-kernel", str(image)])
    try:
        deadline = time.monotonic() + 10
        while not (gdb.exists() and qmp.exists()):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        attached = undebug("attach", "--name", "uka", "--gdb", str(gdb), "--qmp", str(qmp),
                           "--elf", f"{image}.dbg", "--json")
        assert attached.code == 0, attached.stderr
        assert undebug("cont", "uka").code == 0
        waited = undebug("wait", "uka", "--timeout", "60")
        assert waited.code == 1 and "guest crashed: page fault writing 0x0" in waited.stdout
        assert proc.poll() is None  # QEMU is still there, holding the crashed guest
        assert "do_work" in undebug("bt", "uka").stdout
    finally:
        undebug("kill", "uka")
        proc.kill()
        proc.wait()
