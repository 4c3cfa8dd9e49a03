"""TorchServe dialect: a client that hangs up frees its queue slot, its image is never run;
hostile JSON bodies get a 400 before they are parsed into Python objects.

Like the v2 test (test_v2_disconnect.py), on a slow image classifier: 28x28 greyscale in, a
chain of identity matmuls inside, so queued work piles up behind one busy instance.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from serving.generated import torchserve_inference_pb2 as inf
from serving.generated import torchserve_inference_pb2_grpc as inf_grpc
from tests.helpers.server import ServerProcess, start_server
from tests.integration.conftest import _save
from tests.integration.test_v2_disconnect import _pending

WIDTH = 1024
DEPTH = 36
BUSY_CLIENTS = 8
IMAGES_PER_BUSY = 32
# Images (one pending request each) queued before the hang-up: four full batches ahead of it
# (each about 30 ms here at this depth), so its client is gone before an instance could take
# it. A gRPC hang-up (new channel, call, cancel) takes about 50 ms; with five images queued and
# a third of the depth, the queue could drain first and the request ran before its cancel came
# (a race in the test, measured: 63 pending at the hang-up, none 50 ms later).
QUEUED_AHEAD = 128


def _slow_classifier(model_dir: Path) -> None:
    rng = np.random.default_rng(0)
    init = [numpy_helper.from_array(rng.standard_normal((784, WIDTH)).astype(np.float32) * 0.01,
                                    "W"),
            numpy_helper.from_array(np.eye(WIDTH, dtype=np.float32), "I"),
            numpy_helper.from_array(rng.standard_normal((WIDTH, 10)).astype(np.float32), "O")]
    nodes = [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
             helper.make_node("MatMul", ["flat", "W"], ["h0"])]
    for i in range(DEPTH):
        nodes.append(helper.make_node("MatMul", [f"h{i}", "I"], [f"h{i + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"h{DEPTH}", "O"], ["logits"]))
    graph = helper.make_graph(
        nodes, "slow_digits",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=init)
    params = {"task": "classification", "input_color": "L", "input_height": "28",
              "input_width": "28", "resize": "exact", "output_semantics": "logits"}
    _save(model_dir, graph,
          'platform: "onnxruntime_onnx"\nmax_batch_size: 32\n'
          'input { name: "input" data_type: TYPE_FP32 dims: [ 1, 28, 28 ] }\n'
          'output { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] }\n'
          "instance_group [ { count: 1 } ]\n"
          "dynamic_batching { max_queue_delay_microseconds: 1000 "
          "default_queue_policy { max_queue_size: 1024 } }\n"
          + "".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
                    for k, v in params.items()))


@pytest.fixture(scope="module")
def ts_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("ts-disconnect") / "model_store"
    _slow_classifier(store / "slow_digits")
    server = start_server(store, tmp_path_factory.mktemp("ts-disconnect-logs"),
                          extra_args=["--shutdown-grace-seconds", "5"])
    try:
        yield server
    finally:
        server.stop()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (28, 28), 128).save(buf, format="PNG")
    return buf.getvalue()


def _inferences(server: ServerProcess) -> int:
    url = f"{server.base}/v2/models/slow_digits/stats"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return int(json.load(resp)["model_stats"][0].get("inference_count", 0))


def _busy(server: ServerProcess) -> None:
    files = [("data", (f"{i}.png", _png(), "image/png")) for i in range(IMAGES_PER_BUSY)]
    resp = httpx.post(f"{server.base}/predictions/slow_digits", files=files, timeout=120)
    assert resp.status_code == 200, resp.text


def _raw_png(path: str) -> bytes:
    body = _png()
    return (f"POST {path} HTTP/1.1\r\nHost: capserve\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _raw_v1(path: str) -> bytes:
    body = json.dumps({"instances": [{"data": base64.b64encode(_png()).decode()}]}).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: capserve\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _hang_up_while_busy(server: ServerProcess, hang_up: Callable[[], None]) -> None:
    """Run ``hang_up`` (queue one image, then leave) while the model is busy; the image must
    never run."""
    before = _inferences(server)
    with ThreadPoolExecutor(BUSY_CLIENTS) as pool:
        # Batches of images from several clients keep the single instance busy ...
        busy = [pool.submit(_busy, server) for _ in range(BUSY_CLIENTS)]
        deadline = time.monotonic() + 30
        while _pending(server, "slow_digits") < QUEUED_AHEAD:
            assert time.monotonic() < deadline, "the busy requests never queued up"
            time.sleep(0.005)
        # ... while a client queues one more image and hangs up before its answer.
        hang_up()
        results: list[Any] = [future.result() for future in busy]
    assert len(results) == BUSY_CLIENTS
    time.sleep(0.3)
    assert _inferences(server) - before == BUSY_CLIENTS * IMAGES_PER_BUSY


@pytest.mark.parametrize(("path", "request_bytes"), [
    ("/predictions/slow_digits", _raw_png),
    ("/predictions/slow_digits/1.0", _raw_png),
    ("/v1/models/slow_digits:predict", _raw_v1),
])
def test_client_that_disconnects_is_not_run(ts_server: ServerProcess, path: str,
                                            request_bytes: Callable[[str], bytes]) -> None:
    def hang_up() -> None:
        with socket.create_connection(("127.0.0.1", ts_server.http_port), timeout=10) as sock:
            sock.sendall(request_bytes(path))
            time.sleep(0.005)

    _hang_up_while_busy(ts_server, hang_up)


def test_grpc_call_cancelled_by_its_client_is_not_run(ts_server: ServerProcess) -> None:
    def hang_up() -> None:
        with grpc.insecure_channel(ts_server.grpc_url) as channel:
            stub = inf_grpc.InferenceAPIsServiceStub(channel)
            call = stub.Predictions.future(
                inf.PredictionsRequest(model_name="slow_digits", input={"data": _png()}))
            time.sleep(0.02)
            call.cancel()

    _hang_up_while_busy(ts_server, hang_up)


@pytest.mark.parametrize(("path", "body", "needle"), [
    ("/predictions/slow_digits", b"[" * 3000 + b"]" * 3000, "nested too deeply"),
    ("/predictions/slow_digits", b"[" + b"[]," * 300_000 + b"[]]", "over the limit of 4096"),
    ("/v1/models/slow_digits:predict", b'{"instances": [' + b"{}," * 5000 + b"{}]}",
     "over the limit of 4096"),
    ("/v1/models/slow_digits:predict",
     json.dumps({"instances": [base64.b64encode(_png()).decode()] * 65}).encode(),
     "65 instances in one request; the limit is 64"),
])
def test_hostile_json_bodies_get_a_400(ts_server: ServerProcess, path: str, body: bytes,
                                       needle: str) -> None:
    resp = httpx.post(f"{ts_server.base}{path}", content=body, timeout=30,
                      headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    assert needle in resp.json()["message"]
