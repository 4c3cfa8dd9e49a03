"""/metrics parses with prometheus_client's parser and its counters move by the right amounts."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from tests.helpers.server import ServerProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: ServerProcess) -> Samples:
    r = httpx.get(server.metrics_url, timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_move_with_requests(v2_server: ServerProcess) -> None:
    before = scrape(v2_server)
    assert any(name.startswith("process_") for name, _ in before)
    c = grpcclient.InferenceServerClient(v2_server.grpc_url)
    a = np.ones((2, 16), np.int32)  # batch 2 per request
    inputs = [grpcclient.InferInput(n, [2, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for inp in inputs:
        inp.set_data_from_numpy(a)
    for _ in range(5):
        c.infer("simple", inputs)
    bad = grpcclient.InferInput("INPUT0", [2, 16], "FP32")
    bad.set_data_from_numpy(a.astype(np.float32))
    with pytest.raises(InferenceServerException):
        c.infer("simple", [bad, inputs[1]])
    c.close()
    after = scrape(v2_server)
    m = {"model": "simple", "version": "1"}

    def delta(name: str, **extra: str) -> float:
        return value(after, name, **m, **extra) - value(before, name, **m, **extra)

    assert delta("capserve_request_success_total") == 5
    assert delta("capserve_inference_count_total") == 10
    assert 1 <= delta("capserve_execution_count_total") <= 5
    assert delta("capserve_request_failure_total", reason="invalid") == 1
    assert delta("capserve_request_duration_seconds_count") >= 5
    assert delta("capserve_batch_size_count") == delta("capserve_execution_count_total")
    assert value(after, "capserve_model_ready", **m) == 1
    # TorchServe's names and labels for the same requests, for dashboards carried over.
    import socket

    ts = {"model_name": "simple", "model_version": "1", "hostname": socket.gethostname()}

    def ts_delta(name: str) -> float:
        return value(after, name, **ts) - value(before, name, **ts)

    assert ts_delta("ts_inference_requests_total") == 5
    assert ts_delta("ts_inference_latency_microseconds") >= ts_delta(
        "ts_queue_latency_microseconds") > 0
