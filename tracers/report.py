"""What ``undebug trace show`` and ``undebug trace stats`` print: event lines, stats
tables and their JSON documents, from the event model.

It exists so that rendering sits beside the model it renders (tracers/model.py) as pure
functions, and undebug/commands/trace.py keeps only arguments, sources and I/O. Guest text
(thread names, strings, tracepoint and argument names) is escaped here.
"""

from __future__ import annotations

import datetime
import fnmatch
from dataclasses import dataclass
from typing import Any

from tracers.format import (
    ID_FAULT,
    ID_LOG_STR,
    ID_LOST,
    ID_PANIC,
    ID_SPAN_CONTEXT,
    ID_SYNC,
    ID_THREAD_NAME,
    ID_THREAD_SWITCH,
    RESERVED_FIRST,
)
from tracers.metadata import (
    ARG_BOOL,
    ARG_CHAR,
    ARG_POINTER,
    ARG_SIGNED,
    ARG_STRING,
    ARG_UNSIGNED,
    KIND_SPAN_BEGIN,
    KIND_SPAN_END,
    Tracepoint,
    Tracepoints,
)
from tracers.model import Span, TraceModel, tracepoint_name
from tracers.records import Damage, Session, StreamSummary, Truncation
from tracers.summary import StatsAccumulator
from tracers.unikraft.bridge import BRIDGE_TRACEPOINT, decode_bridged
from tracers.unikraft.metadata import UkTracepoints
from undebug.text import escape

__all__ = ["EventPrinter", "TraceStats", "damage_warnings", "show_json_tail", "span_json",
           "trace_stats"]

_LEVELS = {0: "error", 1: "warning", 2: "info", 3: "debug"}


# ---- show ------------------------------------------------------------------------------

def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _format_value(kind: int, value: int) -> str:
    if kind == ARG_SIGNED:
        return str(_signed(value))
    if kind == ARG_POINTER:
        return f"{value:#x}"
    if kind == ARG_BOOL:
        return "true" if value else "false"
    if kind == ARG_CHAR:
        return repr(escape(chr(value & 0xFF)))
    if kind == ARG_UNSIGNED:
        return str(value)
    return f"{value:#x}"


def _event_args(tp: Tracepoint | None, words: list[int], text: bytes) -> dict[str, str]:
    if tp is None:
        return {f"a{i}": f"{w:#x}" for i, w in enumerate(words)}
    out = {}
    texts = text.split(b"\0") if ARG_STRING in tp.arg_types else []
    for i in range(tp.nargs):
        value = words[i] if i < len(words) else 0
        kind = tp.arg_types[i] if i < len(tp.arg_types) else 0
        name = escape(tp.arg_names[i] if i < len(tp.arg_names) else f"arg{i}")
        if kind == ARG_STRING:  # a Unikraft string: the word is its ordinal in the text
            out[name] = repr(escape(texts[value] if value < len(texts) else b""))
        else:
            out[name] = _format_value(kind, value)
    return out


def _utc(unix_ns: int) -> str:
    """ISO 8601 UTC with nanoseconds: 2026-11-23T13:30:01.123456789Z."""
    seconds, nanos = divmod(unix_ns, 1_000_000_000)
    stamp = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return f"{stamp:%Y-%m-%dT%H:%M:%S}.{nanos:09d}Z"


class EventPrinter:
    """Turns decoded batches into ``trace show`` lines (and JSON events), keeping what
    spans across batches (``--follow``): thread names, open spans, sessions announced."""

    def __init__(self, tracepoints: Tracepoints | None, filters: list[str] | None,
                 names: dict[int, bytes] | None = None, wall_clock: bool = False,
                 unikraft: UkTracepoints | None = None) -> None:
        self.tracepoints = tracepoints
        self.unikraft = unikraft  # names the samples a Unikraft guest's stub forwards
        self.wall_clock = wall_clock  # print UTC times where an anchor gives them
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

    def lines(self, model: TraceModel, *, collect: bool = False) -> list[str]:
        """One line per event of ``model`` (a batch), with sessions, damage and a cut-short
        end where they occur; ``collect`` also appends each event's JSON to ``events``."""
        decoded = model.decoded
        r = decoded.records
        out: list[str] = []
        damage: dict[int, list[str]] = {}
        for d in decoded.damage:
            damage.setdefault(d.record_index, []).append(
                f"-- damage at offset {d.offset}: {d.skipped} bytes skipped "
                f"({escape(d.reason)}); decoding goes on --")
        ns = model.ns_since_boot
        wall, has_wall = model.wall_clock_ns()
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
            elif ident in (ID_PANIC, ID_SPAN_CONTEXT):
                detail = escape(text)
            elif ident == ID_LOG_STR and words:
                detail = f"{_LEVELS.get(words[0], str(words[0]))}: {escape(text)}"
            note = ""
            if tp is not None and tp.name == BRIDGE_TRACEPOINT and self.unikraft is not None:
                sample = decode_bridged(words, self.unikraft)
                if sample is not None:  # a Unikraft tracepoint: its own name and arguments
                    tp, words, text, name = sample.tracepoint, sample.words, sample.text, \
                        sample.tracepoint.name
                    note = f" (Unikraft sample at {sample.ns / 1e9:.9f} s, thread unknown" + (
                        "" if sample.complete else
                        f"; {sample.size}-byte payload, the first 24 bytes sent") + ")"
            args = _event_args(tp, words, text) if ident < RESERVED_FIRST else {}
            if tp is not None and len(words) < tp.nargs and note:
                for k in list(args)[len(words):]:
                    args[k] = "?"
            if args:
                detail = " ".join(f"{k}={v}" for k, v in args.items()) + note
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
            when = _utc(int(wall[i])) if self.wall_clock and has_wall[i] else \
                f"{int(ns[i]) / 1e9:16.9f}"
            out.append(f"{when}  cpu{cpu:<3} {self.thread(tid):<16} "
                       f"{escape(name)}  {detail}".rstrip())
            if collect:
                self.events.append({
                    "index": index, "session": session, "time_ns": int(ns[i]),
                    "wall_ns": int(wall[i]) if has_wall[i] else None, "tsc": int(r.tsc[i]),
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
        """A line per span still open (at the end of the trace, or of a follow)."""
        return [f"-- span {escape(name)} on {self.thread(tid)} (session {s}) was never ended "
                f"({len(stack)} open) --" for (s, tid, name), stack in self.open.items() if stack]


def show_json_tail(stream: StreamSummary) -> dict[str, Any]:
    """The ``trace show --json`` fields known only at the end of the stream."""
    return {"sessions": _sessions_json(stream.sessions), "damage": _damage_json(stream.damage),
            "truncated": _truncated_json(stream.truncated), "rotation": stream.dropped_json()}


def span_json(span: Span) -> dict[str, Any]:
    return {"name": span.name, "session": span.session, "tid": span.tid, "depth": span.depth,
            "begin": span.begin, "end": span.end, "unterminated": span.unterminated}


# ---- stats -----------------------------------------------------------------------------

@dataclass(frozen=True)
class TraceStats:
    """``trace stats``: the JSON document's fields and, from them, the text tables."""

    data: dict[str, Any]
    duration_s: float  # as measured (``data`` has it rounded)

    def warnings(self) -> list[str]:
        """One warning per CPU whose sequence gaps and LOST records disagree."""
        return [f"session {x['session']} cpu {x['cpu']}: sequence gaps ({x['lost_gaps']}) "
                f"and LOST records ({x['lost_records']}) disagree" for x in self.data["loss"]
                if not x["agree"]]

    def lines(self) -> list[str]:
        data = self.data
        lines = [f"{escape(data['source'])}: {data['records']} records, {data['events']} events "
                 f"in {len(data['sessions'])} session(s), {self.duration_s:.6f} s"
                 + (f", {data['rate_per_s']:.0f} events/s" if data["rate_per_s"] else "")]
        lines.append("events per tracepoint:")
        lines += [f"  {t['count']:>12}  {escape(t['name'])}"
                  + (f" [{t['kind']}]" if t["kind"] not in (None, "event") else "")
                  for t in data["tracepoints"]] or ["  (none)"]
        lines.append("events per thread:")
        lines += [f"  {t['count']:>12}  {escape(t['name']) if t['name'] else 'tid ' + str(t['tid'])}"
                  for t in data["threads"]] or ["  (none)"]
        lines.append("loss per CPU (host: sequence gaps; guest: LOST records):")
        lines += [f"  session {x['session']} cpu {x['cpu']:<3} records {x['records']:>10}  "
                  f"gaps {x['lost_gaps']:>8}  LOST {x['lost_records']:>8}  "
                  f"{'agree' if x['agree'] else 'DISAGREE'}"
                  + (f"  damage gaps {x['damage_gaps']}" if x["damage_gaps"] else "")
                  for x in data["loss"]] or ["  (no records)"]
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


def trace_stats(label: str, acc: StatsAccumulator, stream: StreamSummary) -> TraceStats:
    """Events per tracepoint and thread, loss per CPU, spans, damage and the event rate,
    from the batches folded into ``acc``."""
    tps, names = acc.tracepoints, acc.names
    events = acc.events
    duration = acc.duration_s(stream.sessions)
    tracepoints: list[dict[str, Any]] = [
        {"id": i, "name": tracepoint_name(tps, i), "count": c,
         "kind": tp.kind_name if tps and (tp := tps.get(i)) else None}
        for i, c in sorted(acc.counts_by_tracepoint().items(), key=lambda x: -x[1])]
    threads: list[dict[str, Any]] = [
        {"tid": t, "name": names[t].decode("utf-8", "backslashreplace") if t in names else None,
         "count": c} for t, c in sorted(acc.counts_by_thread().items(), key=lambda x: -x[1])]
    loss: list[dict[str, Any]] = [
        {"session": x.session, "cpu": x.cpu, "records": x.records, "lost_gaps": x.gaps,
         "lost_records": x.lost_records, "agree": x.agree, "damage_gaps": x.damage_gaps,
         "lost_before_base": x.lost_before_base, "guest_lost_total": x.guest_lost_total}
        for x in acc.loss.result()]
    unterminated = acc.unterminated_spans()
    data: dict[str, Any] = {
        "source": label, "sessions": _sessions_json(stream.sessions), "records": acc.records,
        "events": events, "duration_s": round(duration, 9),
        "rate_per_s": round(events / duration, 1) if duration > 0 else None,
        "tracepoints": tracepoints, "threads": threads, "loss": loss,
        "spans": {"count": acc.span_count + unterminated, "unterminated": unterminated,
                  "unmatched_ends": acc.unmatched_ends},
        "damage": _damage_json(stream.damage), "damaged_bytes": stream.damaged_bytes,
        "truncated": _truncated_json(stream.truncated),
        "rotation": stream.dropped_json()}
    return TraceStats(data, duration)


# ---- JSON pieces -----------------------------------------------------------------------

def damage_warnings(stream: StreamSummary) -> list[str]:
    """One warning summing up the damage, and one for what rotation dropped."""
    out = []
    if stream.damage:
        out.append(f"{len(stream.damage)} damaged region(s), {stream.damaged_bytes} bytes "
                   "skipped")
    d = stream.dropped
    if d is not None and (d.dropped_chunks or d.unwritten_bytes):
        out.append(f"the recording lost its oldest {d.dropped_chunks} chunk(s) "
                   f"({d.dropped_bytes} bytes) to its size cap ({d.max_size} bytes)"
                   + (f"; {d.unwritten_bytes} bytes were never written ("
                      f"{d.write_error or 'a write failed'})" if d.unwritten_bytes else ""))
    return out


def _sessions_json(sessions: list[Session]) -> list[dict[str, Any]]:
    return [{"index": s.index, "offset": s.offset, "cpu_count": s.header.cpu_count,
             "tsc_hz": s.header.tsc_hz, "boot_tsc": s.header.boot_tsc,
             "build_id": s.header.build_id.hex(), "transport": s.header.transport_name,
             "first_record": s.first_record} for s in sessions]


def _damage_json(damage: list[Damage]) -> list[dict[str, Any]]:
    return [{"offset": d.offset, "skipped": d.skipped, "record_index": d.record_index,
             "reason": d.reason} for d in damage]


def _truncated_json(t: Truncation | None) -> dict[str, int] | None:
    return None if t is None else {"offset": t.offset, "bytes": t.size}
