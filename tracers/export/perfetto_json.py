"""Perfetto's legacy JSON (the Chrome trace event format), the ``--perfetto-json``
fallback for tools that read only JSON.

``{"traceEvents": [...]}``: the guest is one process (pid 1, named by the service name),
each guest thread a thread; a span is a complete event (``"ph": "X"``, start and duration
in microseconds) with its attributes as ``args``, a span event an instant (``"ph": "i"``,
thread scope). The format cannot hold slices of one thread that overlap without nesting;
a thread's spans here always nest, so nothing is lost but the precision (microseconds),
the ids and the parent links (the nesting shows them). Spans are written as they end, so
the events are not in time order; Perfetto and chrome://tracing sort them.
"""

from __future__ import annotations

import json
from typing import IO

from tracers.export.attributes import AttrValue
from tracers.export.columns import SpanColumns
from tracers.export.spans import ExportSpan

__all__ = ["PerfettoJsonWriter"]

PID = 1


class PerfettoJsonWriter:
    def __init__(self, out: IO[bytes], resource: dict[str, AttrValue]) -> None:
        self.out = out
        self.threads: set[int] = set()
        self.events = 0
        out.write(b'{"traceEvents":[')
        self._event({"ph": "M", "pid": PID, "name": "process_name",
                     "args": {"name": str(resource.get("service.name", "guest"))}})

    def _event(self, event: dict[str, object]) -> None:
        self.out.write((b",\n" if self.events else b"")
                       + json.dumps(event, separators=(",", ":")).encode())
        self.events += 1

    def write(self, spans: list[ExportSpan]) -> None:
        for span in spans:
            tid = span.attributes.get("thread.id")
            tid = tid if isinstance(tid, int) else 0
            if tid not in self.threads:
                self.threads.add(tid)
                name = span.attributes.get("thread.name", f"thread {tid}")
                self._event({"ph": "M", "pid": PID, "tid": tid, "name": "thread_name",
                             "args": {"name": name}})
            args: dict[str, object] = dict(span.attributes)
            if span.error is not None:
                args["error"] = span.error
            start = span.start_ns / 1000
            self._event({"ph": "X", "pid": PID, "tid": tid, "name": span.name, "ts": start,
                         "dur": span.end_ns / 1000 - start, "args": args})
            for e in span.events:
                self._event({"ph": "i", "s": "t", "pid": PID, "tid": tid, "name": e.name,
                             "ts": e.time_ns / 1000, "args": e.attributes})

    def write_columns(self, columns: SpanColumns) -> None:
        self.write(columns.spans())

    def close(self) -> None:
        self.out.write(b"]}\n")
        self.out.flush()
