"""``undebug trace export``: a recording's spans to files other tools open.

The spans come from tracers/export/spans.py (matched per thread, parents by nesting,
deterministic ids), the encodings from tracers/export/; this module opens the source and
the outputs, streams the batches through, and reports the counts. Exporting needs the
tracepoint names: with no ELF at all (no ``--elf``, none beside the file in
``FILE.origin``, none remembered by the guest's session) it is exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from undebug.errors import UsageError
from undebug.output import Report
from undebug.text import escape

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tracers.export.attributes import AttrValue
    from tracers.export.columns import SpanColumns
    from tracers.export.metrics import LiveMetrics
    from tracers.export.spans import ExportSpan
    from tracers.metadata import Tracepoints
    from tracers.records import Decoded, Session
    from undebug.commands.trace import _Source

__all__ = ["add_export_arguments", "export", "guest_os"]


def add_export_arguments(q: argparse.ArgumentParser) -> None:
    q.add_argument("--otlp-json", type=Path, metavar="FILE",
                   help="write OTLP/JSON: one ExportTraceServiceRequest per line, hex ids")
    q.add_argument("--jaeger-json", type=Path, metavar="FILE",
                   help="write Jaeger JSON ({\"data\": [...]}) that Jaeger's UI opens")
    q.add_argument("--otlp", nargs="?", const="", metavar="URL",
                   help="send the spans over OTLP/HTTP (protobuf) to URL (a URL without a "
                   "path gets /v1/traces; no URL: $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "
                   "$OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318)")
    q.add_argument("--protocol", choices=("http/protobuf", "grpc"),
                   default=os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                   or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf",
                   help="--otlp: http/protobuf (port 4318) or grpc (4317) (default: "
                   "$OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, $OTEL_EXPORTER_OTLP_PROTOCOL, "
                   "else http/protobuf)")
    q.add_argument("--insecure", action="store_true", default=None,
                   help="--otlp with grpc: no TLS (default: TLS unless the URL is http://)")
    q.add_argument("--header", action="append", default=[], metavar="K=V", type=_header,
                   help="an HTTP header for --otlp (repeatable; added to "
                   "$OTEL_EXPORTER_OTLP_HEADERS)")
    q.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="--otlp: give up retrying after S seconds in all (default 60); what "
                   "was not delivered by then is counted and the exit code is 1")
    q.add_argument("--perfetto", type=Path, metavar="FILE",
                   help="write a Perfetto trace (protobuf TrackEvent): a track per guest "
                   "thread, spans as slices, span events as instants")
    q.add_argument("--perfetto-json", type=Path, metavar="FILE",
                   help="write Perfetto's legacy JSON (Chrome trace events): spans as complete "
                   "events, span events as instants (a fallback: --perfetto is the format)")
    q.add_argument("--filter", metavar="NAME", action="append",
                   help="only spans whose name matches the glob NAME (repeatable); their "
                   "selected descendants become their children")
    q.add_argument("--since", type=float, metavar="S",
                   help="only spans that began at or after S seconds since boot")
    q.add_argument("--until", type=float, metavar="S",
                   help="only spans that began at or before S seconds since boot")
    q.add_argument("-f", "--follow", action="store_true",
                   help="with --otlp: keep exporting while the guest runs (the recording "
                   "grows), until it ends or Ctrl-C; spans go out within about a second of "
                   "ending, through a queue of 16 requests (what a slow collector leaves no "
                   "room for is dropped and counted)")
    q.add_argument("--force", action="store_true",
                   help="go on when the ELF's build-id is not the recording's: spans are "
                   "made with this ELF's tracepoints anyway")
    q.add_argument("--service-name", metavar="NAME",
                   help="the resource's service.name (default: $OTEL_SERVICE_NAME, else the "
                   "image's name)")


def _header(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"not K=V: {text!r}")
    return key.strip(), value.strip()


class _Writer(Protocol):
    def write(self, spans: list[ExportSpan]) -> None: ...
    def write_columns(self, columns: SpanColumns) -> None: ...
    def close(self) -> None: ...


@dataclass
class _Output:
    format: str
    file: Path | None  # None: --otlp
    stream: IO[bytes] | None
    writer: _Writer | None = None


def _open_output(path: Path, what: str) -> IO[bytes]:
    """The file, 0600 (it holds guest data, as the recording does)."""
    if path.is_dir():
        raise UsageError(f"--{what} {path} is a directory", hint="name a file to write")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot write --{what} {path}: {exc.strerror}") from None
    # a small buffer: the JSON writers write ~0.5 MiB at a time, which goes past it
    # straight to the file instead of being copied into it first
    return os.fdopen(fd, "wb", buffering=1 << 16)


@dataclass(frozen=True)
class _Identity:
    image: str | None  # the image's name (no directory, no suffix)
    instance: str  # service.instance.id
    host: str | None
    traceparent: str | None  # run --traceparent
    host_arch: str | None = None
    process: dict[str, AttrValue] | None = None  # QEMU's process.* (a live guest only)
    os_name: str | None = None  # the OS provider's name, as recorded


def _identity(args: argparse.Namespace) -> _Identity:
    """Who recorded: from the recording's FILE.origin (a guest's own recording has one
    too), else the session's record, else the file's own name."""
    from tracers.origin import read_origin
    from undebug.commands.trace import _is_file

    if _is_file(args.source):
        path, instance = Path(args.source), Path(args.source).name
    else:
        from undebug.session.store import SessionDir

        path, instance = SessionDir.named(args.source).trace_file, args.source
    origin = read_origin(path)
    process = None if _is_file(args.source) else _qemu_process(args.source)
    if origin is None:
        return _Identity(None, instance, None, None, process=process)
    return _Identity(Path(origin.image).stem if origin.image else None,
                     origin.session or instance, origin.host, origin.traceparent,
                     origin.host_arch, process, origin.os_name)


def _qemu_process(name: str) -> dict[str, AttrValue] | None:
    """The semantic conventions' process.* of a live guest's QEMU (from /proc), or None
    (a recording does not say which QEMU made it)."""
    from undebug.errors import UndebugError
    from undebug.session.client import live_status
    from undebug.session.store import SessionDir

    try:
        pid = live_status(SessionDir.named(name)).qemu_pid
    except (UndebugError, OSError):
        return None
    if pid is None:
        return None
    out: dict[str, AttrValue] = {"process.pid": pid}
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        out["process.executable.path"] = exe
        out["process.executable.name"] = Path(exe).name
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            out["process.command"] = f.read(4096).split(b"\0")[0].decode(errors="replace")
    except OSError:
        pass  # gone, or not ours to read: the pid alone
    return out


def guest_os(elf: str | None) -> str | None:
    """The unikernel's OS: the name of the provider its ELF's symbols select."""
    from undebug.elf import ElfFile
    from undebug.errors import UndebugError
    from undebug.os import provider_class

    if elf is None:
        return None
    try:
        provider = provider_class(ElfFile(Path(elf)))
    except (UndebugError, OSError):
        return None
    return provider.name if provider is not None else None


def _writers(outputs: list[_Output], resource: dict[str, AttrValue],
             args: argparse.Namespace) -> None:
    from tracers.export.jaeger_json import JaegerJsonWriter
    from tracers.export.otlp import OtlpWriter
    from tracers.export.otlp_json import OtlpJsonWriter
    from tracers.export.perfetto import PerfettoWriter
    from tracers.export.perfetto_json import PerfettoJsonWriter
    from undebug.commands.live_export import progress

    for out in outputs:
        stream = out.stream
        if stream is None:
            out.writer = OtlpWriter(resource, endpoint=args.otlp or None,
                                    headers=dict(args.header), timeout_s=args.timeout,
                                    protocol=args.protocol, insecure=args.insecure,
                                    live=args.follow, progress=progress(args))
        elif out.format == "perfetto":
            out.writer = PerfettoWriter(stream, resource)
        elif out.format == "perfetto-json":
            out.writer = PerfettoJsonWriter(stream, resource)
        elif out.format == "otlp-json":
            out.writer = OtlpJsonWriter(stream, resource)
        else:
            out.writer = JaegerJsonWriter(stream, resource)


def _metrics(outputs: list[_Output], resource: dict[str, AttrValue], args: argparse.Namespace,
             tracepoints: Tracepoints | None) -> LiveMetrics | None:
    """Following over OTLP/HTTP: the metrics beside the spans (tracers/export/metrics.py)."""
    from tracers.export.metrics import LiveMetrics
    from tracers.export.otlp import OtlpWriter

    writer = next((o.writer for o in outputs if isinstance(o.writer, OtlpWriter)), None)
    if not args.follow or writer is None or args.protocol != "http/protobuf" \
            or tracepoints is None:
        return None
    return LiveMetrics(resource, writer.delivery.endpoint, dict(args.header), tracepoints,
                       args.timeout)


def _dropped(outputs: list[_Output]) -> int:
    from tracers.export.otlp import OtlpWriter

    return sum(o.writer.delivery.dropped for o in outputs if isinstance(o.writer, OtlpWriter))


def _batches(source: _Source, follow: bool) -> Iterator[Decoded]:
    """The recording's batches; followed, until the guest ends or Ctrl-C (then the spans
    still open are exported as unterminated, as at the end of a recording)."""
    from undebug.commands.trace import SHOW_WINDOW, STATS_WINDOW

    try:
        yield from source.batches(SHOW_WINDOW if follow else STATS_WINDOW, follow=follow)
    except KeyboardInterrupt:
        if not follow:
            raise


def _deliver(outputs: list[_Output], parts: list[ExportSpan | SpanColumns]) -> None:
    """Each writer gets the columns as columns and the objects in lists, in order."""
    from tracers.export.columns import SpanColumns

    objects: list[ExportSpan] = []
    for part in [*parts, None]:
        if isinstance(part, SpanColumns) or part is None:
            for out in outputs:
                if out.writer is not None:
                    if objects:
                        out.writer.write(objects)
                    if part is not None:
                        out.writer.write_columns(part)
            objects = []
        else:
            objects.append(part)


def export(args: argparse.Namespace, source: _Source) -> Report:
    """Stream ``source``'s spans to every output the user named."""
    from tracers.export.metrics import metrics_url
    from tracers.export.otlp import LIVE_QUEUE, PROTOCOLS, OtlpWriter
    from tracers.export.resource import resource_attributes
    from tracers.export.select import Selection
    from tracers.export.spans import SpanBuilder
    from tracers.model import TraceModel
    from tracers.report import damage_warnings

    wanted = [("otlp-json", args.otlp_json), ("jaeger-json", args.jaeger_json),
              ("perfetto", args.perfetto), ("perfetto-json", args.perfetto_json)]
    if not any(path for _, path in wanted) and args.otlp is None:
        source.close()
        raise UsageError("trace export needs an output", hint="add --otlp URL, --otlp-json "
                         "FILE, --jaeger-json FILE, --perfetto FILE or --perfetto-json FILE")
    if args.protocol not in PROTOCOLS:  # from the environment: choices= does not check it
        source.close()
        raise UsageError(f"OTLP protocol {args.protocol!r} is not supported",
                         hint="use http/protobuf or grpc (--protocol)")
    if args.follow and (args.otlp is None or any(path for _, path in wanted)):
        source.close()
        raise UsageError("--follow sends spans to --otlp as they end; files are written "
                         "from a recording", hint="use --otlp URL alone with --follow")
    if args.timeout <= 0:
        source.close()
        raise UsageError(f"--timeout {args.timeout:g}: must be more than 0 seconds")
    if source.all_tracepoints is None:
        source.close()
        raise UsageError(f"{source.label}: no ELF to name the tracepoints with, so no spans "
                         "can be made", hint="pass the guest's ELF with --elf (a recording "
                         "written by run --trace-file or trace record names it in "
                         "FILE.origin)")
    who = _identity(args)
    # as recorded (FILE.origin), else as the ELF with the tracepoints says
    os_name = who.os_name or guest_os(source.all_tracepoints.source or None)

    def resource_of(sessions: list[Session]) -> dict[str, AttrValue]:
        return resource_attributes(image=who.image, instance=who.instance, sessions=sessions,
                                   service_name=args.service_name, host=who.host,
                                   host_arch=who.host_arch, os_name=os_name,
                                   extra=who.process)

    outputs: list[_Output] = []
    builder: SpanBuilder | None = None
    resource: dict[str, AttrValue] | None = None
    metrics: LiveMetrics | None = None
    try:
        for fmt, path in wanted:
            if path is not None:
                outputs.append(_Output(fmt, path, _open_output(path, fmt)))
        if args.otlp is not None:
            outputs.append(_Output("otlp", None, None))
        for batch in _batches(source, args.follow):
            source.warnings += batch.warnings
            if builder is None:
                assert source.tracepoints is not None  # (another build: refused, or --force)
                builder = SpanBuilder(source.tracepoints, traceparent=who.traceparent,
                                      select=Selection.of(args.filter, args.since,
                                                          args.until))
            if batch.sessions and resource is None:
                resource = resource_of(list(batch.sessions))
                _writers(outputs, resource, args)
                metrics = _metrics(outputs, resource, args, source.tracepoints)
            parts = builder.feed_parts(TraceModel(batch, source.tracepoints,
                                                  source.anchors(batch.sessions)))
            _deliver(outputs, parts)
            if metrics is not None:
                metrics.feed(batch, _dropped(outputs))
        stream = source.summary()
        assert builder is not None
        rest = builder.finish()
        if resource is None:  # a stream with no record: the files still parse
            resource = resource_of(stream.sessions)
            _writers(outputs, resource, args)
        for out in outputs:
            assert out.writer is not None
            out.writer.write(rest)
            out.writer.close()
        if metrics is not None:
            metrics.dropped = _dropped(outputs)
            metrics.close()
    except BaseException as exc:
        for out in outputs:  # no half-written file left to be taken for a whole one
            if out.stream is not None:
                with contextlib.suppress(OSError):
                    out.stream.close()
                out.file.unlink(missing_ok=True)  # type: ignore[union-attr]
        if isinstance(exc, OSError):
            raise UsageError(f"cannot write the export: {exc.strerror or exc}") from None
        raise
    finally:
        source.close()
        for out in outputs:
            if out.stream is not None:
                out.stream.close()
    counts = builder.counts
    warnings = source.warnings + damage_warnings(stream)
    if counts.unanchored_sessions:
        warnings.append(f"session(s) {', '.join(map(str, counts.unanchored_sessions))} have "
                        "no wall-clock anchor (FILE.anchors): their spans are dated from "
                        "the Unix epoch by time since boot")
    delivery = next((o.writer.delivery for o in outputs if isinstance(o.writer, OtlpWriter)),
                    None)
    if metrics is not None and metrics.failed:  # a warning, never the exit code
        warnings.append(f"{metrics.failed} of {metrics.failed + metrics.sent} metrics "
                        f"export(s) to {metrics_url(delivery.endpoint if delivery else '')} "
                        "failed")
    data = {"source": source.label, **asdict(counts),
            "service_name": resource["service.name"] if resource else None,
            "outputs": [{"format": o.format, "file": str(o.file)} for o in outputs
                        if o.file is not None],
            "otlp": asdict(delivery) if delivery else None,
            "metrics": None if metrics is None else {"sent": metrics.sent,
                                                     "failed": metrics.failed}}
    lines = [f"{counts.spans} span(s) in {counts.traces} trace(s) "
             f"({counts.unterminated} unterminated, {counts.exceptions} exception(s), "
             f"{counts.span_events} span event(s); {counts.outside_spans} event(s) outside "
             f"any span not exported) from {escape(source.label)}"]
    lines += [f"wrote {o.format} {escape(str(o.file))}" for o in outputs if o.file is not None]
    failed = False
    if delivery is not None:
        dropped = f", {delivery.dropped} dropped (the send queue was full)" \
            if args.follow else ""
        lines.append(f"OTLP {escape(delivery.endpoint)}: {delivery.exported} span(s) "
                     f"exported, {delivery.not_exported} not exported{dropped} "
                     f"({delivery.attempts} request(s), {delivery.retries} retried)")
        if delivery.dropped:
            failed = True
            warnings.append(f"{delivery.dropped} span(s) were dropped: the collector took "
                            f"them more slowly than the guest made them (a queue of "
                            f"{LIVE_QUEUE} requests); export the recording again to send them")
        if delivery.not_exported:
            failed = True
            warnings.append(f"{delivery.not_exported} span(s) were not delivered to "
                            f"{delivery.endpoint} within --timeout {args.timeout:g} s: "
                            f"{delivery.last_error}; the recording is untouched, run the "
                            "export again (the same span ids are sent)")
    return Report(data=data, warnings=warnings, render=lambda: lines,
                  exit_code=1 if failed else 0)
