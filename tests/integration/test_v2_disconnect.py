"""A client that hangs up frees its queue slot: its request is never run."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.server import ServerProcess
from tests.integration.conftest import SLOW_WIDTH

BUSY = 24  # full batches of 32 (each ~10 ms of work here)


def _stats(server: ServerProcess, model: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.base}/v2/models/{model}/stats", timeout=10) as resp:
        return dict(json.load(resp)["model_stats"][0])


def _pending(server: ServerProcess, model: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
        for family in text_string_to_metric_families(resp.read().decode()):
            if family.name == "capserve_pending_requests":
                return sum(s.value for s in family.samples if s.labels.get("model") == model)
    return 0.0


def _full_batch(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=120)
    x = httpclient.InferInput("x", [32, SLOW_WIDTH], "FP32")
    x.set_data_from_numpy(np.ones((32, SLOW_WIDTH), np.float32))
    client.infer("slow_batch", [x])
    client.close()


def test_http_client_that_disconnects_is_not_run(v2_server: ServerProcess) -> None:
    before = _stats(v2_server, "slow_batch")
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, SLOW_WIDTH], "datatype": "FP32",
                                   "data": [0.0] * SLOW_WIDTH}]}).encode()
    with ThreadPoolExecutor(8) as pool:
        # Full batches from eight clients keep the model's single instance busy ...
        busy = [pool.submit(_full_batch, v2_server) for _ in range(BUSY)]
        deadline = time.monotonic() + 30
        while _pending(v2_server, "slow_batch") < 5:  # one running, several queued
            assert time.monotonic() < deadline, "the busy batches never queued up"
            time.sleep(0.005)
        # ... while a raw client queues one more request and hangs up before its answer.
        with socket.create_connection(("127.0.0.1", v2_server.http_port), timeout=10) as sock:
            sock.sendall(b"POST /v2/models/slow_batch/infer HTTP/1.1\r\nHost: capserve\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
            time.sleep(0.005)
        for future in busy:
            future.result()
    time.sleep(0.3)
    after = _stats(v2_server, "slow_batch")
    assert int(after["execution_count"]) - int(before["execution_count"]) == BUSY
    assert int(after["inference_count"]) - int(before["inference_count"]) == BUSY * 32
