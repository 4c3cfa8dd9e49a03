"""The ordinary wire beside shared memory: tensors past the split threshold of grpc_wire
(raw_input_contents kept as views of the received message, outputs joined once) and the HTTP
binary extension, through unmodified tritonclient on the conformance server."""

from __future__ import annotations

import queue
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from serving.transport.grpc_wire import SPLIT_MIN_BYTES
from tests.helpers.server import ServerProcess
from tests.integration.conftest import SLOW_WIDTH, make_client, make_input, make_output

pytestmark = pytest.mark.integration

MODEL = "slow_batch"  # y = x through identity matmuls: the answer is the input, exactly


def _batch(seed: int) -> np.ndarray:
    arr = np.random.default_rng(seed).standard_normal((32, SLOW_WIDTH), dtype=np.float32)
    assert arr.nbytes > SPLIT_MIN_BYTES  # the split path, not protobuf's parser
    return arr


def test_a_large_tensor_round_trips_over_grpc_and_http_binary(
        flavour: str, client: Any) -> None:
    arr = _batch(1)
    result = client.infer(MODEL, [make_input(flavour, "x", arr, "FP32")],
                          outputs=[make_output(flavour, "y")])
    np.testing.assert_array_equal(result.as_numpy("y"), arr)


def test_large_tensors_round_trip_over_a_grpc_stream(v2_server: ServerProcess) -> None:
    answers: queue.Queue[Any] = queue.Queue()
    client = make_client("grpc", v2_server)
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        sent = {}
        for i in range(3):
            sent[str(i)] = arr = _batch(10 + i)
            inp = grpcclient.InferInput("x", list(arr.shape), "FP32")
            inp.set_data_from_numpy(arr)
            client.async_stream_infer(MODEL, [inp], request_id=str(i))
        for _ in sent:
            result, error = answers.get(timeout=60)
            assert error is None, error
            rid = result.get_response().id
            np.testing.assert_array_equal(result.as_numpy("y"), sent[rid])
    finally:
        client.stop_stream()
        client.close()
