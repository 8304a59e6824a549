"""``undebug trace record|show|stats``: a guest's trace stream (tracers/FORMAT.md).

``SOURCE`` is a recorded file (a path that exists) or a live guest's name, whose stream
its supervisor records in the session directory as it arrives. Names and arguments come
from the ELF's ``undebug_tracepoints`` section, only when its build-id is the stream's.
Guest text (thread names, panic and log messages, tracepoint names) is escaped. What
``show`` and ``stats`` print is made in tracers/report.py; this module parses arguments,
opens the source and does the I/O.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from undebug.commands import command
from undebug.errors import UsageError
from undebug.output import SCHEMA, Report
from undebug.text import escape

if TYPE_CHECKING:
    from tracers.channel import FileChannel
    from tracers.decode import Decoded, Session
    from tracers.metadata import Tracepoints


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
                      help="read the newest events from the guest's memory (its rings), "
                      "not the stream; the guest is paused while they are copied")
    show.add_argument("--force", action="store_true",
                      help="with --flight-recorder: go on when the ELF's build-id differs")

    stats = sub.add_parser("stats", help="events per tracepoint and thread, loss, rate",
                           description="Events per tracepoint and per thread, lost records "
                           "per CPU counted from sequence gaps and from the guest's LOST "
                           "records, the event rate, and damage.")
    common(stats)
    stats.add_argument("--flight-recorder", action="store_true",
                       help="read the guest's rings in memory instead of the stream")
    stats.add_argument("--force", action="store_true",
                       help="with --flight-recorder: go on when the ELF's build-id differs")


@command("trace", "record, show and count a guest's trace events", _arguments, json=False,
         description="The guest tracing stub's events: record a live guest's stream, show "
         "events, or count them. FILE|TARGET is a recorded file or a guest's name.")
def trace(args: argparse.Namespace) -> Report:
    if args.trace_command == "record":
        return _record(args)
    if args.trace_command == "show":
        return _show(args)
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

@dataclass
class _Loaded:
    """A decoded source with its names."""

    label: str
    decoded: Decoded
    tracepoints: Tracepoints | None
    warnings: list[str] = field(default_factory=list)
    anchors: dict[int, int] = field(default_factory=dict)


def _is_file(source: str) -> bool:
    path = Path(source)
    if path.is_dir():
        raise UsageError(f"{source} is a directory, not a trace file")
    return path.exists()


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
    if args.elf is not None or _is_file(args.source):
        return args.elf  # type: ignore[no-any-return]
    from undebug.session.store import SessionDir

    elf = SessionDir.named(args.source).read_record().get("elf")
    return Path(elf) if isinstance(elf, str) else None


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


def _check_problem(decoded: Decoded, label: str) -> None:
    if decoded.problem and not decoded.sessions:
        raise UsageError(f"{label}: {decoded.problem}",
                         hint="pass a file written by undebug (run --trace-file, trace "
                         "record) or a guest's name")


def _load(args: argparse.Namespace) -> _Loaded:
    """Decode the whole source: a file, a guest's recording, or its flight recorder."""
    from tracers.decode import decode_file
    from tracers.metadata import for_stream

    warnings: list[str] = []
    if getattr(args, "flight_recorder", False):
        return _load_flight_recorder(args)
    with _channel(args.source) as channel:
        label = str(channel.path)
        tps = _tracepoints(args, warnings)
        try:
            with open(channel.path, "rb") as f:
                first = f.read(80)
        except OSError as exc:
            raise UsageError(f"cannot read {label}: {exc.strerror}") from None
        usable, notes = for_stream(tps, _peek_header(first))
        count = usable.count if usable else None
        try:
            decoded = decode_file(channel.path, tracepoint_count=count)
        except OSError as exc:
            raise UsageError(f"cannot read {label}: {exc.strerror}") from None
    _check_problem(decoded, label)
    usable, notes = for_stream(tps, decoded.sessions)
    from tracers.channel import read_anchors

    anchors, anchor_notes = read_anchors(channel.path, decoded.sessions)
    return _Loaded(label, decoded, usable, warnings + notes + anchor_notes, anchors)


def _load_flight_recorder(args: argparse.Namespace) -> _Loaded:
    from tracers.decode import decode
    from tracers.flight import read_flight_recorder
    from tracers.metadata import for_stream, load_tracepoints
    from undebug.session.store import SessionDir
    from undebug.target import LiveTarget

    if _is_file(args.source):
        raise UsageError("--flight-recorder reads a live guest's memory: pass its name",
                         hint="a recorded file is read without --flight-recorder")
    with LiveTarget(SessionDir.named(args.source), args.elf, force=args.force) as target:
        recording = read_flight_recorder(target)
        warnings = list(target.warnings) + recording.warnings
        elf_path = target.elf.path
    try:
        tps: Tracepoints | None = load_tracepoints(elf_path)
    except UsageError as exc:
        warnings.append(f"no tracepoint names: {exc.message}")
        tps = None
    usable, notes = for_stream(tps, _peek_header(recording.data[:80]))
    decoded = decode(recording.data, tracepoint_count=usable.count if usable else None)
    _check_problem(decoded, f"flight recorder of {args.source}")
    warnings += (tps.warnings if tps else []) + notes
    return _Loaded(f"flight recorder of {args.source}", decoded, usable, warnings)


# ---- record ----------------------------------------------------------------------------

def _record(args: argparse.Namespace) -> Report:
    from tracers.channel import guest_channel
    from tracers.decode import StreamDecoder

    if _is_file(args.source):
        raise UsageError(f"{args.source} is a file: trace record copies a live guest's stream",
                         hint="give the guest's name (see undebug ps)")
    channel = guest_channel(args.source)
    try:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        channel.close()
        raise UsageError(f"cannot write {args.output}: {exc.strerror}") from None
    os.fchmod(fd, 0o600)
    decoder = StreamDecoder()
    written = records = 0
    interrupted = False
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
            view = memoryview(chunk)
            while view:  # all of it on disk before the next read
                view = view[os.write(fd, view):]
            written += len(chunk)
            records += len(decoder.feed(chunk).records)
    except KeyboardInterrupt:
        interrupted = True  # Ctrl-C is how a recording normally stops
    finally:
        os.close(fd)
        channel.close()
    _copy_anchors(channel.path, args.output)
    end = decoder.finish()
    data = {"target": args.source, "file": str(args.output), "bytes": written,
            "records": records + len(end.records), "sessions": len(end.sessions),
            "ended_by": "interrupt" if interrupted else "guest ended"}
    return Report(data=data, warnings=[], render=lambda: [
        f"recorded {written} bytes ({data['records']} records) of {escape(args.source)} to "
        f"{escape(str(args.output))} ({data['ended_by']})"])


def _copy_anchors(source: Path, output: Path) -> None:
    """The recording starts at the stream's first byte, so its anchors hold as they are."""
    try:
        text = source.with_name(source.name + ".anchors").read_bytes()
    except OSError:
        return
    fd = os.open(output.with_name(output.name + ".anchors"),
                 os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(text)


# ---- show ------------------------------------------------------------------------------

def _show(args: argparse.Namespace) -> Report:
    from tracers.model import TraceModel
    from tracers.report import EventPrinter, damage_warnings, show_json

    if args.follow:
        if args.json:
            raise UsageError("--follow prints as events arrive; it cannot make one JSON "
                             "document", hint="drop --json, or drop --follow")
        if args.flight_recorder:
            raise UsageError("--flight-recorder reads memory once; it cannot --follow")
        return _follow(args)
    loaded = _load(args)
    model = TraceModel(loaded.decoded, loaded.tracepoints, loaded.anchors)
    printer = EventPrinter(loaded.tracepoints, args.filter, model.thread_names,
                           wall_clock=args.wall_clock)
    lines = printer.lines(model, collect=args.json)
    lines += printer.unterminated()
    warnings = loaded.warnings + loaded.decoded.warnings + damage_warnings(loaded.decoded)
    data = show_json(loaded.label, model, printer.events)
    return Report(data=data, warnings=warnings, render=lambda: lines)


def _follow(args: argparse.Namespace) -> Report:
    from tracers.channel import read_anchors
    from tracers.decode import StreamDecoder
    from tracers.metadata import for_stream
    from tracers.model import TraceModel
    from tracers.report import EventPrinter

    warnings: list[str] = []
    tps_all = _tracepoints(args, warnings)
    for w in warnings:
        sys.stderr.write(f"warning: {escape(w)}\n")
    decoder: StreamDecoder | None = None
    printer: EventPrinter | None = None
    checked = False
    anchors: dict[int, int] = {}
    try:
        with _channel(args.source) as channel:
            while True:
                chunk = channel.read()
                ended = not chunk and channel.finished()
                if not chunk and not ended:
                    time.sleep(0.1)
                    continue
                if decoder is None:
                    if not chunk:
                        break
                    head = chunk
                    usable, notes = for_stream(tps_all, _peek_header(head))
                    for w in notes:
                        sys.stderr.write(f"warning: {escape(w)}\n")
                    decoder = StreamDecoder(usable.count if usable else None)
                    printer = EventPrinter(usable, args.filter, wall_clock=args.wall_clock)
                assert printer is not None
                batch = decoder.feed(chunk) if chunk else decoder.finish()
                if not checked and batch.problem and not batch.sessions:
                    raise UsageError(f"{channel.path}: {batch.problem}")
                checked = checked or bool(batch.sessions)
                anchors.update(read_anchors(channel.path, batch.sessions)[0])
                for line in printer.lines(TraceModel(batch, printer.tracepoints, anchors)):
                    sys.stdout.write(line + "\n")
                sys.stdout.flush()
                for w in batch.warnings:
                    sys.stderr.write(f"warning: {escape(w)}\n")
                if ended:
                    break
    except KeyboardInterrupt:
        pass  # Ctrl-C ends a follow normally
    if printer is not None:
        for line in printer.unterminated():
            sys.stdout.write(line + "\n")
    return Report()


# ---- stats -----------------------------------------------------------------------------

def _stats(args: argparse.Namespace) -> Report:
    from tracers.model import TraceModel
    from tracers.report import damage_warnings, trace_stats

    loaded = _load(args)
    stats = trace_stats(loaded.label, TraceModel(loaded.decoded, loaded.tracepoints,
                                                 loaded.anchors))
    warnings = loaded.warnings + loaded.decoded.warnings + damage_warnings(loaded.decoded)
    warnings += stats.warnings()
    return Report(data=stats.data, warnings=warnings, render=stats.lines)
