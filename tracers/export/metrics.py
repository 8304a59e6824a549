"""Metrics of a live export (``trace export NAME --otlp URL --follow``) to the collector's
``/v1/metrics``, with opentelemetry-sdk's metrics and the official OTLP/HTTP metric
exporter: the guest's events per second, the spans the export dropped, and the guest's
heap in use (the last ``heap`` tracepoint's ``used_bytes``: the reference guest's).

Sent once a second from the export's loop (a collection, then one ``export()``); a
failure is counted and becomes a warning, never the export's exit code (the spans are
what the command is for).
"""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
from typing import TYPE_CHECKING

import numpy as np

from tracers.export.attributes import AttrValue
from tracers.format import RESERVED_FIRST
from tracers.metadata import Tracepoint, Tracepoints

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Observation

    from tracers.records import Decoded

__all__ = ["LiveMetrics", "metrics_url"]

INTERVAL_S = 1.0


def metrics_url(url: str) -> str:
    """The metrics endpoint beside a traces one: ``/v1/traces`` (or no path) becomes
    ``/v1/metrics``."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path
    if path in ("", "/") or path.endswith("/v1/traces"):
        path = (path[: -len("/v1/traces")] if path.endswith("/v1/traces") else "") + "/v1/metrics"
    return urllib.parse.urlunsplit(parts._replace(path=path))


def _used_bytes(tp: Tracepoint) -> int | None:
    """Which argument of a ``heap`` tracepoint is the bytes in use: the one its format
    labels ``used_bytes=`` (the reference guest's ``allocs=%lu frees=%lu used_bytes=%lu``),
    else one named ``used_bytes`` or ``used``."""
    labels = re.findall(r"(\w+)=%", tp.fmt)
    for names in (labels, list(tp.arg_names)):
        for want in ("used_bytes", "used"):
            if want in names and names.index(want) < tp.nargs:
                return names.index(want)
    return None


class LiveMetrics:
    def __init__(self, resource: dict[str, AttrValue], url: str, headers: dict[str, str],
                 tracepoints: Tracepoints, timeout_s: float) -> None:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.resources import Resource

        self.exporter = OTLPMetricExporter(endpoint=metrics_url(url), headers=headers,
                                           timeout=max(min(timeout_s, 5.0), 0.1))
        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(resource=Resource(resource), metric_readers=[self.reader])
        meter = self.provider.get_meter("undebug", "1")
        self.events = 0
        self.rate = 0.0
        self.dropped = 0
        self.heap: int | None = None
        self.sent = self.failed = 0
        self._window = (time.monotonic(), 0)
        self._next = time.monotonic() + INTERVAL_S
        self._heap = {tp.id: k for tp in tracepoints.by_id.values() if tp.name == "heap"
                      for k in [_used_bytes(tp)] if k is not None}
        meter.create_observable_counter("unikernel.trace.events", [self._count], unit="{event}",
                                        description="tracepoint events the guest sent")
        meter.create_observable_gauge("unikernel.trace.event_rate", [self._rate],
                                      unit="{event}/s", description="events per second")
        meter.create_observable_counter("unikernel.export.dropped", [self._dropped],
                                        unit="{span}", description="spans the live export "
                                        "dropped (its send queue was full)")
        meter.create_observable_gauge("unikernel.heap.used", [self._heap_used], unit="By",
                                      description="the guest's heap in use (its heap "
                                      "tracepoint's used_bytes)")
        logging.getLogger("opentelemetry.exporter.otlp.proto.http.metric_exporter") \
            .propagate = False  # its failures are counted here, said once at the end

    def _count(self, _: CallbackOptions) -> list[Observation]:
        from opentelemetry.metrics import Observation

        return [Observation(self.events)]

    def _rate(self, _: CallbackOptions) -> list[Observation]:
        from opentelemetry.metrics import Observation

        return [Observation(self.rate)]

    def _dropped(self, _: CallbackOptions) -> list[Observation]:
        from opentelemetry.metrics import Observation

        return [Observation(self.dropped)]

    def _heap_used(self, _: CallbackOptions) -> list[Observation]:
        from opentelemetry.metrics import Observation

        return [] if self.heap is None else [Observation(self.heap)]

    def feed(self, batch: Decoded, dropped: int) -> None:
        """A batch's events; then, once a second, the metrics go out."""
        r = batch.records
        self.events += int((r.id < RESERVED_FIRST).sum())
        self.dropped = dropped
        for ident, column in self._heap.items():
            at = np.flatnonzero(r.id == ident)
            if len(at):
                self.heap = int(r.args[at[-1], column])
        if time.monotonic() >= self._next:
            self.send()

    def send(self) -> None:
        from opentelemetry.sdk.metrics.export import MetricExportResult

        now = time.monotonic()
        since, before = self._window
        self.rate = (self.events - before) / max(now - since, 1e-6)
        self._window = (now, self.events)
        self._next = now + INTERVAL_S
        data = self.reader.get_metrics_data()
        if data is None:
            return
        if self.exporter.export(data) == MetricExportResult.SUCCESS:
            self.sent += 1
        else:
            self.failed += 1

    def close(self) -> None:
        self.send()
        self.exporter.shutdown()
        self.provider.shutdown()
