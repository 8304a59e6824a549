"""Inspection of the real reference guest in real QEMU: guest threads with their planted
names, states and vCPUs, backtraces with the planted call chains, registers, memory and
symbols, through the CLI and the Python API."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import undebug as api
from tests.conftest import check_planted_counter, undebug, wait_for_console
from undebug.elf import ElfFile
from undebug.errors import SessionError
from undebug.live_target import LiveTarget
from undebug.session.store import SessionDir

EVIL = "evil\x1b]0;owned\x07"


def threads_of(name: str, *extra: str) -> dict:
    result = undebug("threads", name, "--json", *extra)
    assert result.code == 0, result.stderr
    return result.json()


def by_name(doc: dict) -> dict[str, dict]:
    return {t["name"]: t for t in doc["threads"]}


def test_threads_match_the_planted_state(shared_guest: str) -> None:
    doc = threads_of(shared_guest)
    threads = by_name(doc)
    expected = {"main", "idle0", "idle1", "sleeper", "blocked", "short-lived", EVIL,
                *(f"worker-{i}" for i in range(8))}
    assert set(threads) == expected
    assert threads["sleeper"]["state"] == "sleeping"
    assert threads["blocked"]["state"] == "blocked"
    assert threads["blocked"]["wait_reason"] == "event"
    assert threads["short-lived"]["state"] == "exited"
    assert doc["warnings"] == []
    # Each vCPU runs exactly the thread that says it runs there.
    ids = {t["id"]: t for t in doc["threads"]}
    assert set(doc["vcpus"]) == {"0", "1"}
    for cpu, thread_id in doc["vcpus"].items():
        assert thread_id is not None
        assert ids[thread_id]["cpu"] == int(cpu)
        assert ids[thread_id]["state"] == "running"
    assert sum(t["cpu"] is not None for t in doc["threads"]) == 2


def test_threads_escape_the_hostile_name(shared_guest: str) -> None:
    raw = subprocess.run([sys.executable, "-m", "undebug.cli", "threads", shared_guest],
                         capture_output=True, check=True).stdout
    assert b"evil\\x1b]0;owned\\x07" in raw
    assert b"\x1b" not in raw and b"\x07" not in raw


def chain(backtrace: dict) -> list[str]:
    return [f["function"] for f in backtrace["frames"]]


def bt(name: str, *args: str) -> list[dict]:
    result = undebug("bt", name, "--json", *args)
    assert result.code == 0, result.stderr
    return result.json()["backtraces"]


def test_backtraces_contain_the_planted_chains(shared_guest: str) -> None:
    threads = by_name(threads_of(shared_guest))
    sleeper = chain(bt(shared_guest, "--thread", str(threads["sleeper"]["id"]))[0])
    assert sleeper[:1] == ["schedule"]
    assert sleeper.index("nap") < sleeper.index("sleeper_main")
    blocked = chain(bt(shared_guest, "--thread", str(threads["blocked"]["id"]))[0])
    assert blocked.index("wait_for_event") < blocked.index("blocker_main")
    for trace in bt(shared_guest, "--all"):
        if trace["thread"]["name"].startswith("worker-") and trace["thread"]["cpu"] is None:
            assert "worker_main" in chain(trace)
            assert trace["complete"]
            assert trace["frames"][-1]["function"] in ("thread_trampoline", "thread_entry")


def test_a_sleeping_threads_frame_0_is_at_the_call_that_switched_it(shared_guest: str,
                                                                    guest_image: Path) -> None:
    """Its saved rip is switch_context's return address: the line is the call's (binutils'
    addr2line on rip - 1), as for every caller frame, not the next statement's."""
    traces = undebug("bt", shared_guest, "--all", "--json").json()["backtraces"]
    sleeping = [t for t in traces if t["thread"]["state"] == "sleeping" and t["frames"]]
    assert sleeping
    for trace in sleeping:
        frame = trace["frames"][0]
        found = subprocess.run(["addr2line", "-e", str(guest_image), f"{frame['pc'] - 1:#x}"],
                               capture_output=True, text=True, check=True).stdout.strip()
        file, _, line = found.rpartition(":")
        assert (Path(file).name, int(line.split()[0])) == \
            (Path(frame["file"]).name, frame["line"]), (trace["thread"]["name"], frame, found)


def test_bt_human_output_names_files_and_lines(shared_guest: str) -> None:
    threads = by_name(threads_of(shared_guest))
    out = undebug("bt", shared_guest, "--thread", str(threads["sleeper"]["id"])).stdout
    assert out.startswith(f"thread {threads['sleeper']['id']} sleeper (sleeping)")
    assert " in nap" in out and "main.c:" in out


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_bt_refuses_fewer_than_one_frame(shared_guest: str, limit: str) -> None:
    # A sleeping thread has a stack: a zero limit once printed it as "(exited: no stack)".
    sleeper = by_name(threads_of(shared_guest))["sleeper"]
    result = undebug("bt", shared_guest, "--thread", str(sleeper["id"]), "--max-frames", limit)
    assert result.code == 2, result.stdout
    assert "--max-frames: must be at least 1" in result.stderr
    assert result.stdout == ""


def test_regs_of_a_sleeping_thread_and_of_a_vcpu(shared_guest: str) -> None:
    threads = by_name(threads_of(shared_guest))
    saved = undebug("regs", shared_guest, "--thread", str(threads["sleeper"]["id"]), "--json")
    doc = saved.json()
    assert doc["source"] == "saved context"
    assert set(doc["registers"]) >= {"rip", "rsp", "rbp", "rbx", "r12", "r15"}
    live = undebug("regs", shared_guest, "--cpu", "1", "--json").json()
    assert live["source"] == "vCPU 1" and {"cr3", "gs_base", "rip"} <= set(live["registers"])
    assert "schedule" in undebug("regs", shared_guest, "--thread",
                                 str(threads["sleeper"]["id"])).stdout


def test_mem_and_sym(shared_guest: str, guest_image: Path) -> None:
    symbol = ElfFile(guest_image).symbol("planted_counter")
    assert symbol is not None
    assert undebug("stop", shared_guest).code == 0  # every read below sees one moment
    try:
        doc = undebug("mem", shared_guest, "planted_counter", "8", "--json").json()
        phys = undebug("mem", shared_guest, hex(symbol.address), "8", "--phys", "--json").json()
        raw = subprocess.run([sys.executable, "-m", "undebug.cli", "mem", shared_guest,
                              "planted_counter", "8", "--format", "raw"],
                             capture_output=True, check=True).stdout
        requests = undebug("mem", shared_guest, "requests_handled", "8", "--json").json()
    finally:
        assert undebug("cont", shared_guest).code == 0
    assert doc["address"] == symbol.address
    counter = int.from_bytes(bytes.fromhex(doc["hex"]), "little")
    check_planted_counter(counter, int.from_bytes(bytes.fromhex(requests["hex"]), "little"),
                          cpus=2)
    assert int.from_bytes(bytes.fromhex(phys["hex"]), "little") == counter
    assert len(raw) == 8 and int.from_bytes(raw, "little") == counter
    hexdump = undebug("mem", shared_guest, "planted_counter", "16").stdout
    assert hexdump.startswith(f"{symbol.address:016x}  ")
    found = undebug("sym", shared_guest, "checksum_block", "--json").json()
    assert found["kind"] == "func" and found["file"].endswith("main.c")
    back = undebug("sym", shared_guest, hex(found["address"] + 3), "--json").json()
    assert back["symbol"] == "checksum_block" and back["offset"] == 3


@pytest.mark.parametrize(("args", "message"), [
    (["mem", "0x0", "16"], "not mapped"),  # the planted null page
    (["mem", "no_such_symbol", "8"], "no symbol 'no_such_symbol'"),
    (["mem", "0x1000", "-5"], "out of range"),
    (["bt", "--thread", "99999"], "no guest thread with id 99999"),
    (["regs", "--cpu", "7"], "no vCPU 7"),
])
def test_bad_inspection_input_exits_2(shared_guest: str, args: list[str], message: str) -> None:
    result = undebug(args[0], shared_guest, *args[1:])
    assert result.code == 2, result.stdout
    assert message in result.stderr


def test_reads_leave_a_running_guest_running(shared_guest: str) -> None:
    assert threads_of(shared_guest)["warnings"] == []
    status = undebug("ps", "--json").json()["guests"]
    assert next(g for g in status if g["name"] == shared_guest)["qemu_state"] == "running"


def test_no_stop_reads_a_running_guest_and_says_so(shared_guest: str) -> None:
    doc = threads_of(shared_guest, "--no-stop")
    assert any("torn" in w for w in doc["warnings"])


def test_each_read_path_sees_the_runtime_counter(shared_guest: str, guest_image: Path) -> None:
    """mmap'd shared RAM, the gdbstub's virtual and physical reads: all see the value the
    guest wrote at run time (0 in the ELF's .bss, so a file fallback would show 0)."""
    elf = ElfFile(guest_image)
    address = elf.symbol("planted_counter").address  # type: ignore[union-attr]
    requests_at = elf.symbol("requests_handled").address  # type: ignore[union-attr]
    with LiveTarget(SessionDir.named(shared_guest)) as target:
        assert target._ram is not None  # the fast path was chosen
        mapped = target.read_int(address)
        via_stub = target._rpc_read(address, 8, physical=False)
        via_phys = target._rpc_read(address, 8, physical=True)
        requests = target.read_int(requests_at)
    check_planted_counter(mapped, requests, cpus=2)
    assert int.from_bytes(via_stub, "little") == mapped  # frozen: one consistent moment
    assert int.from_bytes(via_phys, "little") == mapped


def test_build_id_mismatch_is_refused_unless_forced(shared_guest: str, guest_image: Path,
                                                     tmp_path: Path) -> None:
    elf = ElfFile(guest_image)
    assert elf.build_id and elf.build_id_address
    other = tmp_path / "other.elf"
    data = bytearray(guest_image.read_bytes())
    note = data.find(bytes.fromhex(elf.build_id))
    data[note] ^= 0xFF  # another build, as far as the id goes
    other.write_bytes(bytes(data))
    result = undebug("threads", shared_guest, "--elf", str(other))
    assert result.code == 2
    assert "build-id mismatch" in result.stderr and elf.build_id in result.stderr
    forced = undebug("threads", shared_guest, "--elf", str(other), "--force", "--json")
    assert forced.code == 0
    assert any("build-id mismatch" in w for w in forced.json()["warnings"])


def test_elf_without_dwarf_shows_the_vcpus_and_says_what_is_missing(
        shared_guest: str, guest_image: Path, tmp_path: Path) -> None:
    stripped = tmp_path / "nodebug.elf"
    shutil.copy(guest_image, stripped)
    subprocess.run(["objcopy", "--strip-debug", str(stripped)], check=True)
    result = undebug("threads", shared_guest, "--elf", str(stripped), "--json")
    assert result.code == 0, result.stderr
    doc = result.json()
    assert [t["name"] for t in doc["threads"]] == ["vCPU 0", "vCPU 1"]
    assert any("no DWARF layout of struct thread" in w and "showing the vCPUs" in w
               for w in doc["warnings"])
    # Symbols and .eh_frame are still there: the vCPUs unwind into named functions.
    traces = undebug("bt", shared_guest, "--elf", str(stripped), "--all", "--json").json()
    assert all(t["frames"][0]["function"] for t in traces["backtraces"])


def test_an_unknown_os_shows_the_vcpus(shared_guest: str, tmp_path: Path) -> None:
    """Any image undebug has no OS awareness for (here: a tiny ELF built by the test,
    with --force since it is not what the guest runs) still gives vCPU threads."""
    from tests.test_image import ENTRY, PVH_NOTE, build

    other = build(tmp_path, "other", PVH_NOTE + ENTRY, 64)
    result = undebug("threads", shared_guest, "--elf", str(other), "--force", "--json")
    assert result.code == 0, result.stderr
    doc = result.json()
    assert [t["cpu"] for t in doc["threads"]] == [0, 1]
    assert any("no guest threads for" in w and "showing the vCPUs" in w
               for w in doc["warnings"])


def test_cyclic_thread_list_is_bounded_and_warned(guest_image: Path) -> None:
    name = "cyclic"
    assert undebug("run", "-d", "--name", name, "--append", "threads=4 corrupt=cyclic-threads",
                   str(guest_image)).code == 0
    try:
        wait_for_console(name, "corrupt=cyclic-threads planted")
        started = time.monotonic()
        doc = threads_of(name)
        assert time.monotonic() - started < 30
        assert any("loops back" in w for w in doc["warnings"])
        assert len(doc["threads"]) <= 4 + 7
    finally:
        undebug("kill", name)


def test_stub_gone_mid_command_is_a_clear_error(guest_image: Path) -> None:
    name = "dies"
    assert undebug("run", "-d", "--name", name, str(guest_image)).code == 0
    try:
        wait_for_console(name, "refguest: ready")
        qemu_pid = next(g for g in undebug("ps", "--json").json()["guests"]
                        if g["name"] == name)["qemu_pid"]
        target = LiveTarget(SessionDir.named(name))
        try:
            subprocess.run(["kill", "-9", str(qemu_pid)], check=True)  # mid-command
            with pytest.raises(SessionError, match=r"gdbstub lost|has ended|closed the "
                               r"connection|connection lost"):
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    target.client.call("read_registers")
                    time.sleep(0.1)
        finally:
            target.close()
        status = next(g for g in undebug("ps", "--json").json()["guests"] if g["name"] == name)
        assert status["state"] == "ended"
        assert undebug("threads", name).code == 2
    finally:
        undebug("kill", name)


def test_python_api(shared_guest: str) -> None:
    with api.attach(shared_guest) as guest:
        threads = {t.name: t for t in guest.threads()}
        trace = guest.backtrace(threads["sleeper"].id)
        assert "sleeper_main" in [f.function for f in trace.frames]
        assert guest.registers(1)["rip"] > 0
        assert guest.symbol("planted_counter") is not None
    planted = {"main", "sleeper", "blocked", "short-lived", "evil\x1b]0;owned\x07"}
    assert planted <= set(threads), sorted(threads)  # raw guest text, read by name


def test_thread_states_from_a_hostile_elf_are_escaped(shared_guest: str, guest_image: Path,
                                                      tmp_path: Path) -> None:
    """A state name is ELF text (the DWARF enumerator): an ELF whose enumerator carries an
    escape sequence (patched here in place of THREAD_SLEEPING, same length, so the
    build-id still matches) must not reach the terminal raw."""
    data = guest_image.read_bytes()
    assert data.count(b"THREAD_SLEEPING\0") == 1
    hostile = tmp_path / "hostile.elf"
    hostile.write_bytes(data.replace(b"THREAD_SLEEPING\0", b"THREAD_\x1b]0;\x07ING\0"))
    # The ELF index cache keys on the build-id and headers, which a post-link patch keeps
    # (a linker gives changed code a new build-id): read the patched file afresh.
    env = {**os.environ, "UNDEBUG_CACHE_DIR": str(tmp_path / "cache")}
    for args in (("threads",), ("bt", "--all")):
        out = undebug(*args, shared_guest, "--elf", str(hostile), env=env).stdout
        assert "\\x1b]0;\\x07ing" in out
        assert "\x1b" not in out and "\x07" not in out


def test_bt_of_a_guest_before_its_scheduler_unwinds_the_vcpu(guest_image: Path) -> None:
    """Held before its first instruction, the guest has no threads yet (as a Unikraft
    that crashed in early boot): bt and bt --all show vCPU 0 from its own registers."""
    name = "early-bt"
    assert undebug("run", "-d", "--paused", "--name", name, str(guest_image)).code == 0
    try:
        regs = undebug("regs", name, "--json").json()
        for argv in ((), ("--all",)):
            bt = undebug("bt", name, *argv, "--json")
            assert bt.code == 0, bt.stderr
            traces = bt.json()["backtraces"]
            assert [t["thread"]["name"] for t in traces] == ["vCPU 0"], traces
            assert traces[0]["frames"][0]["pc"] == regs["registers"]["rip"]
        assert "no guest thread runs on vCPU 0" in undebug("bt", name).stderr
    finally:
        undebug("kill", name)
