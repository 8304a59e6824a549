"""undebug's tracing stub as a Unikraft library (guest-stubs/unikraft/).

Without Unikraft: the portable parts of the port compiled on the host with gcc -g and run
(the thread-id map, the clock arithmetic, the build-id note reader), the linker fragment
linked into a program with a MIRROR of the shape of Unikraft's linker script (PHDRS
without a PT_NOTE, tests/data/unikraft_link_mirror.lds), and the exported symbols
checked against the public header.

With real images built outside the repository (never committed; guest-stubs/unikraft/
README.md says how): UNDEBUG_UNIKRAFT_STUB_IMAGE is the app with the library whose
workers worker-0..2 run a ``do_work`` span with a ``work_done`` event and Unikraft's own
tracepoint ``trace_work(id, n)`` every 50-66 ms;
UNDEBUG_UNIKRAFT_STUB_CRASH_IMAGE the same app whose worker-1 writes through NULL in
``do_work`` about 1 s after boot."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, real_image, undebug, wait_for_console

LIB = ROOT / "guest-stubs" / "unikraft"
DATA = Path(__file__).parent / "data"
SLOTS = 64


def _cc(out: Path, *args: str) -> None:
    subprocess.run(["gcc", "-g", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), *args],
                   check=True, capture_output=True, text=True)


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ukport") / "port"
    _cc(out, f"-DUNDEBUG_TIDMAP_SLOTS={SLOTS}u", f"-I{LIB}", str(DATA / "unikraft_stub_port.c"),
        str(LIB / "tidmap.c"))
    return out


def _run(harness: Path, *args: str) -> list[Any]:
    proc = subprocess.run([str(harness), *args], capture_output=True, text=True, timeout=60,
                          check=True)
    return [json.loads(line) for line in proc.stdout.splitlines()]


def test_thread_ids_are_small_unique_and_outlive_the_exit_hook(harness: Path) -> None:
    out: dict[str, Any] = {}
    for line in _run(harness, "tidmap"):
        out.update(line)
    added = out["added"]
    assert added[-1] == 0  # every slot holds a live thread: no id
    ids = added[:-1]
    assert len(set(ids)) == SLOTS and all(0 < i < 65536 for i in ids)
    assert out["found"] == ids
    assert out["live"] == SLOTS and out["live_after_exit"] == SLOTS - 1
    # the switch away from an exiting thread comes after uksched's termination hook
    assert out["exited_still_found"] == ids[5]
    assert out["fresh"] not in (0, *ids) and out["exited_after_reuse"] == 0
    # an address seen before is a new thread: a new id
    assert out["readded_old"] == ids[7] and out["readded_new"] not in (0, *ids, out["fresh"])


def test_thread_ids_wrap_around_the_ids_still_held(harness: Path) -> None:
    out: dict[str, Any] = {}
    for line in _run(harness, "tidmap"):
        out.update(line)
    assert out["churn_zeros"] == 0 and out["churn_clashes"] == 0
    # 70000 ids handed out: the counter passed 65535 and came back to the low ids freed
    assert out["churn_max"] == 65535 and out["churn_min"] < 2 * SLOTS
    assert (out["null_add"], out["null_get"], out["unknown_get"]) == (0, 0, 0)


@pytest.mark.parametrize(("dtsc", "dns"), [(5_282_739, 2_000_000), (2_000_123, 2_000_000),
                                           (1, 3), (2**63, 10**9), (10**9, 1)])
def test_tsc_hz_from_unikraft_clock(harness: Path, dtsc: int, dns: int) -> None:
    got = _run(harness, "hz", str(dtsc), str(dns))[0]
    exact = dtsc * 10**9 // dns
    assert got == exact or (dtsc > 2**64 // 10**9 and got == dtsc // dns * 10**9)
    assert _run(harness, "hz", "5", "0")[0] == 0


@pytest.mark.parametrize(("tsc", "ns", "hz"), [(10**12, 107_501_150, 2_641_369_548),
                                               (2**62, 3 * 10**9 + 999_999_999, 3_999_999_999),
                                               (1000, 10**9, 10**9)])
def test_boot_tsc_is_the_tsc_at_unikraft_clock_zero(harness: Path, tsc: int, ns: int,
                                                     hz: int) -> None:
    got = _run(harness, "boot", str(tsc), str(ns), str(hz))[0]
    since = ns * hz // 10**9
    if since > tsc:
        assert got == 0
    else:
        assert abs(got - (tsc - since)) <= 2  # integer rounding of three terms


def _readelf_build_id(path: Path) -> str:
    out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True,
                         check=True).stdout
    found = re.search(r"Build ID: ([0-9a-f]+)", out)
    assert found, out
    return found[1]


def test_build_id_note_reader(harness: Path, tmp_path: Path) -> None:
    elf = tmp_path / "a.out"
    (tmp_path / "m.c").write_text("int main(void) { return 0; }\n")
    _cc(elf, "-Wl,--build-id=sha1", str(tmp_path / "m.c"))
    note = tmp_path / "note.bin"
    subprocess.run(["objcopy", "-O", "binary", "--only-section=.note.gnu.build-id", str(elf),
                    str(note)], check=True)
    assert _run(harness, "buildid", str(note))[0] == _readelf_build_id(elf)
    raw = note.read_bytes()
    for bad in (raw[:20], raw[:8] + b"\x04\0\0\0" + raw[12:], raw[:12] + b"XYZ\0" + raw[16:],
                b""):
        (tmp_path / "bad.bin").write_bytes(bad)
        assert _run(harness, "buildid", str(tmp_path / "bad.bin"))[0] is None


def test_linker_fragment_keeps_records_and_a_build_id_without_pt_note(tmp_path: Path) -> None:
    """extra.ld INSERTed into a Unikraft-shaped script: the records land contiguous from
    __start_undebug_tracepoints in a loaded segment, the build-id note is kept, loaded and
    named, and the host reads both (its build-id from the section: no PT_NOTE)."""
    from tracers.metadata import load_tracepoints
    from undebug.elf import ElfFile
    from undebug.elf_headers import PT_LOAD, PT_NOTE, program_headers

    elf = tmp_path / "app.elf"
    _cc(elf, "-ffreestanding", "-fno-pic", "-no-pie", "-nostdlib", "-static",
        "-fno-asynchronous-unwind-tables", f"-I{ROOT / 'guest-stubs' / 'include'}",
        "-Wl,--build-id=sha1", "-Wl,--no-warn-rwx-segments",
        f"-Wl,-dT,{DATA / 'unikraft_link_mirror.lds'}", f"-Wl,-T,{LIB / 'extra.ld'}",
        str(DATA / "unikraft_link_app.c"))
    data = elf.read_bytes()
    assert not [s for s in program_headers(data) if s.type == PT_NOTE]
    image = ElfFile(elf)
    assert image.build_id == _readelf_build_id(elf)
    nm = subprocess.run(["nm", str(elf)], capture_output=True, text=True, check=True).stdout
    symbols = {name: int(value, 16) for value, _, name in
               (line.split() for line in nm.splitlines() if len(line.split()) == 3)}
    section = image.section("undebug_tracepoints")
    assert section is not None and section.size == 2 * 64
    assert symbols["__start_undebug_tracepoints"] == section.address
    assert image.build_id_address == symbols["undebug_build_id_note"] + 16  # past the note header
    loads = [s for s in program_headers(data) if s.type == PT_LOAD]
    for address in (section.address, symbols["undebug_build_id_note"]):
        assert any(s.vaddr <= address < s.vaddr + s.filesz for s in loads), hex(address)
    tps = load_tracepoints(elf)
    assert sorted(tp.name for tp in tps.by_id.values()) == ["first_tp", "second_tp"]
    assert tps.count == 2 and not tps.warnings


def test_every_public_function_and_flight_recorder_symbol_is_exported() -> None:
    """Unikraft localizes every symbol of a library not in its exportsyms.uk: an app
    calling an API function missing there would not link."""
    header = (ROOT / "guest-stubs" / "include" / "undebug" / "trace.h").read_text()
    declared = set(re.findall(r"^\w[\w ]*?\**\b(undebug_\w+|undebug__emit\d)\(", header, re.M))
    declared -= {"undebug_os_cpu", "undebug_os_timestamp", "undebug_os_thread",
                 "undebug_os_virt_to_phys"}  # the port provides these to the stub
    exported = set((LIB / "exportsyms.uk").read_text().split())
    assert len(declared) > 20
    assert declared - exported == set()
    assert {"undebug_trace_active", "undebug_trace_header", "undebug_trace_rings",
            "undebug_trace_ring_data", "__wrap_ukarch_ctx_switch",
            "__wrap_ukplat_terminate"} <= exported


# ---- real Unikraft images ----------------------------------------------------------------

STUB_IMAGE = ("a Unikraft image with undebug's library, built outside the repository: "
              "guest-stubs/unikraft/README.md")  # what its variables hold


def _show(name: str, *extra: str) -> list[dict[str, Any]]:
    shown = undebug("trace", "show", name, "--json", *extra)
    assert shown.code == 0, shown.stderr
    return shown.json()["events"]  # type: ignore[no-any-return]


def test_a_unikraft_app_streams_switches_spans_and_events_by_thread_name() -> None:
    image = real_image("UNDEBUG_UNIKRAFT_STUB_IMAGE", STUB_IMAGE)
    assert undebug("run", "-d", "--name", "ukstub", str(image)).code == 0
    try:
        wait_for_console("ukstub", "worker-2: iteration 20")  # ~1 s of work
        deadline = time.monotonic() + 30
        while True:
            stats = undebug("trace", "stats", "ukstub", "--json")
            assert stats.code == 0, stats.stderr
            report = stats.json()
            per = {t["name"]: t["count"] for t in report["threads"]}
            if all(per.get(f"worker-{i}", 0) >= 3 * 21 for i in range(3)) or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.5)
        # 21 iterations each: a span begin, a work_done event and a span end per iteration
        assert all(per.get(f"worker-{i}", 0) >= 3 * 21 for i in range(3)), per
        assert report["warnings"] == []  # the .dbg's build-id is the stream's
        names = {(tp["name"], tp["kind"]) for tp in report["tracepoints"]}
        assert {("do_work", "span-begin"), ("do_work", "span-end"), ("work_done", "event")} \
            <= names
        assert report["spans"]["count"] >= 63 and report["spans"]["unmatched_ends"] == 0
        assert all(x["agree"] and x["lost_gaps"] == 0 for x in report["loss"])
        assert report["sessions"][0]["transport"] == "virtio-serial"
        events = _show("ukstub")
        names = {e["words"][0]: e["text"] for e in events if e["tracepoint"] == "thread_name"}
        assert sorted(names.values()) == ["idle", "init", "undebug-poll", "worker-0",
                                          "worker-1", "worker-2"], names
        switches = [(names.get(e["words"][0]), names.get(e["words"][1])) for e in events
                    if e["tracepoint"] == "thread_switch"]
        for worker in ("worker-0", "worker-1", "worker-2"):  # scheduled in and out again
            assert sum(1 for _, to in switches if to == worker) >= 20, switches[:40]
            assert sum(1 for frm, _ in switches if frm == worker) >= 20, switches[:40]
        # Unikraft's own tracepoint (trace_work(id, n) next to work_done in do_work),
        # forwarded from uk_trace_buffer by the poll thread, named from the .dbg
        done = [(e["args"]["id"], e["args"]["n"]) for e in events
                if e["tracepoint"] == "work_done"]
        uk = [(e["args"]["arg1"], e["args"]["arg2"]) for e in events
              if e["tracepoint"] == "trace_work"]
        assert len(uk) >= 63 and uk == done[: len(uk)], (uk[:5], done[:5])
        # every record after a switch is the thread switched to
        current = None
        for e in events:
            if current is not None and e["tracepoint"] != "thread_name":
                assert e["tid"] == current, e
            if e["tracepoint"] == "thread_switch":
                current = e["words"][1]
    finally:
        undebug("kill", "ukstub")


def test_a_crashed_unikraft_guest_has_its_last_events_in_the_flight_recorder() -> None:
    image = real_image("UNDEBUG_UNIKRAFT_STUB_CRASH_IMAGE", STUB_IMAGE)
    assert undebug("run", "-d", "--name", "ukstubc", str(image)).code == 0
    try:
        waited = undebug("wait", "ukstubc", "--timeout", "60")
        assert waited.code == 1 and "page fault writing 0x0" in waited.stdout, waited.stdout
        flight = _show("ukstubc", "--flight-recorder")
        streamed = _show("ukstubc")
        for events in (flight, streamed):
            panic = events[-1]
            assert (panic["tracepoint"], panic["text"]) == ("panic", "unhandled trap"), panic
            # before the PANIC: the fault, then Unikraft's samples since the last poll
            at = max(i for i, e in enumerate(events) if e["tracepoint"] == "fault")
            fault, forwarded = events[at], events[at + 1 : -1]
            assert fault["thread"] == "worker-1", fault
            assert fault["words"][0] == 14 and fault["words"][3] == 0  # #PF at address 0
            assert {e["tracepoint"] for e in forwarded} <= {"trace_work"}, forwarded
            # the crash is inside worker-1's do_work span, after its last work_done
            before = [e for e in events[:at] if e["thread"] == "worker-1"]
            assert before[-1]["tracepoint"] == "work_done", before[-3:]
            assert before[-2]["tracepoint"] == "begin do_work", before[-3:]
            last = before[-1]["args"]
            work = [e["args"] for e in events if e["tracepoint"] == "trace_work"]
            assert work[-1] == {"arg1": last["id"], "arg2": last["n"]}, work[-3:]
        # the flight recorder holds the whole run here (it did not wrap): the same records
        assert [(e["seq"], e["tracepoint"]) for e in flight][-50:] == \
            [(e["seq"], e["tracepoint"]) for e in streamed][-50:]
        from undebug.elf import ElfFile

        rip = next(e for e in reversed(flight) if e["tracepoint"] == "fault")["words"][2]
        where = ElfFile(image.with_name(image.name + ".dbg")).symbolize(rip)
        assert where is not None and where.startswith("do_work+"), where
    finally:
        undebug("kill", "ukstubc")
