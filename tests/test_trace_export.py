"""``undebug trace export`` on real reference-guest recordings (QEMU, TCG): the files it
writes, parsed back, against what the guest's source, its console and an independent
decode of the same recording say.

Expected values come from elsewhere than the exporter: span names, source lines and the
checksum's length from guest-stubs/refguest/main.c; the number of requests and their
``req_id``\\ s from the recording's span-begin records (decoded here with
tracers.decode, not through the export); the crashing thread and the panic message from
the guest's console; times from the host clock around the run.
"""

from __future__ import annotations

import json
import platform
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, undebug
from tests.test_schema import check
from tracers.decode import decode_file
from tracers.metadata import KIND_SPAN_BEGIN, load_tracepoints

MAIN_C = (ROOT / "guest-stubs" / "refguest" / "main.c").read_text()
HEX32, HEX16 = re.compile(r"^[0-9a-f]{32}$"), re.compile(r"^[0-9a-f]{16}$")


def source_line(needle: str) -> int:
    """The line of main.c that holds ``needle`` (exactly one)."""
    lines = [i + 1 for i, line in enumerate(MAIN_C.splitlines()) if needle in line]
    assert len(lines) == 1, (needle, lines)
    return lines[0]


def attrs(items: list[dict[str, Any]]) -> dict[str, Any]:
    """OTLP/JSON attributes as a dict of plain values (ints were decimal strings)."""
    out = {}
    for kv in items:
        [(kind, value)] = kv["value"].items()
        out[kv["key"]] = int(value) if kind == "intValue" else value
    return out


def otlp_spans(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(spans, resources) of an OTLP/JSON file, one request per line."""
    spans, resources = [], []
    for line in path.read_text().splitlines():
        request = json.loads(line)
        for rs in request["resourceSpans"]:
            resources.append(attrs(rs["resource"]["attributes"]))
            for ss in rs["scopeSpans"]:
                spans += ss["spans"]
    return spans, resources


@pytest.fixture(scope="module")
def recording(guest_image: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, int]:
    """A recording of run --ci (2 vCPUs, 4 workers, 1.5 s), and the host's clock (ns)
    before and after the run."""
    path = tmp_path_factory.mktemp("export") / "rec.utrace"
    before = time.time_ns()
    run = undebug("run", "--ci", "--name", "exp-rec", "--smp", "2", "--append",
                  "threads=4 run_for=1500", "--trace-file", str(path), str(guest_image),
                  timeout=90)
    after = time.time_ns()
    assert run.code == 0, run.stdout + run.stderr
    return path, before, after


def test_export_writes_otlp_json_with_parents_names_and_attributes(
        recording: tuple[Path, int, int], guest_image: Path, tmp_path: Path) -> None:
    path, before, after = recording
    out = tmp_path / "spans.jsonl"
    result = undebug("trace", "export", str(path), "--otlp-json", str(out))  # no --elf
    assert result.code == 0, result.stderr
    spans, resources = otlp_spans(out)
    # the resource: the image's name and the session's, as run was given them
    assert resources and all(r == resources[0] for r in resources)
    assert resources[0]["service.name"] == guest_image.stem
    assert resources[0]["service.instance.id"] == "exp-rec"
    # the hypervisor host's, and the unikernel's OS (the reference guest's provider)
    assert resources[0]["host.name"] == socket.gethostname()
    assert resources[0]["host.arch"] == {"x86_64": "amd64"}.get(platform.machine(),
                                                                platform.machine())
    # run --trace-file recorded the OS provider in FILE.origin; os.type has no value for it
    assert json.loads(path.with_name(path.name + ".origin").read_text())["os_name"] \
        == "refguest"
    assert resources[0]["os.name"] == "undebug reference guest"
    assert resources[0]["unikernel.os.type"] == "refguest" and "os.type" not in resources[0]
    tps = load_tracepoints(guest_image)
    assert resources[0]["unikernel.build_id"] == tps.build_id

    # every request of the recording is one handle_request span, the root of its trace
    decoded = decode_file(path, tracepoint_count=tps.count)
    begin_ids = {tp.id for tp in tps.by_id.values()
                 if tp.name == "handle_request" and tp.kind == KIND_SPAN_BEGIN}
    req_ids = sorted(int(decoded.records.args[i, 0]) for i in range(len(decoded.records))
                     if int(decoded.records.id[i]) in begin_ids)
    requests = [s for s in spans if s["name"] == "handle_request"]
    checksums = [s for s in spans if s["name"] == "checksum"]
    assert len(requests) == len(req_ids) > 100
    assert len(spans) == len(requests) + len(checksums)
    assert sorted(attrs(s["attributes"])["unikernel.args.req_id"] for s in requests) == req_ids
    assert all("parentSpanId" not in s for s in requests)
    assert len({s["traceId"] for s in requests}) == len(requests)  # a trace per request
    for s in spans:
        assert HEX32.match(s["traceId"]) and HEX16.match(s["spanId"]), s
        assert before <= int(s["startTimeUnixNano"]) <= int(s["endTimeUnixNano"]) <= after
    by_id = {s["spanId"]: s for s in spans}
    assert len(by_id) == len(spans)

    # each checksum span is a child of a request on the same thread, inside its time
    line_request = source_line("UNDEBUG_SPAN_BEGIN_CTX(handle_request")
    line_checksum = source_line("UNDEBUG_SPAN_BEGIN(checksum")
    buf_len = int(re.search(r"#define WORKER_BUF_LEN (\d+)", MAIN_C)[1])  # type: ignore[index]
    assert abs(len(checksums) - len(requests)) <= 2  # the shutdown may cut one short
    for c in checksums:
        parent = by_id[c["parentSpanId"]]
        ca, pa = attrs(c["attributes"]), attrs(parent["attributes"])
        assert parent["name"] == "handle_request" and parent["traceId"] == c["traceId"]
        assert ca["thread.id"] == pa["thread.id"] and ca["thread.name"] == pa["thread.name"]
        assert int(parent["startTimeUnixNano"]) <= int(c["startTimeUnixNano"])
        if "unikernel.span.unterminated" not in pa:
            assert int(c["endTimeUnixNano"]) <= int(parent["endTimeUnixNano"])
        assert ca["unikernel.args.w->len"] == buf_len
        assert (ca["code.file.path"], ca["code.line.number"]) == ("main.c", line_checksum)
    for s in requests:
        a = attrs(s["attributes"])
        assert (a["code.file.path"], a["code.line.number"]) == ("main.c", line_request)
        assert re.fullmatch(r"worker-[0-3]", a["thread.name"]) and a["cpu.logical_number"] in (0, 1)
    assert {attrs(s["attributes"])["thread.name"] for s in requests} == {
        f"worker-{i}" for i in range(4)}
    # only what the shutdown cut short is unterminated, and it says so
    open_ = [s for s in spans if "unikernel.span.unterminated" in attrs(s["attributes"])]
    assert len(open_) <= 4 and all(s["status"]["code"] == 2 for s in open_)
    assert all(s["status"] == {"code": 0} for s in spans if s not in open_)


def test_jaeger_json_holds_the_same_spans_grouped_by_trace(
        recording: tuple[Path, int, int], guest_image: Path, tmp_path: Path) -> None:
    path, _, _ = recording
    otlp, jaeger = tmp_path / "a.jsonl", tmp_path / "j.json"
    result = undebug("trace", "export", str(path), "--otlp-json", str(otlp),
                     "--jaeger-json", str(jaeger), "--json")
    assert result.code == 0, result.stderr
    summary = result.json()
    check("trace export", summary)
    doc = json.loads(jaeger.read_text())
    spans, _ = otlp_spans(otlp)
    jspans = [s for trace in doc["data"] for s in trace["spans"]]
    assert summary["spans"] == len(spans) == len(jspans)
    assert summary["traces"] == len({s["traceId"] for s in spans}) == len(doc["data"])
    assert {(s["traceID"], s["spanID"]) for s in jspans} == {
        (s["traceId"], s["spanId"]) for s in spans}
    for trace in doc["data"]:
        assert {s["traceID"] for s in trace["spans"]} == {trace["traceID"]}
        assert trace["processes"]["p1"]["serviceName"] == guest_image.stem
        ids = {s["spanID"] for s in trace["spans"]}
        for s in trace["spans"]:
            for ref in s["references"]:  # the parent is in the same trace entry
                assert ref["refType"] == "CHILD_OF" and ref["spanID"] in ids
    otlp_parent = {s["spanId"]: s.get("parentSpanId") for s in spans}
    for s in jspans:
        assert otlp_parent[s["spanID"]] == (s["references"][0]["spanID"]
                                            if s["references"] else None)
        assert s["duration"] >= 0 and s["processID"] == "p1"
    assert summary["outputs"] == [{"format": "otlp-json", "file": str(otlp)},
                                  {"format": "jaeger-json", "file": str(jaeger)}]


def test_a_second_export_sends_the_same_ids(recording: tuple[Path, int, int],
                                            tmp_path: Path) -> None:
    path, _, _ = recording
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for out in (a, b):
        assert undebug("trace", "export", str(path), "--otlp-json", str(out)).code == 0
    assert a.read_bytes() == b.read_bytes()


@pytest.fixture(scope="module")
def crash(guest_image: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A recording of a guest whose worker dereferences NULL, and its console."""
    path = tmp_path_factory.mktemp("crash") / "crash.utrace"
    run = undebug("run", "--ci", "--timeout", "60", "--smp", "2", "--append",
                  "threads=4 crash=null crash_after=300", "--trace-file", str(path),
                  str(guest_image), timeout=90)
    assert run.code == 1, run.stdout + run.stderr
    return path, run.stdout + run.stderr


def test_a_crash_is_an_exception_event_with_error_status(crash: tuple[Path, str],
                                                          tmp_path: Path) -> None:
    path, console = crash
    exc = re.search(r"EXCEPTION vector=14 \(#PF\) error=0x2 rip=0x([0-9a-f]+) cr2=0x0 "
                    r"cpu=(\d+) thread=(worker-\d+)", console)
    panic = re.search(r"PANIC: (.*)", console)
    assert exc and panic, console
    out = tmp_path / "crash.jsonl"
    result = undebug("trace", "export", str(path), "--otlp-json", str(out), "--json")
    assert result.code == 0, result.stderr
    assert result.json()["exceptions"] == 2
    spans, _ = otlp_spans(out)
    hit = [s for s in spans if any(e["name"] == "exception" for e in s["events"])]
    assert len(hit) == 1
    [span] = hit
    a = attrs(span["attributes"])
    assert span["name"] == "handle_request" and a["thread.name"] == exc[3]
    assert a["unikernel.span.unterminated"] is True  # the request never ended
    events = [attrs(e["attributes"]) for e in span["events"] if e["name"] == "exception"]
    assert [e["exception.type"] for e in events] == ["fault", "panic"]
    assert f"rip {int(exc[1], 16):#x}" in events[0]["exception.message"]
    assert "#PF" in events[0]["exception.message"]
    assert events[0]["cpu.logical_number"] == int(exc[2])
    assert events[1]["exception.message"] == panic[1].strip()
    assert span["status"] == {"code": 2, "message": panic[1].strip()}


def test_without_an_elf_export_is_exit_2(recording: tuple[Path, int, int], guest_image: Path,
                                         tmp_path: Path) -> None:
    path, _, _ = recording
    bare = tmp_path / "bare.utrace"
    shutil.copyfile(path, bare)  # no bare.utrace.origin beside it
    result = undebug("trace", "export", str(bare), "--otlp-json", str(tmp_path / "x.jsonl"))
    assert result.code == 2
    assert "no ELF to name the tracepoints with" in result.stderr
    # an ELF of another build (no build-id at all) cannot name them either
    other = guest_image.with_name("refguest-nobid.elf")
    result = undebug("trace", "export", str(bare), "--elf", str(other), "--jaeger-json",
                     str(tmp_path / "y.json"))
    assert result.code == 2 and "build-id mismatch" in result.stderr
    assert "--force" in result.stderr
    assert not (tmp_path / "y.json").exists()  # no half-written file left behind
    with_elf = undebug("trace", "export", str(bare), "--elf", str(guest_image),
                       "--jaeger-json", str(tmp_path / "z.json"))
    assert with_elf.code == 0, with_elf.stderr
    assert undebug("trace", "export", str(bare), "--elf", str(guest_image)).code == 2


def test_perfetto_file_parses_back_with_a_track_per_thread_and_nested_slices(
        crash: tuple[Path, str], guest_image: Path, tmp_path: Path) -> None:
    """Parsed with the perfetto package's own protos (no trace processor binary here)."""
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent

    path, console = crash
    out = tmp_path / "crash.pftrace"
    result = undebug("trace", "export", str(path), "--perfetto", str(out), "--json")
    assert result.code == 0, result.stderr
    summary = result.json()
    trace = Trace()
    trace.ParseFromString(out.read_bytes())
    names: dict[int, str] = {}
    tracks: dict[int, Any] = {}
    events = []
    for packet in trace.packet:
        for n in packet.interned_data.event_names:
            names[n.iid] = n.name
        if packet.HasField("track_descriptor"):
            tracks[packet.track_descriptor.uuid] = packet.track_descriptor
        if packet.HasField("track_event"):
            events.append((packet.timestamp, packet.track_event))
    [process] = [t for t in tracks.values() if t.HasField("process")]
    assert process.process.process_name == guest_image.stem
    threads = {t.uuid: t.thread.thread_name for t in tracks.values() if t.HasField("thread")}
    assert all(t.parent_uuid == process.uuid for t in tracks.values() if t.HasField("thread"))
    assert {f"worker-{i}" for i in range(4)} <= set(threads.values())
    begins = [e for _, e in events if e.type == TrackEvent.TYPE_SLICE_BEGIN]
    ends = [e for _, e in events if e.type == TrackEvent.TYPE_SLICE_END]
    assert len(begins) == len(ends) == summary["spans"]
    assert {names[e.name_iid] for e in begins} == {"handle_request", "checksum"}
    # on each thread's track, in time order, the slices nest: checksum inside a request
    for uuid in threads:
        mine = sorted(((ts, 0 if e.type == TrackEvent.TYPE_SLICE_END else 1, names[e.name_iid])
                       for ts, e in events if e.track_uuid == uuid
                       and e.type != TrackEvent.TYPE_INSTANT))
        stack: list[str] = []
        for _, kind, name in mine:
            if kind:
                assert name == ("handle_request" if not stack else "checksum"), (stack, name)
                stack.append(name)
            else:
                assert stack.pop() == name
        assert not stack
    # the crash: an exception instant on the crashing worker's track
    exc = re.search(r"thread=(worker-\d+)", console)
    assert exc, console
    instants = [e for _, e in events if e.type == TrackEvent.TYPE_INSTANT]
    assert [names[e.name_iid] for e in instants] == ["exception", "exception"]
    assert {threads[e.track_uuid] for e in instants} == {exc[1]}
    kinds = [{a.name: a.string_value for a in e.debug_annotations}["exception.type"]
             for e in instants]
    assert sorted(kinds) == ["fault", "panic"]


HOST_TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
GUEST_TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def run_and_export(guest_image: Path, tmp_path: Path, name: str, *run_args: str,
                   env: dict[str, str] | None = None, append: str = "") -> tuple[
                       list[dict[str, Any]], Any, str]:
    """Record a short run with ``run_args``, export it: (spans, summary, run's stderr)."""
    import os

    path = tmp_path / f"{name}.utrace"
    run = undebug("run", "--ci", "--name", name, "--append",
                  f"threads=2 run_for=800 {append}".strip(), "--trace-file", str(path),
                  *run_args, str(guest_image), env={**os.environ, **(env or {})}, timeout=90)
    assert run.code == 0, run.stdout + run.stderr
    out = tmp_path / f"{name}.jsonl"
    result = undebug("trace", "export", str(path), "--otlp-json", str(out), "--json")
    assert result.code == 0, result.stderr
    return otlp_spans(out)[0], result.json(), run.stderr


def test_the_hosts_traceparent_is_the_parent_of_every_request(guest_image: Path,
                                                              tmp_path: Path) -> None:
    spans, summary, _ = run_and_export(guest_image, tmp_path, "tp-host",
                                       env={"TRACEPARENT": HOST_TP})
    requests = [s for s in spans if s["name"] == "handle_request"]
    assert requests and summary["joined"] == len(requests) and summary["traces"] == 0
    for s in requests:  # the CI job's trace holds every request, under the job's span
        assert (s["traceId"], s["parentSpanId"]) == (HOST_TP[3:35], HOST_TP[36:52])
        assert attrs(s["attributes"])["unikernel.traceparent.source"] == "host"
    assert {s["traceId"] for s in spans} == {HOST_TP[3:35]}  # children too
    by_id = {s["spanId"]: s for s in spans}
    assert all(by_id[s["parentSpanId"]]["name"] == "handle_request"
               for s in spans if s["name"] == "checksum")


def test_the_guests_traceparent_joins_its_spans_and_wins_over_the_hosts(
        guest_image: Path, tmp_path: Path) -> None:
    spans, summary, stderr = run_and_export(guest_image, tmp_path, "tp-guest", "--traceparent",
                                            HOST_TP.upper(), append=f"traceparent={GUEST_TP}")
    assert "trace export will give the guest's spans no parent" in stderr  # uppercase
    requests = [s for s in spans if s["name"] == "handle_request"]
    assert requests and summary["joined"] == len(requests)
    for s in requests:  # UNDEBUG_SPAN_BEGIN_CTX in main.c: each request joins the caller
        assert (s["traceId"], s["parentSpanId"]) == (GUEST_TP[3:35], GUEST_TP[36:52])
        assert attrs(s["attributes"])["unikernel.traceparent.source"] == "guest"


def test_a_malformed_guest_traceparent_is_exported_without_a_parent(
        guest_image: Path, tmp_path: Path) -> None:
    bad = GUEST_TP.replace("-01", "-1")
    spans, summary, _ = run_and_export(guest_image, tmp_path, "tp-bad",
                                       append=f"traceparent={bad}")
    requests = [s for s in spans if s["name"] == "handle_request"]
    assert requests and summary["bad_traceparents"] == len(requests)
    assert summary["joined"] == 0 and summary["traces"] == len(requests)
    for s in requests:
        a = attrs(s["attributes"])
        assert "parentSpanId" not in s and a["unikernel.traceparent"] == bad
        assert "VERSION-TRACEID-PARENTID-FLAGS" in a["unikernel.traceparent.error"]


def test_a_damaged_recording_is_exported_as_far_as_it_reads(
        crash: tuple[Path, str], tmp_path: Path) -> None:
    """Flipped bytes, a cut-short end, a hostile thread name: exit 0 with what decodes
    (damage reported), never a traceback, and the files still parse."""
    import random

    path, _ = crash
    data = path.read_bytes()
    rng = random.Random(11)
    for n in range(12):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 40)):
            bad[rng.randrange(80, len(bad))] = rng.randrange(256)
        cut = bytes(bad[: rng.randrange(200, len(bad))]) if n % 3 == 0 else bytes(bad)
        rec = tmp_path / f"bad{n}.utrace"
        rec.write_bytes(cut)
        shutil.copyfile(path.with_name(path.name + ".origin"),
                        rec.with_name(rec.name + ".origin"))
        out, jaeger = tmp_path / f"bad{n}.jsonl", tmp_path / f"bad{n}.json"
        result = undebug("trace", "export", str(rec), "--otlp-json", str(out),
                         "--jaeger-json", str(jaeger), "--json")  # no traceback: undebug()
        assert result.code == 0, result.stderr
        doc = result.json()
        check("trace export", doc)
        spans, _ = otlp_spans(out)
        assert len(spans) == doc["spans"] == sum(
            len(t["spans"]) for t in json.loads(jaeger.read_text())["data"])


def test_filter_and_time_select_spans_of_a_real_recording(
        recording: tuple[Path, int, int], tmp_path: Path) -> None:
    path, _, _ = recording
    everything, only, late = tmp_path / "all.jsonl", tmp_path / "c.jsonl", tmp_path / "l.jsonl"
    assert undebug("trace", "export", str(path), "--otlp-json", str(everything)).code == 0
    result = undebug("trace", "export", str(path), "--otlp-json", str(only), "--filter",
                     "check*", "--json")
    assert result.code == 0, result.stderr
    spans, _ = otlp_spans(only)
    full, _ = otlp_spans(everything)
    assert {s["name"] for s in spans} == {"checksum"}
    assert sorted(s["spanId"] for s in spans) == sorted(
        s["spanId"] for s in full if s["name"] == "checksum")
    assert all("parentSpanId" not in s for s in spans)  # their requests were left out
    assert result.json()["left_out"] == len(full) - len(spans)
    # --since: the requests that began in the second half of the run (seconds since boot,
    # from trace show's own times, an independent reading of the same records)
    shown = undebug("trace", "show", str(path), "--filter", "handle_request", "--json").json()
    begins = sorted(e["time_ns"] for e in shown["events"]
                    if e["tracepoint"] == "begin handle_request")
    middle = begins[len(begins) // 2]
    assert undebug("trace", "export", str(path), "--otlp-json", str(late), "--since",
                   f"{middle / 1e9:.9f}", "--filter", "handle_request").code == 0
    late_spans, _ = otlp_spans(late)
    assert len(late_spans) == sum(t >= middle for t in begins)


def test_a_live_guest_is_exported_by_name_with_its_sessions_identity(
        guest_image: Path, tmp_path: Path) -> None:
    from tests.conftest import wait_for_console

    name = "exp-live"
    started = undebug("run", "-d", "--name", name, "--smp", "2", "--append", "threads=2",
                      "--traceparent", HOST_TP, str(guest_image))
    assert started.code == 0, started.stderr
    try:
        wait_for_console(name, "refguest: heartbeat")
        out = tmp_path / "live.jsonl"
        result = undebug("trace", "export", name, "--otlp-json", str(out), "--json")
        [guest] = [g for g in undebug("ps", "--json").json()["guests"] if g["name"] == name]
    finally:
        undebug("kill", name)
    assert result.code == 0, result.stderr
    spans, resources = otlp_spans(out)
    assert spans and result.json()["spans"] == len(spans)
    assert {r["service.instance.id"] for r in resources} == {name}
    assert {r["service.name"] for r in resources} == {guest_image.stem}
    # QEMU's process.* (a live guest: its pid from ps, its binary from /proc)
    assert {r["process.pid"] for r in resources} == {guest["qemu_pid"]}
    assert all(r["process.executable.name"].startswith("qemu-system") for r in resources)
    roots = [s for s in spans if s["name"] == "handle_request"]
    assert roots and all(s["parentSpanId"] == HOST_TP[36:52] for s in roots)


def test_perfetto_json_has_every_span_as_a_complete_event_nested_per_thread(
        recording: tuple[Path, int, int], tmp_path: Path) -> None:
    """The legacy JSON fallback, parsed back (no Perfetto binary here: json and the
    format's rules), against the OTLP/JSON export of the same recording."""
    path, _, _ = recording
    out, ref = tmp_path / "trace.json", tmp_path / "spans.jsonl"
    result = undebug("trace", "export", str(path), "--perfetto-json", str(out),
                     "--otlp-json", str(ref))
    assert result.code == 0, result.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    events = json.loads(out.read_text())["traceEvents"]
    spans, _ = otlp_spans(ref)
    complete = [e for e in events if e["ph"] == "X"]
    assert sorted((e["name"], round(e["ts"])) for e in complete) == \
        sorted((s["name"], round(int(s["startTimeUnixNano"]) / 1000)) for s in spans)
    names = {e["tid"]: e["args"]["name"] for e in events if e.get("name") == "thread_name"}
    assert any(name.startswith("worker-") for name in names.values())
    assert {e["tid"] for e in complete} <= set(names)
    for tid in names:  # a thread's slices nest: the legacy format holds no other overlap
        mine = sorted((e["ts"], -e["dur"]) for e in complete if e["tid"] == tid)
        open_ends: list[float] = []
        for ts, neg in mine:
            while open_ends and open_ends[-1] <= ts:
                open_ends.pop()
            assert not open_ends or ts - neg <= open_ends[-1] + 1, tid
            open_ends.append(ts - neg)
    instants = sum(1 for e in events if e["ph"] == "i")
    assert instants == sum(len(s["events"]) for s in spans)
