"""``undebug trace export``: a recording's spans to files other tools open.

The spans come from tracers/export/spans.py (matched per thread, parents by nesting,
deterministic ids), the encodings from tracers/export/; this module opens the source and
the outputs, streams the batches through, and reports the counts. Exporting needs the
tracepoint names: with no ELF at all (no ``--elf``, none beside the file in
``FILE.origin``, none remembered by the guest's session) it is exit 2.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from undebug.errors import UsageError
from undebug.output import Report
from undebug.text import escape

if TYPE_CHECKING:
    from tracers.export.spans import AttrValue, ExportSpan
    from undebug.commands.trace import _Source

__all__ = ["add_export_arguments", "export"]


def add_export_arguments(q: argparse.ArgumentParser) -> None:
    q.add_argument("--otlp-json", type=Path, metavar="FILE",
                   help="write OTLP/JSON: one ExportTraceServiceRequest per line, hex ids")
    q.add_argument("--jaeger-json", type=Path, metavar="FILE",
                   help="write Jaeger JSON ({\"data\": [...]}) that Jaeger's UI opens")
    q.add_argument("--service-name", metavar="NAME",
                   help="the resource's service.name (default: $OTEL_SERVICE_NAME, else the "
                   "image's name)")


class _Writer(Protocol):
    def write(self, spans: list[ExportSpan]) -> None: ...
    def close(self) -> None: ...


@dataclass
class _Output:
    format: str
    file: Path
    stream: IO[str]
    writer: _Writer | None = None


def _open_output(path: Path, what: str) -> IO[str]:
    if path.is_dir():
        raise UsageError(f"--{what} {path} is a directory", hint="name a file to write")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot write --{what} {path}: {exc.strerror}") from None
    return os.fdopen(fd, "w", buffering=1 << 20)


def _identity(args: argparse.Namespace) -> tuple[str | None, str, str | None]:
    """(image name, instance id, host): from FILE.origin for a file, from the session
    for a guest's name, else the file's own name."""
    from undebug.commands.trace import _is_file

    if _is_file(args.source):
        from tracers.origin import read_origin

        origin = read_origin(Path(args.source))
        image = origin.image if origin else None
        instance = origin.session if origin and origin.session else Path(args.source).name
        return (Path(image).stem if image else None), instance, origin.host if origin else None
    from undebug.session.replies import recorded_status
    from undebug.session.store import SessionDir

    status = recorded_status(SessionDir.named(args.source))
    import socket

    return (Path(status.image).stem if status.image else None), args.source, \
        socket.gethostname()


def _writers(outputs: list[_Output], resource: dict[str, AttrValue]) -> None:
    from tracers.export.jaeger_json import JaegerJsonWriter
    from tracers.export.otlp_json import OtlpJsonWriter

    for out in outputs:
        out.writer = OtlpJsonWriter(out.stream, resource) if out.format == "otlp-json" \
            else JaegerJsonWriter(out.stream, resource)


def export(args: argparse.Namespace, source: _Source) -> Report:
    """Stream ``source``'s spans to every output the user named."""
    from tracers.export.resource import resource_attributes
    from tracers.export.spans import SpanBuilder
    from tracers.model import TraceModel
    from tracers.report import damage_warnings
    from undebug.commands.trace import STATS_WINDOW

    wanted = [("otlp-json", args.otlp_json), ("jaeger-json", args.jaeger_json)]
    if not any(path for _, path in wanted):
        source.close()
        raise UsageError("trace export needs an output", hint="add --otlp-json FILE or "
                         "--jaeger-json FILE")
    if source.all_tracepoints is None:
        source.close()
        raise UsageError(f"{source.label}: no ELF to name the tracepoints with, so no spans "
                         "can be made", hint="pass the guest's ELF with --elf (a recording "
                         "written by run --trace-file or trace record names it in "
                         "FILE.origin)")
    image, instance, host = _identity(args)
    outputs: list[_Output] = []
    builder: SpanBuilder | None = None
    resource: dict[str, AttrValue] | None = None
    try:
        for fmt, path in wanted:
            if path is not None:
                outputs.append(_Output(fmt, path, _open_output(path, fmt)))
        for batch in source.batches(STATS_WINDOW):
            source.warnings += batch.warnings
            if builder is None:
                if source.tracepoints is None:
                    raise UsageError(f"{source.label}: {'; '.join(source.first_notes)}",
                                     hint="pass the ELF of the build that was recorded "
                                     "with --elf")
                builder = SpanBuilder(source.tracepoints)
            if batch.sessions and resource is None:
                resource = resource_attributes(image=image, instance=instance,
                                               sessions=list(batch.sessions),
                                               service_name=args.service_name, host=host)
                _writers(outputs, resource)
            spans = builder.feed(TraceModel(batch, source.tracepoints,
                                            source.anchors(batch.sessions)))
            for out in outputs:
                if out.writer is not None:
                    out.writer.write(spans)
        stream = source.summary()
        assert builder is not None
        rest = builder.finish()
        if resource is None:  # a stream with no record: the files still parse
            resource = resource_attributes(image=image, instance=instance,
                                           sessions=stream.sessions,
                                           service_name=args.service_name, host=host)
            _writers(outputs, resource)
        for out in outputs:
            assert out.writer is not None
            out.writer.write(rest)
            out.writer.close()
    finally:
        source.close()
        for out in outputs:
            out.stream.close()
    counts = builder.counts
    warnings = source.warnings + damage_warnings(stream)
    if counts.unanchored_sessions:
        warnings.append(f"session(s) {', '.join(map(str, counts.unanchored_sessions))} have "
                        "no wall-clock anchor (FILE.anchors): their spans are dated from "
                        "the Unix epoch by time since boot")
    data = {"source": source.label, **asdict(counts),
            "service_name": resource["service.name"] if resource else None,
            "outputs": [{"format": o.format, "file": str(o.file)} for o in outputs]}
    return Report(data=data, warnings=warnings, render=lambda: [
        f"exported {counts.spans} span(s) in {counts.traces} trace(s) "
        f"({counts.unterminated} unterminated, {counts.exceptions} exception(s), "
        f"{counts.span_events} span event(s); {counts.outside_spans} event(s) outside any "
        f"span not exported) from {escape(source.label)} to "
        + ", ".join(f"{o.format} {escape(str(o.file))}" for o in outputs)])
