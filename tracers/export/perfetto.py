"""Perfetto traces (protobuf TrackEvent), written with the ``perfetto`` package's
streaming builder and protos.

One process track for the guest (named by its service name), under it one thread track
per guest thread; spans are slices on their thread's track (a begin and an end packet),
span events and exceptions instants at their time, with arguments as debug annotations.
Event names are interned (each name is sent once per trace, then referred to by id).
Spans leave the builder as they end, so packets are not in time order in the file;
Perfetto's trace processor sorts a file's packets by timestamp before it reads them.
"""

from __future__ import annotations

from typing import IO, TYPE_CHECKING

from tracers.export.attributes import AttrValue
from tracers.export.columns import SpanColumns
from tracers.export.spans import ExportSpan, SpanEvent

if TYPE_CHECKING:
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import TracePacket, TrackEvent

__all__ = ["PROCESS_UUID", "PerfettoWriter"]

PROCESS_UUID = 1
SEQUENCE = 1  # trusted_packet_sequence_id of every packet this writer makes
GUEST_PID = 1  # a guest is one "process" to Perfetto


class PerfettoWriter:
    def __init__(self, out: IO[bytes], resource: dict[str, AttrValue]) -> None:
        from perfetto.trace_builder.proto_builder import StreamingTraceProtoBuilder

        self.builder = StreamingTraceProtoBuilder(out)
        self.out = out
        self.names: dict[str, int] = {}  # interned event names
        self.threads: dict[int, int] = {}  # tid -> track uuid
        self.packets = 0
        packet = self._packet()
        packet.sequence_flags = packet.SEQ_INCREMENTAL_STATE_CLEARED
        packet.track_descriptor.uuid = PROCESS_UUID
        packet.track_descriptor.process.pid = GUEST_PID
        packet.track_descriptor.process.process_name = str(resource.get("service.name", "guest"))
        self._write(packet)

    def _packet(self) -> TracePacket:
        packet = self.builder.create_packet()
        packet.trusted_packet_sequence_id = SEQUENCE
        return packet

    def _write(self, packet: TracePacket) -> None:
        self.builder.write_packet(packet)
        self.packets += 1

    def _track(self, span: ExportSpan) -> int:
        tid = span.attributes.get("thread.id")
        tid = tid if isinstance(tid, int) else 0
        uuid = self.threads.get(tid)
        if uuid is None:
            uuid = self.threads[tid] = PROCESS_UUID + 1 + tid
            packet = self._packet()
            d = packet.track_descriptor
            d.uuid, d.parent_uuid = uuid, PROCESS_UUID
            d.thread.pid, d.thread.tid = GUEST_PID, tid
            d.thread.thread_name = str(span.attributes.get("thread.name", f"tid {tid}"))
            self._write(packet)
        return uuid

    def _event(self, packet: TracePacket, name: str, kind: int, track: int,
               time_ns: int) -> TrackEvent:
        """A TrackEvent on ``track``, its name interned."""
        packet.timestamp = time_ns
        packet.sequence_flags = packet.SEQ_NEEDS_INCREMENTAL_STATE
        event = packet.track_event
        event.type, event.track_uuid = kind, track
        iid = self.names.get(name)
        if iid is None:
            iid = self.names[name] = len(self.names) + 1
            interned = packet.interned_data.event_names.add()
            interned.iid, interned.name = iid, name
        event.name_iid = iid
        return event

    def write_columns(self, columns: SpanColumns) -> None:
        self.write(columns.spans())

    def write(self, spans: list[ExportSpan]) -> None:
        from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import TrackEvent

        for span in spans:
            track = self._track(span)
            packet = self._packet()
            begin = self._event(packet, span.name, TrackEvent.TYPE_SLICE_BEGIN, track,
                                span.start_ns)
            _annotate(begin, span.attributes)
            if span.error is not None:
                _annotate(begin, {"error": span.error})
            self._write(packet)
            for e in span.events:
                self._instant(e, track)
            packet = self._packet()
            self._event(packet, span.name, TrackEvent.TYPE_SLICE_END, track, span.end_ns)
            self._write(packet)

    def _instant(self, e: SpanEvent, track: int) -> None:
        from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import TrackEvent

        packet = self._packet()
        _annotate(self._event(packet, e.name, TrackEvent.TYPE_INSTANT, track, e.time_ns),
                  e.attributes)
        self._write(packet)

    def close(self) -> None:
        self.out.flush()


def _annotate(event: TrackEvent, attrs: dict[str, AttrValue]) -> None:
    for key, value in attrs.items():
        a = event.debug_annotations.add()
        a.name = key
        if isinstance(value, bool):
            a.bool_value = value
        elif isinstance(value, int):
            a.int_value = value
        elif isinstance(value, float):
            a.double_value = value
        else:
            a.string_value = value
