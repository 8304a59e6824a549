"""A live guest's trace events for the TUI: its session's recording followed as it grows
(tracers/channel.py), decoded (tracers/decode.py) and printed as ``undebug trace show``
prints them (tracers/report.py), with events counted per tracepoint and losses summed:
what the guest said it dropped (LOST records) and what rotation took from the recording.

It starts near the end of the recording (:meth:`TraceFollower.start`), and each
:meth:`TraceFollower.poll` reads at most ``budget`` bytes, so a burst is caught up over
several polls and the app never waits on one. While nobody looks at the events,
:meth:`TraceFollower.skim` only counts the bytes that arrive; while someone does, the
follower holds the guest's live flushing (:meth:`TraceFollower.hold_live`), so events
show within ~40 ms instead of the stub's rest interval (undebug/session/live_trace.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tracers.channel import FileChannel, guest_channel
from tracers.decode import ID_LOST, StreamDecoder
from tracers.format import HEADER_SIZE, StreamHeader
from tracers.metadata import Tracepoints, for_stream, load_tracepoints
from tracers.model import TraceModel
from tracers.report import EventPrinter
from undebug.errors import UndebugError, UsageError
from undebug.session.client import SupervisorClient, hold_live_trace
from undebug.session.store import SessionDir

__all__ = ["TraceBatch", "TraceFollower", "bundle_channel"]

WINDOW = 1 << 20  # bytes read and decoded at a time
HISTORY = 64 << 10  # bytes of the recording before its end read at the start
MAX_LINES = 20_000  # of a poll's lines, the newest kept (the pane keeps as many)


@dataclass
class TraceBatch:
    lines: list[str] = field(default_factory=list)  # escaped, as trace show prints them
    counts: dict[str, int] = field(default_factory=dict)  # tracepoint name -> events
    lost: int = 0  # records the guest reported lost (LOST records) in this batch
    dropped_bytes: int = 0  # of the recording, taken by rotation or a full disk (total)
    warnings: list[str] = field(default_factory=list)
    caught_up: bool = True  # False: there was more to read than the budget
    skimmed: int = 0  # bytes passed over undecoded (see TraceFollower.skim)


class TraceFollower:
    """Follows guest ``name``'s recording from its start; ``poll`` what came since."""

    def __init__(self, name: str) -> None:
        from undebug.coretarget import is_bundle
        from undebug.target import guest_elf, remembered_elf

        self.warnings: list[str] = []
        self.all_tracepoints: Tracepoints | None = None
        self.still = is_bundle(name)  # a dump's events: all of them decoded, once
        if self.still:
            self.channel = bundle_channel(Path(name))
            elf: Path | None = guest_elf(name).path
        else:
            self.channel = guest_channel(name)
            elf = remembered_elf(name)
        if elf is not None:
            try:
                self.all_tracepoints = load_tracepoints(elf)
            except UndebugError as exc:
                self.warnings.append(f"no tracepoint names: {exc.message}")
        self.decoder: StreamDecoder | None = None
        self.printer: EventPrinter | None = None
        self.header = b""  # the stream header (start reads it)
        self.pending_head = b""  # the stream header, read before a skip, not yet decoded
        self.skipped = 0  # bytes of history not read (see start)
        # thread id -> name from elsewhere (the threads view): a start past the history
        # misses the names the stream gave at thread creation
        self.known_names: dict[int, bytes] = {}
        self.name = name
        self.lease: SupervisorClient | None = None  # live flushing, while events are shown
        self.asked = False  # for the lease, since the events were last hidden

    def start(self, history: int = HISTORY) -> None:
        """Read the stream header, then skip to ``history`` bytes before the end: the
        pane shows what happens now (decoding a long recording's past would take the
        app's CPU for no line it shows)."""
        head = self.channel.read(HEADER_SIZE)
        header = StreamHeader.parse(head) if len(head) == HEADER_SIZE else None
        if isinstance(header, StreamHeader) and header.header_size > HEADER_SIZE:
            head += self.channel.read(header.header_size - HEADER_SIZE)
        self.header = head
        self.resume(history)

    def resume(self, history: int = HISTORY) -> None:
        """Decode again from ``history`` bytes before the end (after :meth:`skim`), with a
        fresh decoder given the stream header first. A dump's are never skimmed: kept."""
        if self.still and self.decoder is not None:
            return
        self.decoder = StreamDecoder(None)
        self.pending_head = self.header
        self.skipped += self.channel.skip_to_tail(history)

    def skim(self) -> TraceBatch:
        """What came since, counted in bytes and not decoded: for a view that shows only
        the rate (decoding costs the app's CPU: its one Python thread). Call
        :meth:`resume` before polling again. A dump's events wait, all of them, to be shown."""
        if self.still:
            return TraceBatch()
        moved = self.channel.skip_to_tail(0)
        self.skipped += moved
        dropped = self.channel.dropped()
        return TraceBatch(skimmed=moved, dropped_bytes=dropped.dropped_bytes
                          + dropped.unwritten_bytes if dropped else 0)

    def poll(self, budget: int = 8 * WINDOW) -> TraceBatch:
        batch = TraceBatch(warnings=self.warnings)
        self.warnings = []
        read = 0
        while read < budget:
            data = self.pending_head + self.channel.read(WINDOW)
            self.pending_head = b""
            if not data:
                break
            read += len(data)
            if self.decoder is None:
                self.decoder = StreamDecoder(None)
            decoded = self.decoder.feed(data)
            if self.printer is None and decoded.sessions:
                tracepoints, notes = for_stream(self.all_tracepoints, decoded.sessions)
                batch.warnings += notes
                self.printer = EventPrinter(tracepoints, None)
            if self.printer is None:
                continue
            for tid, known in dict(self.known_names).items():
                self.printer.names.setdefault(tid, known)
            model = TraceModel(decoded, self.printer.tracepoints)
            self.printer.names.update(model.thread_names)
            batch.lines += self.printer.lines(model)
            for ident, count in model.counts_by_tracepoint().items():
                name = model.tracepoint_name(ident)
                batch.counts[name] = batch.counts.get(name, 0) + count
            records = decoded.records
            lost = records.id == ID_LOST
            if lost.any():
                batch.lost += int(records.args[lost, 0].sum())
        else:
            batch.caught_up = False
        del batch.lines[:-MAX_LINES]
        dropped = self.channel.dropped()
        batch.dropped_bytes = dropped.dropped_bytes + dropped.unwritten_bytes if dropped else 0
        return batch

    def hold_live(self, watched: bool) -> None:
        """Hold the guest's live flushing while the events are watched, not otherwise."""
        if watched and not self.asked and not self.still:
            self.asked = True  # once: a guest without a lease to give is not asked again
            self.lease = hold_live_trace(SessionDir.named(self.name))
        elif not watched:
            self.asked = False
            if self.lease is not None:
                self.lease.close()
                self.lease = None

    def close(self) -> None:
        self.hold_live(False)
        self.channel.close()


def bundle_channel(bundle: Path) -> FileChannel:
    """A dump bundle's events (docs/bundle.md): its trace tail when it is the whole
    recording (a cut one lacks the stream header), else its flight recorder."""
    from undebug.coretarget import FLIGHT_FILE, TRACE_TAIL_FILE, read_bundle

    tail = read_bundle(bundle).summary.get("trace_tail")
    whole = isinstance(tail, dict) and tail.get("whole") is True
    for path in ([bundle / TRACE_TAIL_FILE] if whole else []) + [bundle / FLIGHT_FILE]:
        if path.is_file():
            return FileChannel(path)
    raise UsageError(f"the bundle {bundle} holds no trace events (no whole trace tail, no "
                     "flight recorder)")
