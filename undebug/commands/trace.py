"""``undebug trace record|show|stats``: a guest's trace stream (tracers/FORMAT.md).

``SOURCE`` is a recorded file (a path that exists) or a live guest's name, whose stream
its supervisor records in the session directory as it arrives. Names and arguments come
from the ELF's ``undebug_tracepoints`` section, only when its build-id is the stream's.
Guest text (thread names, panic and log messages, tracepoint names) is escaped.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from undebug.commands import command
from undebug.errors import UsageError
from undebug.output import SCHEMA, Report
from undebug.text import escape

if TYPE_CHECKING:
    from tracers.channel import FileChannel
    from tracers.decode import Decoded, Session
    from tracers.metadata import Tracepoint, Tracepoints
    from tracers.model import TraceModel

_LEVELS = {0: "error", 1: "warning", 2: "info", 3: "debug"}


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
    return _Loaded(label, decoded, usable, warnings + notes)


def _load_flight_recorder(args: argparse.Namespace) -> _Loaded:
    from tracers.channel import read_flight_recorder
    from tracers.decode import decode
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
            if chunk:
                view = memoryview(chunk)
                while view:  # all of it on disk before the next read
                    view = view[os.write(fd, view):]
                written += len(chunk)
                records += len(decoder.feed(chunk).records)
                continue
            if channel.finished():
                chunk = channel.read()
                if not chunk:
                    break
                os.write(fd, chunk)
                continue
            time.sleep(0.05)
    except KeyboardInterrupt:
        interrupted = True  # Ctrl-C is how a recording normally stops
    finally:
        os.close(fd)
        channel.close()
    end = decoder.finish()
    data = {"target": args.source, "file": str(args.output), "bytes": written,
            "records": records + len(end.records), "sessions": len(end.sessions),
            "ended_by": "interrupt" if interrupted else "guest ended"}
    return Report(data=data, warnings=[], render=lambda: [
        f"recorded {written} bytes ({data['records']} records) of {escape(args.source)} to "
        f"{escape(str(args.output))} ({data['ended_by']})"])


# ---- show ------------------------------------------------------------------------------

def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _format_value(kind: int, value: int) -> str:
    if kind == 2:
        return str(_signed(value))
    if kind == 3:
        return f"{value:#x}"
    if kind == 4:
        return "true" if value else "false"
    if kind == 5:
        return repr(escape(chr(value & 0xFF)))
    if kind == 1:
        return str(value)
    return f"{value:#x}"


def _event_args(tp: Tracepoint | None, words: list[int]) -> dict[str, str]:
    if tp is None:
        return {f"a{i}": f"{w:#x}" for i, w in enumerate(words)}
    out = {}
    for i in range(tp.nargs):
        value = words[i] if i < len(words) else 0
        out[escape(tp.arg_names[i] if i < len(tp.arg_names) else f"arg{i}")] = \
            _format_value(tp.arg_types[i] if i < len(tp.arg_types) else 0, value)
    return out


class _Printer:
    """Turns decoded batches into lines (and JSON events), keeping what spans across
    batches: thread names, open spans, sessions already announced."""

    def __init__(self, tracepoints: Tracepoints | None, filters: list[str] | None,
                 names: dict[int, bytes] | None = None) -> None:
        self.tracepoints = tracepoints
        self.filters = filters or []
        self.names: dict[int, bytes] = dict(names or {})
        self.open: dict[tuple[int, int, str], list[int]] = {}
        self.announced = 0
        self.events: list[dict[str, Any]] = []

    def wanted(self, name: str) -> bool:
        if not self.filters:
            return name != "sync"
        return any(fnmatch.fnmatchcase(name, f) for f in self.filters)

    def thread(self, tid: int) -> str:
        name = self.names.get(tid)
        return escape(name) if name else f"tid {tid}"

    def session_line(self, s: Session) -> str:
        h = s.header
        build = h.build_id.hex() or "none"
        return (f"-- session {s.index} at offset {s.offset}: {h.cpu_count} CPU(s), tsc "
                f"{h.tsc_hz / 1e9:.3f} GHz, {h.transport_name}, build-id {build} --")

    def lines(self, decoded: Decoded, model: TraceModel, *, collect: bool = False) -> list[str]:
        from tracers.decode import (
            ID_FAULT,
            ID_LOG_STR,
            ID_LOST,
            ID_PANIC,
            ID_SYNC,
            ID_THREAD_NAME,
            ID_THREAD_SWITCH,
        )
        from tracers.metadata import KIND_SPAN_BEGIN, KIND_SPAN_END

        r = decoded.records
        out: list[str] = []
        damage: dict[int, list[str]] = {}
        for d in decoded.damage:
            damage.setdefault(d.record_index, []).append(
                f"-- damage at offset {d.offset}: {d.skipped} bytes skipped "
                f"({escape(d.reason)}); decoding goes on --")
        ns = model.ns_since_boot
        hz = {s.index: s.header.tsc_hz for s in decoded.sessions}
        for i in model.order.tolist():
            index = r.start + i
            session = int(r.session[i])
            while self.announced <= session and self.announced < len(decoded.sessions):
                out.append(self.session_line(decoded.sessions[self.announced]))
                self.announced += 1
            out += damage.pop(index, [])
            ident, cpu, tid = int(r.id[i]), int(r.cpu[i]), int(r.tid[i])
            words = [int(w) for w in r.args[i, : min(r.args.shape[1], 2 * (int(r.nslots[i]) - 1))]]
            text = r.strings.get(index, b"")
            tp = self.tracepoints.get(ident) if self.tracepoints else None
            name = model.tracepoint_name(ident)
            detail = ""
            if ident == ID_THREAD_NAME and words:
                self.names[words[0] & 0xFFFF] = text
                detail = f"tid={words[0]} name={escape(text)}"
            elif ident == ID_LOST and len(words) >= 2:
                detail = f"{words[0]} record(s) lost (seq {words[1]}..{words[1] + words[0] - 1})"
            elif ident == ID_SYNC and len(words) >= 4:
                detail = f"seq={words[2]} lost_total={words[3]}"
            elif ident == ID_THREAD_SWITCH and len(words) >= 2:
                detail = f"{self.thread(words[0] & 0xFFFF)} -> {self.thread(words[1] & 0xFFFF)}"
            elif ident == ID_FAULT and len(words) >= 4:
                detail = (f"vector={words[0]} error={words[1]:#x} rip={words[2]:#x} "
                          f"addr={words[3]:#x}")
            elif ident == ID_PANIC:
                detail = escape(text)
            elif ident == ID_LOG_STR and words:
                detail = f"{_LEVELS.get(words[0], str(words[0]))}: {escape(text)}"
            args = _event_args(tp, words) if ident < 0xFF00 else {}
            if args:
                detail = " ".join(f"{k}={v}" for k, v in args.items())
            if tp is not None and tp.kind in (KIND_SPAN_BEGIN, KIND_SPAN_END):
                key = (session, tid, tp.name)
                if tp.kind == KIND_SPAN_BEGIN:
                    self.open.setdefault(key, []).append(int(r.tsc[i]))
                    name = f"begin {tp.name}"
                elif self.open.get(key):
                    began = self.open[key].pop()
                    took = (int(r.tsc[i]) - began) * 1e3 / hz.get(session, 1)  # ms
                    name = f"end {tp.name}"
                    detail = f"{detail} ({took:.3f} ms)".strip()
                else:
                    name = f"end {tp.name}"
                    detail = f"{detail} (no begin in the trace)".strip()
            if not self.wanted(model.tracepoint_name(ident) if tp is None else tp.name):
                continue
            seconds = int(ns[i]) / 1e9
            out.append(f"{seconds:16.9f}  cpu{cpu:<3} {self.thread(tid):<16} "
                       f"{escape(name)}  {detail}".rstrip())
            if collect:
                self.events.append({
                    "index": index, "session": session, "time_ns": int(ns[i]), "tsc": int(r.tsc[i]),
                    "cpu": cpu, "seq": int(r.seq[i]), "tid": tid,
                    "thread": self.names[tid].decode("utf-8", "backslashreplace")
                    if tid in self.names else None,
                    "id": ident, "tracepoint": name, "args": args or None, "words": words,
                    "text": text.decode("utf-8", "backslashreplace") if text else None})
        while self.announced < len(decoded.sessions):
            out.append(self.session_line(decoded.sessions[self.announced]))
            self.announced += 1
        for rest in damage.values():
            out += rest
        if decoded.truncated:
            t = decoded.truncated
            out.append(f"-- the stream ends inside a record: {t.size} bytes at offset "
                       f"{t.offset} were never completed --")
        return out

    def unterminated(self) -> list[str]:
        return [f"-- span {escape(name)} on {self.thread(tid)} (session {s}) was never ended "
                f"({len(stack)} open) --" for (s, tid, name), stack in self.open.items() if stack]


def _show(args: argparse.Namespace) -> Report:
    from tracers.model import TraceModel

    if args.follow:
        if args.json:
            raise UsageError("--follow prints as events arrive; it cannot make one JSON "
                             "document", hint="drop --json, or drop --follow")
        if args.flight_recorder:
            raise UsageError("--flight-recorder reads memory once; it cannot --follow")
        return _follow(args)
    loaded = _load(args)
    model = TraceModel(loaded.decoded, loaded.tracepoints)
    printer = _Printer(loaded.tracepoints, args.filter, model.thread_names)
    lines = printer.lines(loaded.decoded, model, collect=args.json)
    lines += printer.unterminated()
    warnings = loaded.warnings + loaded.decoded.warnings + _damage_warnings(loaded.decoded)
    data = {"source": loaded.label, "sessions": _sessions_json(loaded.decoded),
            "events": printer.events, "damage": _damage_json(loaded.decoded),
            "truncated": _truncated_json(loaded.decoded),
            "spans": [_span_json(s, loaded.decoded) for s in model.spans]}
    return Report(data=data, warnings=warnings, render=lambda: lines)


def _follow(args: argparse.Namespace) -> Report:
    from tracers.decode import StreamDecoder
    from tracers.metadata import for_stream
    from tracers.model import TraceModel

    warnings: list[str] = []
    tps_all = _tracepoints(args, warnings)
    for w in warnings:
        sys.stderr.write(f"warning: {escape(w)}\n")
    decoder: StreamDecoder | None = None
    printer: _Printer | None = None
    checked = False
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
                    printer = _Printer(usable, args.filter)
                assert printer is not None
                batch = decoder.feed(chunk) if chunk else decoder.finish()
                if not checked and batch.problem and not batch.sessions:
                    raise UsageError(f"{channel.path}: {batch.problem}")
                checked = checked or bool(batch.sessions)
                for line in printer.lines(batch, TraceModel(batch, printer.tracepoints)):
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

def _damage_warnings(decoded: Decoded) -> list[str]:
    if not decoded.damage:
        return []
    return [f"{len(decoded.damage)} damaged region(s), {decoded.damaged_bytes} bytes skipped"]


def _sessions_json(decoded: Decoded) -> list[dict[str, Any]]:
    return [{"index": s.index, "offset": s.offset, "cpu_count": s.header.cpu_count,
             "tsc_hz": s.header.tsc_hz, "boot_tsc": s.header.boot_tsc,
             "build_id": s.header.build_id.hex(), "transport": s.header.transport_name,
             "first_record": s.first_record} for s in decoded.sessions]


def _damage_json(decoded: Decoded) -> list[dict[str, Any]]:
    return [{"offset": d.offset, "skipped": d.skipped, "record_index": d.record_index,
             "reason": d.reason} for d in decoded.damage]


def _truncated_json(decoded: Decoded) -> dict[str, int] | None:
    t = decoded.truncated
    return None if t is None else {"offset": t.offset, "bytes": t.size}


def _span_json(span: Any, decoded: Decoded) -> dict[str, Any]:
    return {"name": span.name, "session": span.session, "tid": span.tid, "depth": span.depth,
            "begin": span.begin, "end": span.end, "unterminated": span.unterminated}


def _stats(args: argparse.Namespace) -> Report:
    from tracers.model import TraceModel

    loaded = _load(args)
    model = TraceModel(loaded.decoded, loaded.tracepoints)
    names = model.thread_names
    events = int(model.is_event.sum())
    duration = model.duration_s()
    tps = loaded.tracepoints
    tracepoints: list[dict[str, Any]] = [
        {"id": i, "name": model.tracepoint_name(i), "count": c,
         "kind": tp.kind_name if tps and (tp := tps.get(i)) else None}
        for i, c in sorted(model.counts_by_tracepoint().items(), key=lambda x: -x[1])]
    threads: list[dict[str, Any]] = [
        {"tid": t, "name": names[t].decode("utf-8", "backslashreplace") if t in names else None,
         "count": c} for t, c in sorted(model.counts_by_thread().items(), key=lambda x: -x[1])]
    loss: list[dict[str, Any]] = [
        {"session": x.session, "cpu": x.cpu, "records": x.records, "lost_gaps": x.gaps,
             "lost_records": x.lost_records, "agree": x.agree, "damage_gaps": x.damage_gaps,
             "lost_before_base": x.lost_before_base, "guest_lost_total": x.guest_lost_total}
            for x in model.loss()]
    spans = model.spans
    warnings = loaded.warnings + loaded.decoded.warnings + _damage_warnings(loaded.decoded)
    warnings += [f"session {x['session']} cpu {x['cpu']}: sequence gaps ({x['lost_gaps']}) "
                 f"and LOST records ({x['lost_records']}) disagree" for x in loss
                 if not x["agree"]]
    data: dict[str, Any] = {"source": loaded.label, "sessions": _sessions_json(loaded.decoded),
            "records": len(loaded.decoded.records), "events": events,
            "duration_s": round(duration, 9),
            "rate_per_s": round(events / duration, 1) if duration > 0 else None,
            "tracepoints": tracepoints, "threads": threads, "loss": loss,
            "spans": {"count": len(spans), "unterminated": sum(s.unterminated for s in spans),
                      "unmatched_ends": len(model.unmatched_ends)},
            "damage": _damage_json(loaded.decoded),
            "damaged_bytes": loaded.decoded.damaged_bytes,
            "truncated": _truncated_json(loaded.decoded)}

    def render() -> list[str]:
        lines = [f"{escape(loaded.label)}: {data['records']} records, {events} events in "
                 f"{len(data['sessions'])} session(s), {duration:.6f} s"
                 + (f", {data['rate_per_s']:.0f} events/s" if data["rate_per_s"] else "")]
        lines.append("events per tracepoint:")
        lines += [f"  {t['count']:>12}  {escape(t['name'])}"
                  + (f" [{t['kind']}]" if t["kind"] not in (None, "event") else "")
                  for t in tracepoints] or ["  (none)"]
        lines.append("events per thread:")
        lines += [f"  {t['count']:>12}  {escape(t['name']) if t['name'] else 'tid ' + str(t['tid'])}"
                  for t in threads] or ["  (none)"]
        lines.append("loss per CPU (host: sequence gaps; guest: LOST records):")
        lines += [f"  session {x['session']} cpu {x['cpu']:<3} records {x['records']:>10}  "
                  f"gaps {x['lost_gaps']:>8}  LOST {x['lost_records']:>8}  "
                  f"{'agree' if x['agree'] else 'DISAGREE'}"
                  + (f"  damage gaps {x['damage_gaps']}" if x["damage_gaps"] else "")
                  for x in loss] or ["  (no records)"]
        sp = data["spans"]
        lines.append(f"spans: {sp['count']} ({sp['unterminated']} unterminated, "
                     f"{sp['unmatched_ends']} ends without a begin)")
        lines.append(f"damage: {len(data['damage'])} region(s), {data['damaged_bytes']} bytes "
                     "skipped" + "".join(f"\n  offset {d['offset']}: {d['skipped']} bytes "
                                         f"({escape(d['reason'])})" for d in data["damage"]))
        if data["truncated"]:
            lines.append(f"truncated: the last {data['truncated']['bytes']} bytes (offset "
                         f"{data['truncated']['offset']}) are an incomplete record")
        return lines

    return Report(data=data, warnings=warnings, render=render)
