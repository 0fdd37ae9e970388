"""Imported by a worker subprocess (`--import otel_worker_setup`) as an app would configure
OpenTelemetry: an SDK tracer provider whose spans go, one JSON line each, to the file
named by PGQUEUE_TEST_SPANS, for the test to read back."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult


def span_line(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return json.dumps(
        {
            "name": span.name,
            "kind": span.kind.name,
            "trace_id": f"{context.trace_id:032x}",
            "span_id": f"{context.span_id:016x}",
            "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
            "links": [
                {
                    "trace_id": f"{link.context.trace_id:032x}",
                    "span_id": f"{link.context.span_id:016x}",
                }
                for link in span.links
            ],
            "attributes": dict(span.attributes or {}),
            "events": [event.name for event in span.events],
            "status": span.status.status_code.name,
        }
    )


class FileSpanExporter(SpanExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with open(self.path, "a", encoding="utf-8") as file:
            for span in spans:
                file.write(span_line(span) + "\n")
        return SpanExportResult.SUCCESS


provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(FileSpanExporter(os.environ["PGQUEUE_TEST_SPANS"])))
trace.set_tracer_provider(provider)
