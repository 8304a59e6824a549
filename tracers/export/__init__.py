"""Exporters of a recording's spans: OTLP/JSON and Jaeger JSON files (more to come).

``spans.py`` turns decoded records into :class:`~tracers.export.spans.ExportSpan`;
``resource.py`` says who sent them; each writer module encodes them for one format.
"""
