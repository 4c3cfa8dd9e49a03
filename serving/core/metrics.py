"""Prometheus metrics of the server, on an injected registry (never the global one).

Names are those of ``docs/architecture.md``. Request-level families (success, failure, request
and queue duration, inference count) move once per request; execution-level families (execution
count, batch size, compute input/infer/output durations) once per model execution (batch).
Labels ``model``/``version`` only ever come from the repository, never from client input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest

from serving.core.gpu import GpuCollector
from serving.core.host_metrics import HostCollector
from serving.core.peer_metrics import PeerFamilies, triton_names
from serving.errors import FailureReason

_LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_MV = ("model", "version")
# prometheus_client prints 81559224320.0 as 8.155922432e+10; some scrapers (perf_analyzer's GPU
# reader) only parse plain numbers, so the exposition spells integral values out.
_EXPONENT = re.compile(rb"(?m)^([^#\n][^\n]* )(-?\d\.\d+e\+\d+)$")


def _plain(match: re.Match[bytes]) -> bytes:
    value = float(match.group(2))
    if value.is_integer():
        return match.group(1) + str(int(value)).encode()
    return match.group(0)


def plain_numbers(text: bytes) -> bytes:
    """A text exposition with integral values spelled out instead of in exponent form, and
    Triton's counters under their own names (no ``_total``)."""
    return triton_names(_EXPONENT.sub(_plain, text))


@dataclass(frozen=True, slots=True)
class _Children:
    """One model version's labelled children of the per-request and per-execution families."""

    success: Counter
    inferences: Counter
    duration: Histogram
    queue: Histogram
    executions: Counter
    batch_size: Histogram
    compute_input: Histogram
    compute_infer: Histogram
    compute_output: Histogram


class Metrics:
    def __init__(
        self, registry: CollectorRegistry, *, process: bool = True, gpu: bool = True,
        host: bool = True,
    ) -> None:
        # Every counter would also get a ``_created`` series: twice the scrape for nothing.
        disable_created_metrics()
        self.registry = registry
        self._bound: dict[tuple[str, str], _Children] = {}
        r = registry
        self.request_success = Counter(
            "capserve_request_success", "Successful inference requests", _MV, registry=r)
        self.request_failure = Counter(
            "capserve_request_failure", "Failed inference requests", (*_MV, "reason"), registry=r)
        self.inference_count = Counter(
            "capserve_inference_count", "Inferences performed (a batch-N request counts N)", _MV,
            registry=r)
        self.execution_count = Counter(
            "capserve_execution_count", "Model executions (batches)", _MV, registry=r)
        self.request_duration = Histogram(
            "capserve_request_duration_seconds", "End-to-end request time in the core", _MV,
            buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_duration = Histogram(
            "capserve_queue_duration_seconds", "Time a request waited in the batch queue", _MV,
            buckets=_LATENCY_BUCKETS, registry=r)
        self.compute_input = Histogram(
            "capserve_compute_input_duration_seconds", "Batch input preparation per execution",
            _MV, buckets=_LATENCY_BUCKETS, registry=r)
        self.compute_infer = Histogram(
            "capserve_compute_infer_duration_seconds", "Model execution time per execution",
            _MV, buckets=_LATENCY_BUCKETS, registry=r)
        self.compute_output = Histogram(
            "capserve_compute_output_duration_seconds", "Output extraction per execution",
            _MV, buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(
            "capserve_batch_size", "Items per model execution", _MV, buckets=_BATCH_BUCKETS,
            registry=r)
        self.pending_requests = Gauge(
            "capserve_pending_requests", "Requests queued and not yet executing", _MV,
            registry=r)
        self.inflight_requests = Gauge(
            "capserve_inflight_requests", "Inference requests inside the server", registry=r)
        self.model_ready = Gauge(
            "capserve_model_ready", "1 when the model version is ready", _MV, registry=r)
        self.model_load_duration = Gauge(
            "capserve_model_load_duration_seconds", "Time the last load of the version took",
            _MV, registry=r)
        self._peers = PeerFamilies()
        r.register(self._peers)
        if process:
            ProcessCollector(registry=r)
        self._gpu = GpuCollector.create() if gpu else None
        if self._gpu is not None:
            r.register(self._gpu)
        if host:
            r.register(HostCollector())

    # -- called by the core ------------------------------------------------------------------

    def _children(self, model: str, version: str) -> _Children:
        # ``labels()`` validates and locks on every call; the label sets are few and never
        # removed, so each version's children are looked up once.
        key = (model, version)
        found = self._bound.get(key)
        if found is None:
            found = self._bound[key] = _Children(
                self.request_success.labels(model, version),
                self.inference_count.labels(model, version),
                self.request_duration.labels(model, version),
                self.queue_duration.labels(model, version),
                self.execution_count.labels(model, version),
                self.batch_size.labels(model, version),
                self.compute_input.labels(model, version),
                self.compute_infer.labels(model, version),
                self.compute_output.labels(model, version),
            )
        return found

    def request_succeeded(
        self, model: str, version: str, duration_s: float, queue_s: float, batch_size: int,
        compute_s: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> None:
        c = self._children(model, version)
        c.success.inc()
        c.inferences.inc(batch_size)
        c.duration.observe(duration_s)
        c.queue.observe(queue_s)
        self._peers.succeeded(model, version, batch_size, duration_s, queue_s, compute_s)

    def request_failed(
        self, model: str, version: str, reason: FailureReason, duration_s: float
    ) -> None:
        self.request_failure.labels(model, version, reason.value).inc()
        self.request_duration.labels(model, version).observe(duration_s)
        self._peers.failed(model, version, reason)

    def execution(
        self, model: str, version: str, batch_size: int, compute_input_s: float,
        compute_infer_s: float, compute_output_s: float,
    ) -> None:
        c = self._children(model, version)
        c.executions.inc()
        self._peers.executed(model, version)
        c.batch_size.observe(batch_size)
        c.compute_input.observe(compute_input_s)
        c.compute_infer.observe(compute_infer_s)
        c.compute_output.observe(compute_output_s)

    def http_response(self, status: int) -> None:
        """One HTTP answer (TorchServe's Requests2XX/4XX/5XX)."""
        self._peers.http_response(status)

    def pending_changed(self, model: str, version: str, delta: int) -> None:
        self.pending_requests.labels(model, version).inc(delta)
        self._peers.pending_changed(model, version, delta)

    def model_state(
        self, model: str, version: str, ready: bool, load_seconds: float | None = None
    ) -> None:
        self.model_ready.labels(model, version).set(1 if ready else 0)
        if load_seconds is not None:
            self.model_load_duration.labels(model, version).set(load_seconds)

    def exposition(self) -> bytes:
        """The text format of the registry, integral values without exponents."""
        return plain_numbers(generate_latest(self.registry))

    def close(self) -> None:
        if self._gpu is not None:
            self.registry.unregister(self._gpu)
            self._gpu.close()
            self._gpu = None
