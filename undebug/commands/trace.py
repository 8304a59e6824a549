"""``undebug trace record|show|stats``: a guest's trace stream (tracers/FORMAT.md).

``SOURCE`` is a recorded file (a path that exists) or a live guest's name, whose stream
its supervisor records in the session directory as it arrives. Names and arguments come
from the ELF's ``undebug_tracepoints`` section, only when its build-id is the stream's.
A Unikraft guest's own trace buffer (tracers/unikraft/) is read from its memory with
``--flight-recorder`` when its ELF has no undebug stub, and instead of an empty recording.
Guest text (thread names, panic and log messages, tracepoint names) is escaped. What
``show`` and ``stats`` print is made in tracers/report.py; this module parses arguments,
opens the source and does the I/O.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from undebug.commands import command
from undebug.errors import UsageError
from undebug.output import SCHEMA, Report
from undebug.text import escape

if TYPE_CHECKING:
    from tracers.channel import FileChannel
    from tracers.decode import Decoded, Session, StreamDecoder
    from tracers.metadata import Tracepoints
    from tracers.records import StreamSummary
    from undebug.session.client import SupervisorClient
    from undebug.target import Target


FOLLOW_POLL_S = 0.01  # --follow: a quiet recording is looked at again this often

_FORCE = ("go on when the ELF's build-id is not the recording's (or, with "
          "--flight-recorder, the guest's): events are named with this ELF anyway")


def _arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="trace_command", metavar="SUBCOMMAND", required=True,
                           parser_class=type(p))

    def common(q: argparse.ArgumentParser, json: bool = True) -> None:
        q.add_argument("source", metavar="FILE|TARGET",
                       help="a recorded trace file, or a live guest's name (see undebug ps)")
        q.add_argument("--elf", type=Path,
                       help="the guest's ELF, for tracepoint names (default for a guest: the "
                       "image it booted)")
        if json:
            q.add_argument("--json", action="store_true",
                           help=f"print one JSON document (schema {SCHEMA})")

    rec = sub.add_parser("record", help="copy a guest's trace stream to a file as it arrives",
                         description="Copy a live guest's trace stream to FILE (mode 0600) "
                         "until the guest ends or Ctrl-C. Every byte received is on disk "
                         "before the next is read.")
    rec.add_argument("source", metavar="TARGET", help="a guest's name (see undebug ps)")
    rec.add_argument("-o", "--output", type=Path, required=True, metavar="FILE")
    rec.add_argument("--trace-max-size", type=trace_size, default=trace_size("256M"),
                     metavar="SIZE", help="keep at most SIZE bytes (K, M, G suffixes; default "
                     "256M; 0: no limit): the oldest chunks are deleted first")
    rec.add_argument("--json", action="store_true", help=f"print one JSON document ({SCHEMA})")

    show = sub.add_parser("show", help="print trace events, one per line",
                          description="One line per event: time since boot, CPU, thread, "
                          "tracepoint, arguments by name. Spans, loss, faults, panics and "
                          "damage (where the decoder skipped bytes) are shown where they "
                          "occur; SYNC records only with --filter sync.")
    common(show)
    show.add_argument("-f", "--follow", action="store_true",
                      help="keep printing as the stream grows, until the guest ends or Ctrl-C")
    show.add_argument("--filter", metavar="NAME", action="append",
                      help="only tracepoints named NAME (a glob; repeatable)")
    show.add_argument("--wall-clock", action="store_true",
                      help="UTC times (from when the host received the stream header) "
                      "instead of seconds since boot")
    show.add_argument("--flight-recorder", action="store_true",
                      help="read the newest events from the guest's memory (its rings, or "
                      "a Unikraft image's uk_trace_buffer), not the stream; the guest is "
                      "paused while they are copied")
    show.add_argument("--force", action="store_true", help=_FORCE)

    stats = sub.add_parser("stats", help="events per tracepoint and thread, loss, rate",
                           description="Events per tracepoint and per thread, lost records "
                           "per CPU counted from sequence gaps and from the guest's LOST "
                           "records, the event rate, and damage.")
    common(stats)
    stats.add_argument("--flight-recorder", action="store_true",
                       help="read the guest's rings (or a Unikraft image's uk_trace_buffer) "
                       "in memory instead of the stream")
    stats.add_argument("--force", action="store_true", help=_FORCE)

    from undebug.commands.trace_export import add_export_arguments

    export = sub.add_parser("export", help="write a recording's spans as OTLP/JSON or "
                            "Jaeger JSON files",
                            description="Spans from the guest's span begin/end records "
                            "(nested spans are children; tracepoints inside a span are its "
                            "events; faults and panics exception events with error status), "
                            "written to the files named. Needs the guest's ELF: --elf, "
                            "FILE.origin, or the guest's session.")
    common(export)
    add_export_arguments(export)


@command("trace", "record, show, count and export a guest's trace events", _arguments,
         json=False,
         description="The guest tracing stub's events: record a live guest's stream, show "
         "events, or count them. FILE|TARGET is a recorded file or a guest's name.")
def trace(args: argparse.Namespace) -> Report:
    if args.trace_command == "record":
        return _record(args)
    if args.trace_command == "show":
        return _show(args)
    if args.trace_command == "export":
        # before numpy loads OpenBLAS: its worker threads spin ~0.06 s of CPU after start
        # and the export does no linear algebra (an explicit setting is kept)
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        from undebug.commands.trace_export import export

        return export(args, _open_source(args))
    return _stats(args)


def trace_size(text: str) -> int:
    """A --trace-max-size: bytes, with an optional K, M or G (powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    number, unit = text[:-1] if text[-1:].isalpha() else text, text[-1:].upper() \
        if text[-1:].isalpha() else ""
    if not number.isdigit() or unit not in units:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256M, 1G, 0)")
    return int(number) * units[unit]


# ---- sources ---------------------------------------------------------------------------

# bytes decoded at a time: memory is bounded by this, not by the file (stats keep numpy
# columns only; show makes Python objects for each event, so it reads less at a time)
STATS_WINDOW = 4 << 20
SHOW_WINDOW = 1 << 20


def _is_file(source: str) -> bool:
    path = Path(source)
    if path.is_dir():
        raise UsageError(f"{source} is a directory, not a trace file")
    from tracers.chunks import chunk_paths

    return path.exists() or bool(chunk_paths(path))


def _channel(source: str) -> FileChannel:
    from tracers.channel import FileChannel, guest_channel

    if _is_file(source):
        return FileChannel(Path(source))
    if "/" in source or source.endswith(".utrace"):
        raise UsageError(f"no file {source}")
    from undebug.session.store import validate_name

    try:
        validate_name(source)
    except UsageError:
        raise UsageError(f"no trace file or guest named {source!r}",
                         hint="pass an existing file, or a guest's name (see undebug ps)") \
            from None
    from undebug.errors import SessionError

    try:
        return guest_channel(source)
    except SessionError as exc:
        if exc.message.startswith("no guest named"):
            raise UsageError(f"no trace file or guest named {source!r}",
                             hint="pass an existing file, or a guest's name (see undebug ps)") \
                from None
        raise


def _default_elf(args: argparse.Namespace) -> Path | None:
    """--elf, else the ELF named in a file's FILE.origin, else the guest's."""
    if args.elf is not None:
        return args.elf  # type: ignore[no-any-return]
    if _is_file(args.source):
        from tracers.origin import read_origin

        origin = read_origin(Path(args.source))
        return Path(origin.elf) if origin and origin.elf else None
    from undebug.target import remembered_elf

    return remembered_elf(args.source)


def _tracepoints(args: argparse.Namespace, warnings: list[str]) -> Tracepoints | None:
    from tracers.metadata import load_tracepoints

    path = _default_elf(args)
    if path is None:
        warnings.append("no --elf: tracepoints are shown by id")
        return None
    try:
        tps = load_tracepoints(path)
    except UsageError as exc:
        if args.elf is not None:
            raise
        warnings.append(f"no tracepoint names: {exc.message}")
        return None
    warnings += tps.warnings
    return tps


def _peek_header(data: bytes) -> list[Session]:
    from tracers.decode import Session, StreamHeader

    if len(data) < 80:
        return []
    header = StreamHeader.parse(data[:80])
    return [] if isinstance(header, str) else [Session(0, header, 0, 0)]


@dataclass
class _Source:
    """A stream decoded batch by batch (a window of bytes at a time): a recording (read
    oldest chunk first, followed as it grows with ``follow``) or a flight recorder."""

    label: str
    all_tracepoints: Tracepoints | None
    warnings: list[str]
    channel: FileChannel | None = None
    data: bytes = b""  # the flight recorder's stream
    tracepoints: Tracepoints | None = None  # those usable with the stream's build-id
    first_notes: list[str] = field(default_factory=list)  # why not, from the first header
    decoder: StreamDecoder | None = None
    decoded: Decoded | None = None  # a Unikraft buffer: decoded at once, no stream
    buffer: dict[str, object] | None = None  # its state, for --json
    force: bool = False  # --force: name a recording of another build with this ELF anyway
    lease: SupervisorClient | None = None  # a followed guest's live flushing, held open

    def batches(self, window: int, follow: bool = False) -> Iterator[Decoded]:
        if self.decoded is not None:
            yield self.decoded
            return
        if self.channel is None:
            yield self._start(self.data[:80]).decode(self.data)
            return
        channel = self.channel
        buf = bytearray()
        while True:
            # one buffer, refilled after the bytes the decoder left pending: no copies
            pending = self.decoder.pending if self.decoder else b""
            if len(buf) != len(pending) + window:
                buf = bytearray(len(pending) + window)
            buf[: len(pending)] = pending
            try:
                n = channel.readinto(memoryview(buf)[len(pending):])
                if not n and follow and channel.finished():
                    n = channel.readinto(memoryview(buf)[len(pending):])  # the last bytes
            except OSError as exc:
                raise UsageError(f"cannot read {self.label}: {exc.strerror}") from None
            if not n:
                if not follow or channel.finished():
                    break
                time.sleep(FOLLOW_POLL_S)
                continue
            if n < window:
                del buf[len(pending) + n :]
            decoder = self.decoder or self._start(bytes(buf[:80]))
            yield decoder.feed_buffer(buf)
        yield (self.decoder or self._start(b"")).finish()

    def _start(self, head: bytes) -> StreamDecoder:
        """The decoder, once the first bytes say which tracepoints the stream can use."""
        from tracers.decode import MAGIC, StreamDecoder
        from tracers.metadata import for_stream

        if self.channel is not None and head and head[:8] != MAGIC.to_bytes(8, "little"):
            mode = os.stat(self.channel.path).st_mode
            if not stat.S_ISREG(mode):  # a device or a pipe may never end: refuse now
                raise UsageError(f"{self.label}: not an undebug trace (no stream header: "
                                 "it does not start with the UDBTRACE magic)",
                                 hint="pass a file written by undebug (run --trace-file, "
                                 "trace record) or a guest's name")
        self.tracepoints, self.first_notes = for_stream(self.all_tracepoints,
                                                        _peek_header(head))
        if self.tracepoints is None and self.all_tracepoints is not None:
            self._other_build()
        self.decoder = StreamDecoder(self.tracepoints.count if self.tracepoints else None,
                                     reuse=True)  # each batch is used before the next
        return self.decoder

    def _other_build(self) -> None:
        """The one rule of show, stats and export for a recording of another build:
        refused, unless --force names its events with this ELF anyway (a warning)."""
        mismatch = self.first_notes[0]
        if not self.force:
            raise UsageError(f"{self.label}: {mismatch}", hint="pass the ELF of the build "
                             "that was recorded with --elf, or --force to name its events "
                             "with this one anyway")
        self.tracepoints = self.all_tracepoints
        self.first_notes = [f"{mismatch}; --force: its events are named with it anyway"]

    def anchors(self, sessions: list[Session]) -> dict[int, int]:
        from tracers.channel import session_anchors

        return session_anchors(self.channel.anchors(), sessions) if self.channel else {}

    def summary(self) -> StreamSummary:
        """At the end: what the whole stream had besides records. Refuses a stream with
        no session at all (not a trace); notes build-id mismatches of every session."""
        from tracers.metadata import for_stream
        from tracers.records import StreamSummary

        if self.decoded is not None:
            d = self.decoded
            return StreamSummary(d.sessions, d.damage, d.truncated)
        decoder = self.decoder
        assert decoder is not None
        if not decoder.sessions:
            raise UsageError(f"{self.label}: {decoder.problem or 'no stream header'}",
                             hint="pass a file written by undebug (run --trace-file, trace "
                             "record) or a guest's name")
        # (a mismatch of the first session was refused without --force; one of a later
        # session is found only here, at the end)
        self.warnings += [f"{n}; its events are named with it anyway" if "mismatch" in n
                          else n for n in for_stream(self.all_tracepoints, decoder.sessions)[1]]
        return StreamSummary(list(decoder.sessions), list(decoder.damage), decoder.truncated,
                             self.channel.dropped() if self.channel else None)

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.lease is not None:
            self.lease.close()


def _open_source(args: argparse.Namespace) -> _Source:
    """The source the user named: a file, a guest's recording, or its flight recorder
    (or a Unikraft guest's buffer, when no stream ever arrived from it)."""
    if getattr(args, "flight_recorder", False):
        return _flight_recorder_source(args)
    silent = _silent_guest(args)
    if silent == "none":
        raise UsageError(f"guest {args.source!r} sends no trace: its ELF has neither the "
                         "undebug tracing stub nor Unikraft's tracepoints",
                         hint="link the stub (guest-stubs/README.md), or build Unikraft "
                         "with CONFIG_LIBUKDEBUG_TRACEPOINTS")
    if silent == "unikraft":
        if getattr(args, "follow", False):
            raise UsageError(f"no undebug trace stream arrived from {args.source!r}; its "
                             "Unikraft trace buffer is read once and cannot be followed",
                             hint="drop --follow")
        return _flight_recorder_source(args, note=(
            f"no undebug trace stream arrived from {args.source!r}: showing Unikraft's "
            "in-memory trace buffer (uk_trace_buffer) instead"))
    channel = _channel(args.source)
    warnings: list[str] = []
    try:
        tps = _tracepoints(args, warnings)
    except BaseException:
        channel.close()
        raise
    return _Source(str(channel.path), tps, warnings, channel,
                   force=getattr(args, "force", False), lease=_live_lease(args))


def _live_lease(args: argparse.Namespace) -> SupervisorClient | None:
    """Following a guest live: its stub flushes often while this is held (live_trace.py)."""
    if not getattr(args, "follow", False) or _is_file(args.source):
        return None
    from undebug.session.client import hold_live_trace
    from undebug.session.store import SessionDir

    return hold_live_trace(SessionDir.named(args.source))


def _silent_guest(args: argparse.Namespace) -> str | None:
    """For a guest (not a file) whose recording is absent or empty, what its ELF has:
    ``unikraft`` (Unikraft's tracepoints and no undebug stub: its trace is in its
    memory), ``stub`` (the undebug stub: nothing sent yet), ``none`` (neither); None for
    a file, a recording with bytes, or what the ordinary path will explain."""
    from tracers.chunks import chunk_paths
    from tracers.flight import HEADER_SYMBOL
    from tracers.unikraft.metadata import has_unikraft_tracepoints
    from undebug.elf import ElfFile
    from undebug.errors import UndebugError
    from undebug.session.store import SessionDir

    if _is_file(args.source):
        return None
    try:
        path = SessionDir.named(args.source).path / "trace.utrace"
        if any(p.stat().st_size for _, p in chunk_paths(path)):
            return None
        elf = args.elf or _default_elf(args)
        if elf is None:
            return None
        image = ElfFile(elf)
        if image.symbol(HEADER_SYMBOL) is not None:
            return "stub"
        return "unikraft" if has_unikraft_tracepoints(image) else "none"
    except (UndebugError, OSError):
        return None  # the ordinary path says what is wrong


def _unikraft_source(args: argparse.Namespace, target: Target, note: str | None) -> _Source:
    """A Unikraft guest's ``uk_trace_buffer``, decoded into the event model."""
    from tracers.unikraft.buffer import read_unikraft_buffer

    recording = read_unikraft_buffer(target)
    warnings = ([note] if note else []) + list(target.warnings) + recording.warnings
    tps = recording.tracepoints.tracepoints
    return _Source(f"Unikraft trace buffer of {args.source}", tps, warnings, tracepoints=tps,
                   decoded=recording.decoded, buffer=recording.buffer.json())


def _flight_recorder_source(args: argparse.Namespace, note: str | None = None) -> _Source:
    from tracers.flight import HEADER_SYMBOL, read_flight_recorder
    from tracers.metadata import load_tracepoints
    from tracers.unikraft.metadata import has_unikraft_tracepoints
    from undebug.coretarget import is_bundle
    from undebug.target import open_target

    if not is_bundle(args.source) and _is_file(args.source):
        raise UsageError("--flight-recorder reads a guest's memory: pass its name or a "
                         "dump bundle", hint="a recorded file is read without --flight-recorder")
    with open_target(args.source, args.elf, force=args.force) as target:
        if target.elf.symbol(HEADER_SYMBOL) is None and has_unikraft_tracepoints(target.elf):
            return _unikraft_source(args, target, note)
        recording = read_flight_recorder(target)
        warnings = list(target.warnings) + recording.warnings
        elf_path = target.elf.path
    try:
        tps: Tracepoints | None = load_tracepoints(elf_path)
    except UsageError as exc:
        warnings.append(f"no tracepoint names: {exc.message}")
        tps = None
    warnings += tps.warnings if tps else []
    return _Source(f"flight recorder of {args.source}", tps, warnings, data=recording.data,
                   force=args.force)


# ---- record ----------------------------------------------------------------------------

def _record(args: argparse.Namespace) -> Report:
    from tracers.channel import guest_channel
    from tracers.chunks import ChunkWriter
    from tracers.decode import StreamDecoder

    if _is_file(args.source):
        raise UsageError(f"{args.source} is a file: trace record copies a live guest's stream",
                         hint="give the guest's name (see undebug ps)")
    channel = guest_channel(args.source)
    try:
        writer = ChunkWriter(args.output, args.trace_max_size)
    except OSError as exc:
        channel.close()
        raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
    _record_origin(args.source, args.output)
    decoder = StreamDecoder()
    written = records = 0
    interrupted = anchored = False
    try:
        while True:
            chunk = channel.read()
            if not chunk and channel.finished():
                chunk = channel.read()  # what arrived between the read and the check
                if not chunk:
                    break
            if not chunk:
                time.sleep(0.05)
                continue
            if not anchored and 0 in (anchors := channel.anchors()):
                anchored = True  # the recording starts at the stream's first byte
                writer.anchor(json.dumps({"offset": 0, "received_unix_ns": anchors[0]}) + "\n")
            writer.write(chunk)  # all of it on disk before the next read
            written += len(chunk)
            records += len(decoder.feed(chunk).records)
    except KeyboardInterrupt:
        interrupted = True  # Ctrl-C is how a recording normally stops
    finally:
        writer.close()
        channel.close()
    end = decoder.finish()
    dropped = writer.dropped
    data = {"target": args.source, "file": str(args.output), "bytes": written,
            "records": records + len(end.records), "sessions": len(end.sessions),
            "ended_by": "interrupt" if interrupted else "guest ended",
            "rotation": dataclasses.asdict(dropped)}
    warnings = [dropped.write_error] if dropped.write_error else []
    return Report(data=data, warnings=warnings, render=lambda: [
        f"recorded {written} bytes ({data['records']} records) of {escape(args.source)} to "
        f"{escape(str(args.output))} ({data['ended_by']})"
        + (f"; the oldest {dropped.dropped_chunks} chunk(s) ({dropped.dropped_bytes} bytes) "
           "were dropped to stay under --trace-max-size" if dropped.dropped_chunks else "")])


def _guest_os(elf: Path | None) -> str | None:
    from undebug.commands.trace_export import guest_os

    return guest_os(str(elf)) if elf else None


def _record_origin(name: str, output: Path) -> None:
    """``FILE.origin`` (tracers/origin.py): the guest's ELF and image, for later."""
    from tracers.origin import read_origin, write_origin
    from undebug.session.replies import recorded_status
    from undebug.session.store import SessionDir

    session = SessionDir.named(name)
    status = recorded_status(session)
    image = Path(status.image) if status.image else None
    elf = Path(status.elf) if status.elf else image
    given = read_origin(session.trace_file)  # the run's, with its --traceparent
    try:
        write_origin(output, elf=elf, image=image, session=name,
                     traceparent=given.traceparent if given else None,
                     os_name=_guest_os(elf))
    except OSError as exc:
        sys.stderr.write(f"warning: cannot write {escape(str(output))}.origin: "
                         f"{exc.strerror}\n")


# ---- show ------------------------------------------------------------------------------

def _show(args: argparse.Namespace) -> Report:
    from tracers.model import SpanMatcher, TraceModel
    from tracers.report import EventPrinter, damage_warnings, show_json_tail, span_json

    if args.follow:
        if args.json:
            raise UsageError("--follow prints as events arrive; it cannot make one JSON "
                             "document", hint="drop --json, or drop --follow")
        if args.flight_recorder:
            raise UsageError("--flight-recorder reads memory once; it cannot --follow")
    source = _open_source(args)
    if args.follow:
        for w in source.warnings:
            sys.stderr.write(f"warning: {escape(w)}\n")
        source.warnings = []
    out = sys.stdout
    printer: EventPrinter | None = None
    matcher: SpanMatcher | None = None
    import tempfile  # here, not at the top: every command's start-up imports this module

    # the spans wait on disk until the events are out
    spans = tempfile.TemporaryFile("w+") if args.json else None  # noqa: SIM115
    held: list[str] = []  # output before the first stream header: it may be no trace
    opening = (f'{{"schema": {json.dumps(SCHEMA)}, "source": {json.dumps(source.label)}, '
               '"events": [')
    started = any_event = False  # the JSON document's opening written; an event written
    try:
        for batch in source.batches(SHOW_WINDOW, follow=args.follow):
            if printer is None:
                from tracers.unikraft.bridge import bridge_for

                printer = EventPrinter(source.tracepoints, args.filter,
                                       wall_clock=args.wall_clock,
                                       unikraft=bridge_for(source.tracepoints))
                matcher = SpanMatcher(source.tracepoints)
                if args.follow:  # (without --follow, summary() notes every session's)
                    for w in source.first_notes:
                        sys.stderr.write(f"warning: {escape(w)}\n")
            assert matcher is not None
            model = TraceModel(batch, printer.tracepoints, source.anchors(batch.sessions))
            printer.names.update(model.thread_names)
            lines = printer.lines(model, collect=args.json)
            if spans is not None:
                for span in matcher.feed(model)[0]:
                    spans.write(("," if spans.tell() else "") + json.dumps(span_json(span)))
            if args.follow:
                for w in batch.warnings:
                    sys.stderr.write(f"warning: {escape(w)}\n")
            else:
                source.warnings += batch.warnings
            if not batch.sessions:
                held += lines
                continue
            if args.json:  # one write per batch (stdout may be unbuffered)
                events = ",".join(json.dumps(event) for event in printer.events)
                out.write(("" if started else opening)
                          + ("," if any_event and events else "") + events)
                started, any_event = True, any_event or bool(events)
                printer.events.clear()
            else:
                out.write("".join(line + "\n" for line in held + lines))
                held = []
            out.flush()
    except KeyboardInterrupt:
        if not args.follow:
            raise
    finally:
        source.close()
    if args.follow:
        if printer is not None:
            out.write("".join(line + "\n" for line in printer.unterminated()))
        return Report()
    stream = source.summary()
    assert printer is not None and matcher is not None
    warnings = source.warnings + damage_warnings(stream)
    if not args.json:
        out.write("".join(line + "\n" for line in held + printer.unterminated()))
        return Report(warnings=warnings)
    assert spans is not None
    ended_spans = spans.tell() > 0
    spans.seek(0)
    out.write(("" if started else opening) + '], "spans": [')
    shutil.copyfileobj(spans, out)
    rest = [span_json(span) for span in matcher.unterminated()]
    if rest:
        out.write(("," if ended_spans else "") + json.dumps(rest)[1:-1])
    spans.close()
    tail = {**show_json_tail(stream), **({"buffer": source.buffer} if source.buffer else {}),
            "warnings": warnings}
    out.write("], " + json.dumps(tail)[1:] + "\n")
    out.flush()
    return Report(written=True)  # the document was written as it was made


# ---- stats -----------------------------------------------------------------------------

def _stats(args: argparse.Namespace) -> Report:
    from tracers.model import TraceModel
    from tracers.report import damage_warnings, trace_stats
    from tracers.summary import StatsAccumulator

    source = _open_source(args)
    acc: StatsAccumulator | None = None
    try:
        for batch in source.batches(STATS_WINDOW):
            acc = acc or StatsAccumulator(source.tracepoints)
            acc.add(TraceModel(batch, source.tracepoints))
            source.warnings += batch.warnings
    finally:
        source.close()
    stream = source.summary()
    assert acc is not None
    stats = trace_stats(source.label, acc, stream)
    if source.buffer:
        stats.data["buffer"] = source.buffer
    warnings = source.warnings + damage_warnings(stream) + stats.warnings()
    return Report(data=stats.data, warnings=warnings, render=stats.lines)
