"""/metrics parses with prometheus_client's parser and its counters move by the right amounts."""

from __future__ import annotations

from types import ModuleType

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
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


def send_simple(module: ModuleType, url: str, batch: int, good: int) -> None:
    """``good`` requests to the simple model and one with a wrong datatype (refused)."""
    c = module.InferenceServerClient(url)
    a = np.ones((batch, 16), np.int32)
    inputs = [module.InferInput(n, [batch, 16], "INT32") for n in ("INPUT0", "INPUT1")]
    for inp in inputs:
        inp.set_data_from_numpy(a)
    for _ in range(good):
        c.infer("simple", inputs)
    bad = module.InferInput("INPUT0", [batch, 16], "FP32")
    bad.set_data_from_numpy(a.astype(np.float32))
    with pytest.raises(InferenceServerException):
        c.infer("simple", [bad, inputs[1]])
    c.close()


def test_metrics_move_with_requests(v2_server: ServerProcess) -> None:
    before = scrape(v2_server)
    assert any(name.startswith("process_") for name, _ in before)
    send_simple(grpcclient, v2_server.grpc_url, batch=2, good=5)  # batch 2 per request
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


def test_triton_and_torchserve_names_count_every_request(v2_server: ServerProcess) -> None:
    """Triton's nv_* families under Triton's names (counters without ``_total``), its failure
    reasons, TorchServe's frontend status counts, and no ``_created`` series."""
    raw = httpx.get(v2_server.metrics_url, timeout=10).text
    assert "# TYPE nv_inference_request_success counter" in raw
    assert "nv_inference_request_success_total" not in raw  # Triton's spelling on the wire
    assert "_created" not in raw
    before = scrape(v2_server)
    sent = 7
    send_simple(httpclient, v2_server.http_url, batch=1, good=sent)
    send_simple(grpcclient, v2_server.grpc_url, batch=1, good=sent)
    after = scrape(v2_server)
    m = {"model": "simple", "version": "1"}

    def delta(name: str, **extra: str) -> float:
        return value(after, name, **m, **extra) - value(before, name, **m, **extra)

    assert delta("nv_inference_request_success_total") == 2 * sent
    assert delta("nv_inference_count_total") == 2 * sent
    assert 1 <= delta("nv_inference_exec_count_total") <= 2 * sent
    assert delta("nv_inference_request_failure_total", reason="OTHER") == 2
    assert delta("nv_inference_request_failure_total", reason="BACKEND") == 0
    assert delta("nv_inference_request_duration_us_total") >= delta("nv_inference_queue_duration_us_total")
    assert delta("nv_inference_compute_infer_duration_us_total") > 0
    assert value(after, "nv_inference_pending_request_count", **m) == 0
    assert value(after, "nv_cpu_memory_total_bytes") > 0
    host = {"Level": "Host", "Hostname": __import__("socket").gethostname()}
    # HTTP answers: the 7 successes and the one 400 of the HTTP client (gRPC is not HTTP/1).
    # The parser spells counters with ``_total``; the wire has TorchServe's bare names.
    assert "# TYPE Requests2XX counter" in raw
    assert value(after, "Requests2XX_total", **host) - value(before, "Requests2XX_total",
                                                               **host) >= sent
    assert value(after, "Requests4XX_total", **host) - value(before, "Requests4XX_total",
                                                               **host) == 1
