"""OpenTelemetry traces, off unless ``OTEL_TRACES_EXPORTER`` names an exporter.

Configured only by the standard variables: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``, or
both comma-separated; unset or ``none``: off), ``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, ``OTEL_EXPORTER_OTLP_PROTOCOL`` /
``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` (``http/protobuf`` by default, or ``grpc``),
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and
``OTEL_TRACES_SAMPLER_ARG``; the SDK and its exporters read them themselves.

Each request gets one server span, its parent taken from the W3C ``traceparent`` /
``tracestate`` of the HTTP headers or gRPC metadata, with child spans for decoding its input,
its time in the queue and encoding its answer; each model execution gets one ``execute`` span
linked to every request it served. With tracing off every call here returns a shared no-op at
the cost of one global read, so the hot path pays nothing measurable.

The batcher never imports this module: it keeps the span context of each request it queues
(``current_request``, a context variable, like the request id) and hands them to its observer.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from serving.logs import trace_context_var

# The span context of the request being handled (None when tracing is off or outside one).
current_request: ContextVar[Any] = trace_context_var

_NOOP = contextlib.nullcontext()
_tracer: Any = None
_provider: Any = None


def active() -> bool:
    return _tracer is not None


def configure() -> bool:
    """Set tracing up from the environment once per process; True when it is on."""
    global _tracer, _provider
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",")]
    names = [n for n in names if n and n != "none"]
    if not names:
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get(
        "OTEL_SERVICE_NAME", "capserve")}))
    for name in names:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    _provider, _tracer = provider, provider.get_tracer("capserve")
    return True


def _exporter(name: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER '{name}' is not supported here (otlp, console "
                         "or none)")
    protocol = (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    else:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL '{protocol}' is not supported (grpc or "
                         "http/protobuf)")
    return OTLPSpanExporter()


def shutdown() -> None:
    """Flush what is buffered (at the end of the drain)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


@contextlib.contextmanager
def _server_span(name: str, carrier: Mapping[str, str],
                 attributes: Mapping[str, Any]) -> Iterator[Any]:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    parent = TraceContextTextMapPropagator().extract(carrier)
    span = _tracer.start_span(name, context=parent, kind=trace.SpanKind.SERVER,
                              attributes=dict(attributes))
    token = current_request.set(span.get_span_context())
    try:
        with trace.use_span(span, end_on_exit=True, record_exception=False):
            yield span
    finally:
        current_request.reset(token)


def request_span(name: str, carrier: Mapping[str, str],
                 **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """The server span of one request (a no-op when tracing is off). ``carrier`` holds the
    lower-case header or metadata names and their values."""
    if _tracer is None:
        return _NOOP
    return _server_span(name, carrier, attributes)


def child_span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A child of the current request span (decode, encode)."""
    if _tracer is None or current_request.get() is None:
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=attributes)


def set_attributes(**attributes: Any) -> None:
    """Attributes on the current span (model, version, status), when tracing is on."""
    if _tracer is None or current_request.get() is None:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes(attributes)


def record_span(name: str, seconds_ago_start: float, seconds_ago_end: float,
                links: Sequence[Any] = (), **attributes: Any) -> None:
    """A finished span placed by how long ago it started and ended (the batcher times with a
    monotonic clock; spans need wall-clock nanoseconds). Without ``links`` it is a child of the
    current request (its queue time); with them (the span contexts of an execution's requests)
    it starts a trace of its own, linked to each of them."""
    if _tracer is None or (not links and current_request.get() is None):
        return
    from opentelemetry.context import Context
    from opentelemetry.trace import Link

    now = time.time_ns()
    span = _tracer.start_span(name, context=Context() if links else None,
                              attributes=attributes, links=[Link(c) for c in links],
                              start_time=now - int(seconds_ago_start * 1e9))
    span.end(end_time=now - int(seconds_ago_end * 1e9))
