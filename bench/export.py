"""trace export: OTLP/HTTP spans/s to a loopback receiver vs the naive SDK path, JSON and
Perfetto writers' events/s, peak memory.

The recording is synthetic but decodes as the reference guest's (its build-id, its
tracepoint ids from build/refguest.elf): per request, ``handle_request`` begin, a
``heartbeat`` event, ``checksum`` begin, an event, ``checksum`` end, an event,
``handle_request`` end, an event: 8 events and 2 spans, so 1 M events make 250 k spans,
on 2 CPUs and 8 threads. Every measure is a fresh ``undebug trace export`` process (wall
time and peak RSS from ``os.wait4``), interleaved with its baseline in the same run:

* ``--otlp`` to a receiver on loopback that answers 200 without decoding (it decodes
  every 16th request with opentelemetry-proto to check it is a real
  ExportTraceServiceRequest) vs the naive SDK path in its own process: a tracer with
  ``BatchSpanProcessor(OTLPSpanExporter)`` to the same receiver, ``start_span(start_time)``
  / ``end(end_time)`` per span with the same attributes (no decoding, no matching: the
  conversion undebug does is the difference); it also reports how many spans the
  processor dropped (its queue holds 2048).
* ``--otlp-json`` and ``--jaeger-json``: events of the recording per second.
* ``--perfetto`` vs writing the same number of empty packets with the same builder.

Memory: ``--otlp-json`` and ``--otlp`` of a recording of ``UNDEBUG_BENCH_EXPORT_BIG``
events (default 10,000,000; 0 skips it), peak RSS.

Rates are given per wall second and per CPU second of the export process (user + system):
on a loaded machine (the load average is recorded) the second is the one that holds up;
the ratio to the naive SDK path is of the same run. Every process runs in the clean
environment of bench/threads.py (bytecode cached, as an installed undebug has it: this
machine's PYTHONDONTWRITEBYTECODE would compile every module from source each time).

``UNDEBUG_BENCH_EXPORT_EVENTS`` (default 1,000,000) sets the recording's size.
"""

from __future__ import annotations

import http.server
import json
import os
import statistics
import struct
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from bench.trace_stats import measured
from tracers.decode import MAGIC, record_dtype
from tracers.metadata import KIND_SPAN_BEGIN, KIND_SPAN_END, load_tracepoints

EVENTS = int(os.environ.get("UNDEBUG_BENCH_EXPORT_EVENTS", 1_000_000))
BIG = int(os.environ.get("UNDEBUG_BENCH_EXPORT_BIG", 10_000_000))
ROUNDS = 3
HZ, BOOT = 3_000_000_000, 2_000_000_000_000
ELF = Path(__file__).resolve().parents[1] / "build" / "refguest.elf"
BATCH = 4096  # records per CPU batch, as the stub sends them


def write_recording(path: Path, events: int) -> int:
    """The recording (with .anchors and .origin); returns its number of spans."""
    from tracers.origin import write_origin

    tps = load_tracepoints(ELF)
    ids = {(tp.name, tp.kind): tp.id for tp in tps.by_id.values()}
    pattern = [ids[("handle_request", KIND_SPAN_BEGIN)], ids[("heartbeat", 1)],
               ids[("checksum", KIND_SPAN_BEGIN)], ids[("heartbeat", 1)],
               ids[("checksum", KIND_SPAN_END)], ids[("heartbeat", 1)],
               ids[("handle_request", KIND_SPAN_END)], ids[("heartbeat", 1)]]
    build_id = bytes.fromhex(tps.build_id or "")
    head = struct.pack("<QHHIQQHBBHH32sQ", MAGIC, 1, 80, 1, HZ, BOOT, 2, len(build_id), 1,
                       16, 16, build_id.ljust(32, b"\0"), BOOT)
    dtype = record_dtype(2)
    per_cpu = events // 2 // BATCH * BATCH or BATCH
    with open(path, "wb") as f:
        f.write(head)
        for start in range(0, per_cpu, BATCH):
            for cpu in (0, 1):
                e = np.zeros(BATCH, dtype)
                index = np.arange(start, start + BATCH, dtype=np.uint64)
                e["tsc"] = BOOT + 1000 * index + 7 * cpu
                e["id"] = np.array(pattern, np.uint16)[index % 8]
                e["cpu"], e["nslots"] = cpu, 2
                e["tid"] = 8 + cpu * 4 + (index // 64) % 4  # 4 threads a CPU, 8 requests each
                e["seq"] = index & 0xFFFF
                e["w"][:, 0] = index // 8  # req_id
                e["w"][:, 1] = index
                f.write(e.tobytes())
    path.with_name(path.name + ".anchors").write_text(
        json.dumps({"offset": 0, "received_unix_ns": 1_800_000_000_000_000_000}) + "\n")
    write_origin(path, elf=ELF, image=ELF, session="bench")
    return per_cpu * 2 // 4


class Receiver(http.server.ThreadingHTTPServer):
    """Answers every POST with 200 and an empty body; decodes every 16th."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests = self.bytes = self.decoded_spans = self.decoded = 0
        self.lock = threading.Lock()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver
    protocol_version = "HTTP/1.1"  # keep-alive, as a collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.requests += 1
            self.server.bytes += len(body)
            sample = self.server.requests % 16 == 1
        if sample:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceRequest,
            )

            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            n = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
            with self.server.lock:
                self.server.decoded += 1
                self.server.decoded_spans += n
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


NAIVE = r"""
import sys, time
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
n, url = int(sys.argv[1]), sys.argv[2]
provider = TracerProvider(resource=Resource({"service.name": "refguest"}))
processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=url))
provider.add_span_processor(processor)
tracer = provider.get_tracer("naive")
t = 1_800_000_000_000_000_000
for i in range(n // 2):
    outer = tracer.start_span("handle_request", start_time=t, attributes={
        "thread.id": 8, "cpu.logical_number": 0, "code.file.path": "main.c",
        "code.line.number": 169, "unikernel.args.req_id": i})
    outer.add_event("heartbeat", {"uptime_ms": i, "requests": i}, timestamp=t + 1)
    from opentelemetry import trace
    ctx = trace.set_span_in_context(outer)
    inner = tracer.start_span("checksum", context=ctx, start_time=t + 2, attributes={
        "thread.id": 8, "cpu.logical_number": 0, "code.file.path": "main.c",
        "code.line.number": 185, "unikernel.args.w->len": 512})
    inner.add_event("heartbeat", {"uptime_ms": i, "requests": i}, timestamp=t + 3)
    inner.end(end_time=t + 4)
    outer.add_event("heartbeat", {"uptime_ms": i, "requests": i}, timestamp=t + 5)
    outer.end(end_time=t + 6)
    t += 1000
provider.shutdown()
"""


_ENV: dict[str, str] = {}  # the clean environment (run() sets it)


def _run(command: list[str]) -> dict[str, Any]:
    return measured(command, env=_ENV or None)


def _export(path: Path, *args: str) -> dict[str, Any]:
    result = _run([sys.executable, "-m", "undebug.cli", "trace", "export", str(path),
                   *args, "--json"])
    result["doc"] = json.loads(result.pop("stdout"))
    return result


PERFETTO_EMPTY = r"""
import sys
from perfetto.trace_builder.proto_builder import StreamingTraceProtoBuilder
n = int(sys.argv[1])
with open(sys.argv[2], "wb") as f:
    b = StreamingTraceProtoBuilder(f)
    for i in range(n):
        p = b.create_packet()
        p.trusted_packet_sequence_id = 1
        b.write_packet(p)
"""


def run() -> dict[str, Any]:
    load = [round(x, 1) for x in os.getloadavg()]
    samples: dict[str, list[dict[str, Any]]] = {k: [] for k in (
        "otlp", "naive_sdk", "otlp_json", "jaeger_json", "perfetto", "perfetto_empty")}
    from bench.threads import clean_env

    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        _ENV.update(clean_env(dict(os.environ), Path(tmp)))
        _run([sys.executable, "-m", "undebug.cli", "trace", "export", "--help"])  # bytecode
        rec = Path(tmp) / "rec.utrace"
        spans = write_recording(rec, EVENTS)
        events = spans * 4
        server = Receiver()
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
        try:
            for _ in range(ROUNDS):
                before = server.decoded_spans, server.decoded, server.requests
                r = _export(rec, "--otlp", url)
                r["requests"] = server.requests - before[2]
                assert r["doc"]["otlp"]["exported"] == spans, r["doc"]["otlp"]
                r["spans_per_s"] = spans / r["wall_s"]
                r["spans_per_cpu_s"] = spans / r["cpu_s"]
                r["sampled_requests"] = server.decoded - before[1]
                r["sampled_spans"] = server.decoded_spans - before[0]
                samples["otlp"].append(r)
                got = server.decoded_spans
                n = _run([sys.executable, "-c", NAIVE, str(spans), url])
                n["spans_per_s"] = spans / n["wall_s"]
                n["spans_per_cpu_s"] = spans / n["cpu_s"]
                n["sampled_spans"] = server.decoded_spans - got
                n.pop("stdout")
                samples["naive_sdk"].append(n)
                for fmt in ("otlp-json", "jaeger-json", "perfetto"):
                    r = _export(rec, f"--{fmt}", str(Path(tmp) / f"out.{fmt}"))
                    r["events_per_s"] = events / r["wall_s"]
                    r["events_per_cpu_s"] = events / r["cpu_s"]
                    samples[fmt.replace("-", "_")].append(r)
                packets = 2 + 8 + 2 * spans + 2 * spans  # as --perfetto writes them
                e = _run([sys.executable, "-c", PERFETTO_EMPTY, str(packets),
                          str(Path(tmp) / "empty.pftrace")])
                e.pop("stdout")
                samples["perfetto_empty"].append(e)
            if BIG:
                rec.unlink()
                big = Path(tmp) / "big.utrace"
                big_spans = write_recording(big, BIG)
                for args in (("--otlp-json", str(Path(tmp) / "big.jsonl")), ("--otlp", url)):
                    r = _export(big, *args)
                    r["events"], r["spans"] = big_spans * 4, big_spans
                    samples.setdefault("big_" + args[0].strip("-").replace("-", "_"), []).append(r)
                    (Path(tmp) / "big.jsonl").unlink(missing_ok=True)
        finally:
            server.shutdown()
            server.server_close()
    for rows in samples.values():
        for r in rows:
            r.pop("doc", None)

    def med(key: str, field: str) -> float:
        return statistics.median(r[field] for r in samples[key])

    summary = {
        "python_env": "clean (bytecode cached, bench/threads.py clean_env)",
        "events": events, "spans": spans, "load_average": load, "load_average_after":
        [round(x, 1) for x in os.getloadavg()],
        "otlp_spans_per_s": round(med("otlp", "spans_per_s")),
        "naive_sdk_spans_per_s": round(med("naive_sdk", "spans_per_s")),
        "otlp_vs_naive_sdk": round(med("otlp", "spans_per_s")
                                   / med("naive_sdk", "spans_per_s"), 2),
        "otlp_spans_per_cpu_s": round(med("otlp", "spans_per_cpu_s")),
        "naive_sdk_spans_per_cpu_s": round(med("naive_sdk", "spans_per_cpu_s")),
        "otlp_json_events_per_cpu_s": round(med("otlp_json", "events_per_cpu_s")),
        "jaeger_json_events_per_cpu_s": round(med("jaeger_json", "events_per_cpu_s")),
        "otlp_json_events_per_s": round(med("otlp_json", "events_per_s")),
        "jaeger_json_events_per_s": round(med("jaeger_json", "events_per_s")),
        "perfetto_events_per_s": round(med("perfetto", "events_per_s")),
        "perfetto_vs_empty_packets": round(med("perfetto", "wall_s")
                                           / med("perfetto_empty", "wall_s"), 2),
        "peak_rss_mib": {k: round(med(k, "rss_mib")) for k in samples},
    }
    return {"summary": summary, "samples": samples}
