"""``trace export --otlp`` to real OTLP/HTTP receivers on loopback.

No Collector or Jaeger can be installed here, so the receivers are the tests' own
servers on 127.0.0.1 (an ephemeral port): HTTP with http.server, gRPC with grpcio's
server and opentelemetry-proto's TraceService definition. They decode what arrives with
the official protobuf definitions (opentelemetry-proto's ExportTraceServiceRequest), not
with undebug's code. The recording is a real reference guest's (QEMU, TCG); what the
spans must hold is derived from the guest's source and from an independent decode of
the recording, as in test_trace_export.py.
"""

from __future__ import annotations

import http.server
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.conftest import undebug
from tests.test_schema import check
from tests.test_trace_export import recording  # noqa: F401 (a fixture)
from tracers.decode import decode_file
from tracers.metadata import KIND_SPAN_BEGIN, load_tracepoints


class Receiver(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP receiver: answers 503 to the first ``fail_first`` requests, then
    200 with an ExportTraceServiceResponse; keeps the decoded requests and their
    paths and headers."""

    def __init__(self, fail_first: int = 0) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fail_first = fail_first
        self.requests: list[tuple[str, dict[str, str], ExportTraceServiceRequest | None]] = []
        self.metrics: list[Any] = []  # ExportMetricsServiceRequests (/v1/metrics)
        self.fail_metrics = False
        self.lock = threading.Lock()

    def metric_points(self) -> dict[str, list[float]]:
        """Every data point's value, by metric name."""
        out: dict[str, list[float]] = {}
        for req in self.metrics:
            for rm in req.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        points = getattr(m, m.WhichOneof("data")).data_points
                        out.setdefault(m.name, []).extend(
                            p.as_int if p.HasField("as_int") else p.as_double for p in points)
        return out

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def spans(self) -> list[tuple[dict[str, object], object]]:
        """(resource attributes, span) of every span in the accepted requests."""
        out = []
        for _, _, req in self.requests:
            for rs in req.resource_spans if req else ():
                res = {kv.key: _plain(kv.value) for kv in rs.resource.attributes}
                out += [(res, s) for ss in rs.scope_spans for s in ss.spans]
        return out


def _plain(value: object) -> object:
    kind = value.WhichOneof("value")  # type: ignore[attr-defined]
    return getattr(value, kind)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path.endswith("/v1/metrics"):  # decoded with the official protos too
            from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
                ExportMetricsServiceRequest,
            )

            metrics = ExportMetricsServiceRequest()
            metrics.ParseFromString(body)
            with self.server.lock:
                self.server.metrics.append(metrics)
            self.send_response(200 if not self.server.fail_metrics else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        with self.server.lock:
            failing = len(self.server.requests) < self.server.fail_first
            req = None
            if not failing:
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
            self.server.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}, req))
        if failing:
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    server = Receiver(getattr(request, "param", 0))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def attrs(items: object) -> dict[str, object]:
    return {kv.key: _plain(kv.value) for kv in items}  # type: ignore[attr-defined]


def requests_in(path: Path, guest_image: Path) -> list[int]:
    tps = load_tracepoints(guest_image)
    begin = {tp.id for tp in tps.by_id.values()
             if tp.name == "handle_request" and tp.kind == KIND_SPAN_BEGIN}
    r = decode_file(path, tracepoint_count=tps.count).records
    return sorted(int(r.args[i, 0]) for i in range(len(r)) if int(r.id[i]) in begin)


def test_spans_reach_a_real_otlp_receiver_with_service_name_and_parents(
        recording: tuple[Path, int, int], guest_image: Path, receiver: Receiver) -> None:  # noqa: F811
    path, _, _ = recording
    result = undebug("trace", "export", str(path), "--otlp", receiver.url,
                     "--header", "X-Tenant=ci", "--json")
    assert result.code == 0, result.stderr
    doc = result.json()
    check("trace export", doc)
    got = receiver.spans()
    assert {p for p, _, _ in receiver.requests} == {"/v1/traces"}  # the path was added
    assert all(h.get("x-tenant") == "ci" for _, h, _ in receiver.requests)
    assert doc["otlp"]["exported"] == len(got) == doc["spans"]
    assert doc["otlp"]["not_exported"] == 0
    assert {res["service.name"] for res, _ in got} == {guest_image.stem}
    assert {res["service.instance.id"] for res, _ in got} == {"exp-rec"}
    requests = [s for _, s in got if s.name == "handle_request"]
    assert sorted(attrs(s.attributes)["unikernel.args.req_id"] for s in requests) \
        == requests_in(path, guest_image)
    by_id = {s.span_id: s for _, s in got}
    assert len(by_id) == len(got)
    children = [s for _, s in got if s.name == "checksum"]
    assert children
    for c in children:
        parent = by_id[c.parent_span_id]
        assert parent.name == "handle_request" and parent.trace_id == c.trace_id
        assert parent.start_time_unix_nano <= c.start_time_unix_nano <= c.end_time_unix_nano
    assert all(s.parent_span_id == b"" for s in requests)


@pytest.mark.parametrize("receiver", [2], indirect=True)
def test_a_receiver_that_fails_first_gets_everything_once_it_answers(
        recording: tuple[Path, int, int], receiver: Receiver) -> None:  # noqa: F811
    path, _, _ = recording
    result = undebug("trace", "export", str(path), "--otlp", receiver.url + "/v1/traces",
                     "--json")
    assert result.code == 0, result.stderr
    doc = result.json()
    statuses = [req is not None for _, _, req in receiver.requests]
    assert statuses[:2] == [False, False] and all(statuses[2:])
    assert doc["otlp"]["retries"] == 2  # the two refused requests, sent again
    assert doc["otlp"]["exported"] == doc["spans"] == len(receiver.spans())
    assert len({s.span_id for _, s in receiver.spans()}) == doc["spans"]  # none twice


def test_a_collector_that_never_answers_is_exit_1_with_the_undelivered_count(
        recording: tuple[Path, int, int]) -> None:  # noqa: F811
    path, _, _ = recording
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)  # accepts connections (the kernel does) and never answers
    try:
        port = silent.getsockname()[1]
        started = time.monotonic()
        result = undebug("trace", "export", str(path), "--otlp", f"http://127.0.0.1:{port}",
                         "--timeout", "3", "--json")
        took = time.monotonic() - started
    finally:
        silent.close()
    assert result.code == 1, result.stderr
    doc = result.json()
    assert doc["otlp"]["exported"] == 0 and doc["otlp"]["not_exported"] == doc["spans"] > 0
    assert took < 3 + 10, took  # the budget, plus start-up
    assert any(re.search(rf"{doc['spans']} span\(s\) were not delivered", w)
               for w in doc["warnings"])
    # and a port with nobody at all: refused, retried within the budget, exit 1
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    refused = undebug("trace", "export", str(path), "--otlp", f"http://127.0.0.1:{port}",
                      "--timeout", "2")
    assert refused.code == 1
    assert re.search(r"0 span\(s\) exported, (\d+) not exported", refused.stdout)


def test_spans_reach_a_real_otlp_grpc_receiver(recording: tuple[Path, int, int],  # noqa: F811
                                               guest_image: Path) -> None:
    """A grpcio server with the TraceService from opentelemetry-proto; the first call is
    refused UNAVAILABLE (retryable), the rest are kept."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    got: list[ExportTraceServiceRequest] = []
    calls: list[dict[str, str]] = []

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request: ExportTraceServiceRequest,
                   context: grpc.ServicerContext) -> ExportTraceServiceResponse:
            calls.append(dict(context.invocation_metadata()))
            if len(calls) == 1:
                context.abort(grpc.StatusCode.UNAVAILABLE, "not yet")
            got.append(request)
            return ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        path, _, _ = recording
        result = undebug("trace", "export", str(path), "--otlp", f"http://127.0.0.1:{port}",
                         "--protocol", "grpc", "--header", "x-tenant=ci", "--json")
    finally:
        server.stop(None)
    assert result.code == 0, result.stderr
    doc = result.json()
    spans = [s for req in got for rs in req.resource_spans for ss in rs.scope_spans
             for s in ss.spans]
    assert doc["otlp"]["exported"] == doc["spans"] == len(spans)
    assert doc["otlp"]["retries"] == 1 and len(calls) == len(got) + 1
    assert all(c.get("x-tenant") == "ci" for c in calls)
    services = {kv.value.string_value for req in got for rs in req.resource_spans
                for kv in rs.resource.attributes if kv.key == "service.name"}
    assert services == {guest_image.stem}
    assert sorted(attrs(s.attributes)["unikernel.args.req_id"] for s in spans
                  if s.name == "handle_request") == requests_in(path, guest_image)


@pytest.mark.parametrize("fail_metrics", [False, True])
def test_follow_streams_spans_while_the_guest_runs_and_ends_with_it(
        receiver: Receiver, guest_image: Path, fail_metrics: bool) -> None:
    """A live reference guest (QEMU, TCG): spans reach the receiver while the guest is
    still running, and the export ends by itself when the guest does, with every span it
    counted delivered."""
    import subprocess
    import sys

    from tests.conftest import wait_for_console

    name = "exp-follow"
    started = undebug("run", "-d", "--name", name, "--smp", "2", "--append",
                      "threads=4 run_for=60000", str(guest_image))
    assert started.code == 0, started.stderr
    receiver.fail_metrics = fail_metrics
    follower = None
    try:
        wait_for_console(name, "refguest: heartbeat")
        follower = subprocess.Popen([sys.executable, "-m", "undebug.cli", "trace", "export",
                                     name, "--otlp", receiver.url, "--follow", "--json"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not receiver.spans() and time.monotonic() < deadline:
            assert follower.poll() is None, follower.communicate()
            time.sleep(0.2)
        live = len(receiver.spans())
        assert live > 0  # sent while the guest runs: it has not been stopped
        time.sleep(3)
        assert len(receiver.spans()) > live  # and more keep coming
        # the heap metric comes with the guest's heap tracepoint (every 1024th allocation)
        while not fail_metrics and "unikernel.heap.used" not in receiver.metric_points() \
                and time.monotonic() < deadline + 60:
            time.sleep(0.5)
    finally:
        undebug("kill", name)
    assert follower is not None
    out, err = follower.communicate(timeout=60)  # the guest ended: so does the export
    assert follower.returncode == 0, err
    doc = json.loads(out)
    names = {s.name for _, s in receiver.spans()}
    assert {"handle_request", "checksum"} <= names
    assert doc["otlp"]["exported"] == len(receiver.spans()) == doc["spans"]
    assert doc["otlp"]["dropped"] == 0 and doc["otlp"]["not_exported"] == 0
    ids = [s.span_id for _, s in receiver.spans()]
    assert len(set(ids)) == len(ids)  # nothing sent twice
    if fail_metrics:  # a warning, not the exit code (0 above)
        assert doc["metrics"]["failed"] > 0 and doc["metrics"]["sent"] == 0
        assert any("metrics export(s)" in w for w in doc["warnings"])
        return
    # metrics beside the spans, once a second: events, their rate, drops (none), the heap
    points = receiver.metric_points()
    assert points["unikernel.trace.events"][-1] > 0
    assert max(points["unikernel.trace.event_rate"]) > 0
    assert points["unikernel.export.dropped"][-1] == 0
    assert 0 < points["unikernel.heap.used"][-1] < 128 << 20  # bytes in use, within its RAM
    assert doc["metrics"]["sent"] >= 3 and doc["metrics"]["failed"] == 0


def test_follow_sends_only_to_otlp(recording: tuple[Path, int, int],  # noqa: F811
                                   tmp_path: Path) -> None:
    result = undebug("trace", "export", str(recording[0]), "--follow", "--otlp-json",
                     str(tmp_path / "x.jsonl"))
    assert result.code == 2 and "--follow sends spans to --otlp" in result.stderr
    assert not (tmp_path / "x.jsonl").exists()


def test_a_collector_slower_than_the_guest_fills_the_live_queue_and_drops_are_counted() -> None:
    """OtlpWriter in live mode against a real socket that accepts and never answers: one
    request is being sent, LIVE_QUEUE wait, the rest are dropped, each counted once.
    (The spans are made here: the collector's slowness is what is tested.)"""
    from tracers.export.otlp import LIVE_QUEUE, OtlpWriter
    from tracers.export.spans import ExportSpan

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        writer = OtlpWriter({"service.name": "t"}, headers={}, timeout_s=0.2, chunk=1,
                            endpoint=f"http://127.0.0.1:{silent.getsockname()[1]}", live=True)
        total = LIVE_QUEUE + 10
        for k in range(total):
            writer.write([ExportSpan(bytes([1] * 16), (k + 1).to_bytes(8, "big"), None, "s",
                                     1, 2, {})])
        writer.close()
    finally:
        silent.close()
    d = writer.delivery
    assert d.dropped >= total - LIVE_QUEUE - 1 and d.dropped < total
    assert d.exported == 0 and d.not_exported + d.dropped == total


def test_run_otlp_starts_the_live_export_beside_the_guest_and_ps_shows_its_counts(
        receiver: Receiver, guest_image: Path) -> None:
    import os

    from tests.conftest import wait_for_console

    name = "exp-run-otlp"
    started = undebug("run", "-d", "--name", name, "--append", "threads=2 run_for=60000",
                      "--otlp", receiver.url, str(guest_image))
    assert started.code == 0, started.stderr
    try:
        wait_for_console(name, "refguest: heartbeat")
        deadline = time.monotonic() + 60
        export = None
        while time.monotonic() < deadline:
            [guest] = [g for g in undebug("ps", "--json").json()["guests"] if g["name"] == name]
            export = guest["export"]
            if export and export["exported"] > 0:
                break
            time.sleep(0.5)
        assert export and export["exported"] > 0, export
        assert export["dropped"] == 0 and export["endpoint"].endswith("/v1/traces")
        assert guest["state"] == "running"  # spans arrived while the guest runs
        assert len(receiver.spans()) >= export["exported"]
        pid = export["pid"]
        os.kill(pid, 0)  # its own process, alive
        text = undebug("ps").stdout
        assert f"{name}: trace export to {receiver.url}/v1/traces: " in text
    finally:
        undebug("kill", name)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # it ends with the guest
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the live export {pid} outlived its guest")


def test_run_ci_otlp_returns_once_the_live_export_sent_every_span_of_the_run(
        receiver: Receiver, guest_image: Path, tmp_path: Path) -> None:
    """What arrived live is what the recording of the same run holds, when run --ci
    returns (it waits for the export it started)."""
    rec = tmp_path / "ci.utrace"
    run = undebug("run", "--ci", "--name", "exp-ci-otlp", "--append", "threads=2 run_for=1500",
                  "--trace-file", str(rec), "--otlp", receiver.url, str(guest_image),
                  timeout=120)
    assert run.code == 0, run.stdout + run.stderr
    live = sorted(s.span_id.hex() for _, s in receiver.spans())
    out = tmp_path / "after.jsonl"
    assert undebug("trace", "export", str(rec), "--otlp-json", str(out)).code == 0
    after = sorted(s["spanId"] for line in out.read_text().splitlines()
                   for rs in json.loads(line)["resourceSpans"] for ss in rs["scopeSpans"]
                   for s in ss["spans"])
    assert live and live == after


def test_a_request_that_raises_in_the_sender_thread_is_counted_and_close_returns() -> None:
    """The sender thread posts while the next request is encoded (at most SEND_AHEAD
    ahead): one that raises must not leave the writer waiting on a dead thread."""
    from tracers.export.otlp import SEND_AHEAD, OtlpWriter

    unused = socket.socket()  # a port of ours, never contacted: the attempts raise first
    unused.bind(("127.0.0.1", 0))
    writer = OtlpWriter({"service.name": "t"}, headers={}, timeout_s=5,
                        endpoint=f"http://127.0.0.1:{unused.getsockname()[1]}/v1/traces")
    unused.close()

    def broken() -> bool:
        raise ValueError("encoder broke")

    for _ in range(SEND_AHEAD + 3):  # more than the queue holds: put() waits on the thread
        writer._submit(broken, 7)
    writer.close()
    d = writer.delivery
    assert d.not_exported == 7 * (SEND_AHEAD + 3) and d.exported == 0
    assert d.last_error == "ValueError: encoder broke"
