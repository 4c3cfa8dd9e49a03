"""The per-model series under Triton's and TorchServe's own names, beside capserve's.

Operators moving from Triton keep their dashboards and autoscaling rules (KEDA/HPA on
``nv_inference_queue_duration_us`` or ``nv_inference_pending_request_count``); those moving from
TorchServe keep theirs on ``ts_*``. One set of running sums per model version feeds both, so
the two vocabularies always agree with each other and with the statistics extension.

Names, types and labels follow the peers' documentation:

- Triton: ``nv_inference_request_success``, ``nv_inference_request_failure`` (+ ``reason``:
  ``REJECTED``, ``CANCELED``, ``BACKEND``, ``OTHER``), ``nv_inference_count``,
  ``nv_inference_exec_count``, and the cumulative microsecond counters
  ``nv_inference_request_duration_us``, ``nv_inference_queue_duration_us``,
  ``nv_inference_compute_{input,infer,output}_duration_us`` (per successful request; a batched
  request adds its execution's compute time), all counters without a ``_total`` suffix as
  Triton writes them; ``nv_inference_pending_request_count`` is a gauge. Labels ``model``,
  ``version``.
- TorchServe: ``ts_inference_requests_total`` (counter), ``ts_inference_latency_microseconds``
  and ``ts_queue_latency_microseconds`` (running sums, untyped as TorchServe exposes them), with
  ``model_name``, ``model_version``, ``hostname``.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, UnknownMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from serving.errors import FailureReason

# Triton's failure reasons; a queue timeout is a rejection there, a client error "other".
TRITON_REASON = {
    FailureReason.REJECTED: "REJECTED",
    FailureReason.TIMEOUT: "REJECTED",
    FailureReason.CANCELED: "CANCELED",
    FailureReason.BACKEND: "BACKEND",
    FailureReason.INVALID: "OTHER",
}
_SUCCESS, _INFERENCES, _EXECUTIONS, _REQUEST_US, _QUEUE_US, _IN_US, _INFER_US, _OUT_US = range(8)
_DURATIONS = (
    (_REQUEST_US, "nv_inference_request_duration_us",
     "Cumulative inference request duration in microseconds"),
    (_QUEUE_US, "nv_inference_queue_duration_us",
     "Cumulative inference queuing duration in microseconds"),
    (_IN_US, "nv_inference_compute_input_duration_us",
     "Cumulative compute input duration in microseconds"),
    (_INFER_US, "nv_inference_compute_infer_duration_us",
     "Cumulative compute inference duration in microseconds"),
    (_OUT_US, "nv_inference_compute_output_duration_us",
     "Cumulative inference compute output duration in microseconds"),
)


# prometheus_client names every counter ``<name>_total`` in the text format; Triton's counters
# carry no suffix, so the exposition drops it from the ``nv_`` families (HELP, TYPE, samples).
_NV_TOTAL = re.compile(rb"\b(nv_[a-z_]+|Requests[245]XX)_total\b")


def triton_names(text: bytes) -> bytes:
    return _NV_TOTAL.sub(rb"\1", text)


def _counter(name: str, doc: str) -> Metric:
    return Metric(name, doc, "counter")


class PeerFamilies(Collector):
    def __init__(self) -> None:
        self._host = socket.gethostname()
        self._lock = threading.Lock()
        self._sums: dict[tuple[str, str], list[float]] = {}
        self._failures: dict[tuple[str, str, str], int] = {}
        self._pending: dict[tuple[str, str], int] = {}
        self._statuses = {"2XX": 0, "4XX": 0, "5XX": 0}  # only the event loop adds to them

    def http_response(self, status: int) -> None:
        key = "2XX" if status < 400 else "4XX" if status < 500 else "5XX"
        self._statuses[key] += 1

    def _row(self, model: str, version: str) -> list[float]:
        row = self._sums.get((model, version))
        if row is None:
            row = self._sums[(model, version)] = [0.0] * 8
        return row

    def succeeded(self, model: str, version: str, batch_size: int, request_s: float,
                  queue_s: float, compute_s: tuple[float, float, float]) -> None:
        with self._lock:
            row = self._row(model, version)
            row[_SUCCESS] += 1
            row[_INFERENCES] += batch_size
            row[_REQUEST_US] += request_s * 1e6
            row[_QUEUE_US] += queue_s * 1e6
            row[_IN_US] += compute_s[0] * 1e6
            row[_INFER_US] += compute_s[1] * 1e6
            row[_OUT_US] += compute_s[2] * 1e6

    def failed(self, model: str, version: str, reason: FailureReason) -> None:
        key = (model, version, TRITON_REASON[reason])
        with self._lock:
            self._row(model, version)
            self._failures[key] = self._failures.get(key, 0) + 1

    def executed(self, model: str, version: str) -> None:
        with self._lock:
            self._row(model, version)[_EXECUTIONS] += 1

    def pending_changed(self, model: str, version: str, delta: int) -> None:
        with self._lock:
            key = (model, version)
            self._pending[key] = self._pending.get(key, 0) + delta

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            rows = {key: list(row) for key, row in self._sums.items()}
            failures = dict(self._failures)
            pending = dict(self._pending)
        yield from self._triton(rows, failures, pending)
        yield from self._torchserve(rows)
        for key, count in list(self._statuses.items()):
            family = _counter(f"Requests{key}", f"HTTP answers with a {key} status "
                              "(TorchServe frontend name)")
            family.add_sample(f"Requests{key}", {"Level": "Host", "Hostname": self._host}, count)
            yield family

    def _triton(self, rows: dict[tuple[str, str], list[float]],
                failures: dict[tuple[str, str, str], int],
                pending: dict[tuple[str, str], int]) -> Iterator[Metric]:
        mv = ["model", "version"]
        counts = [
            (_SUCCESS, "nv_inference_request_success",
             "Number of successful inference requests, all batch sizes"),
            (_INFERENCES, "nv_inference_count",
             "Number of inferences performed (does not include cached requests)"),
            (_EXECUTIONS, "nv_inference_exec_count",
             "Number of model executions performed (does not include cached requests)"),
        ]
        for index, name, doc in [*counts, *_DURATIONS]:
            family = _counter(name, doc)
            for (model, version), row in sorted(rows.items()):
                family.add_sample(name, {"model": model, "version": version},
                                  round(row[index]) if index >= _REQUEST_US else row[index])
            yield family
        failure = _counter("nv_inference_request_failure",
                           "Number of failed inference requests, all batch sizes")
        for (model, version), _ in sorted(rows.items()):
            for reason in sorted(set(TRITON_REASON.values())):
                failure.add_sample("nv_inference_request_failure",
                                   {"model": model, "reason": reason, "version": version},
                                   failures.get((model, version, reason), 0))
        yield failure
        gauge = GaugeMetricFamily("nv_inference_pending_request_count", "Instantaneous number "
                                  "of pending requests awaiting execution per-model", labels=mv)
        for (model, version), count in sorted(pending.items()):
            gauge.add_metric([model, version], count)
        yield gauge

    def _torchserve(self, rows: dict[tuple[str, str], list[float]]) -> Iterator[Metric]:
        labels = ["model_name", "model_version", "hostname"]
        requests = CounterMetricFamily("ts_inference_requests", "Successful inference requests "
                                       "(TorchServe name)", labels=labels)
        latency = UnknownMetricFamily("ts_inference_latency_microseconds", "Sum of inference "
                                      "request latencies in microseconds (TorchServe name)",
                                      labels=labels)
        queue = UnknownMetricFamily("ts_queue_latency_microseconds", "Sum of queue latencies "
                                    "in microseconds (TorchServe name)", labels=labels)
        for (model, version), row in sorted(rows.items()):
            if not row[_SUCCESS]:
                continue
            values = [model, version, self._host]
            requests.add_metric(values, row[_SUCCESS])
            latency.add_metric(values, round(row[_REQUEST_US]))
            queue.add_metric(values, round(row[_QUEUE_US]))
        yield from (requests, latency, queue)
