"""Integration fixtures: a tiny model store built with the onnx helper, and running servers.

The tiny models are real ONNX files run by the real server; they exist so the v2 conformance
tests cover what the default store does not (BYTES, INT32, two inputs/outputs, a slow model for
queue-full, timeout and drain) and stay fast on two shared CPU cores.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from tests.helpers.server import ServerProcess, start_server

API_TOKEN = "capserve-test-token-0123456789"
SLOW_WIDTH = 1024


def _save(model_dir: Path, graph: onnx.GraphProto, config: str, labels: list[str] | None = None) -> None:
    (model_dir / "1").mkdir(parents=True)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(model_dir / "1" / "model.onnx"))
    (model_dir / "config.pbtxt").write_text(config)
    if labels is not None:
        (model_dir / "labels.txt").write_text("\n".join(labels) + "\n")


def _simple(model_dir: Path) -> None:
    """Triton's classic 'simple' model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""
    vi = [helper.make_tensor_value_info(n, TensorProto.INT32, ["N", 16])
          for n in ("INPUT0", "INPUT1", "OUTPUT0", "OUTPUT1")]
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
         helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])],
        "simple", vi[:2], vi[2:],
    )
    tensors = "\n".join(
        f'{kind} {{ name: "{n}" data_type: TYPE_INT32 dims: [ 16 ] }}'
        for kind, n in (("input", "INPUT0"), ("input", "INPUT1"), ("output", "OUTPUT0"), ("output", "OUTPUT1"))
    )
    _save(model_dir, graph, f'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n{tensors}\n'
          "dynamic_batching { max_queue_delay_microseconds: 500 }\n")


def _strings(model_dir: Path) -> None:
    x = helper.make_tensor_value_info("INPUT0", TensorProto.STRING, ["N", 1])
    y = helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, ["N", 1])
    graph = helper.make_graph([helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "strings", [x], [y])
    _save(model_dir, graph, 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
          'input { name: "INPUT0" data_type: TYPE_STRING dims: [ 1 ] }\n'
          'output { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 1 ] }\n')


def _classifier(model_dir: Path) -> None:
    """A LeNet-shaped linear classifier: input [1, 28, 28] -> logits [10], with labels."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((784, 10)).astype(np.float32) * 0.05, "W")
    b = numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "B")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "W"], ["mm"]),
         helper.make_node("Add", ["mm", "B"], ["logits"])],
        "classifier", [x], [y], initializer=[w, b],
    )
    _save(model_dir, graph, 'platform: "onnxruntime_onnx"\nmax_batch_size: 32\n'
          'input { name: "input" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 1, 28, 28 ] }\n'
          'output { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" }\n'
          "dynamic_batching { max_queue_delay_microseconds: 2000 }\n"
          'instance_group [ { count: 1, kind: KIND_CPU } ]\n',
          labels=[f"digit_{i}" for i in range(10)])


def _resnet_sized(model_dir: Path) -> None:
    """ResNet's tensor shapes, not its work: [3, 224, 224] -> pooled -> linear -> logits [1000]."""
    rng = np.random.default_rng(2)
    w = numpy_helper.from_array(rng.standard_normal((3, 1000)).astype(np.float32), "W")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "W"], ["logits"])],
        "resnet_sized", [x], [y], initializer=[w],
    )
    _save(model_dir, graph, 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
          'input { name: "input" data_type: TYPE_FP32 dims: [ 3, 224, 224 ] }\n'
          'output { name: "logits" data_type: TYPE_FP32 dims: [ 1000 ] }\n')


def _slow(model_dir: Path, depth: int, config_tail: str) -> None:
    """``y = x @ I @ I ...`` (depth identity matmuls): exact output, tunable compute time."""
    eye = numpy_helper.from_array(np.eye(SLOW_WIDTH, dtype=np.float32), "I")
    nodes, prev = [], "x"
    for i in range(depth):
        out = "y" if i == depth - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, "I"], [out]))
        prev = out
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", SLOW_WIDTH])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", SLOW_WIDTH])
    graph = helper.make_graph(nodes, model_dir.name, [x], [y], initializer=[eye])
    _save(model_dir, graph, 'platform: "onnxruntime_onnx"\n'
          f'input {{ name: "x" data_type: TYPE_FP32 dims: [ {SLOW_WIDTH} ] }}\n'
          f'output {{ name: "y" data_type: TYPE_FP32 dims: [ {SLOW_WIDTH} ] }}\n' + config_tail)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("tiny") / "model_store"
    _simple(store / "simple")
    _strings(store / "strings")
    _classifier(store / "classifier")
    _resnet_sized(store / "resnet_sized")
    # One executor, one request per execution, at most 2 waiting: queue-full and timeouts.
    _slow(store / "slow", 48, "max_batch_size: 1\ninstance_group [ { count: 1 } ]\n"
          "dynamic_batching { default_queue_policy { max_queue_size: 2 allow_timeout_override: true } }\n")
    # Batches of up to 32 requests: the drain test keeps many requests queued at once.
    _slow(store / "slow_batch", 12, "max_batch_size: 32\ninstance_group [ { count: 1 } ]\n"
          "dynamic_batching { max_queue_delay_microseconds: 1000 }\n")
    return store


@pytest.fixture(scope="session")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("secret") / "token"
    path.write_text(API_TOKEN + "\n")
    os.chmod(path, 0o600)
    return path


@pytest.fixture(scope="session")
def v2_server(tiny_store: Path, token_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server on the tiny store for the conformance tests (model control on, token set)."""
    server = start_server(
        tiny_store, tmp_path_factory.mktemp("v2-logs"),
        extra_args=["--enable-model-control", "--api-token-file", str(token_file),
                    "--shutdown-grace-seconds", "5"],
    )
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- v2 client helpers
# One API over tritonclient's grpc and http flavours, shared by the test_v2_* modules.

FLAVOURS = ["grpc", "http"]
GRPC_CODE = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 503: "UNAVAILABLE", 500: "INTERNAL",
             501: "UNIMPLEMENTED", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
             413: "RESOURCE_EXHAUSTED"}


def one_model_store(model_dir: Path, tmp: Path) -> Path:
    """A store under ``tmp`` holding a copy of one model folder."""
    store = tmp / "model_store"
    store.mkdir()
    shutil.copytree(model_dir, store / model_dir.name)
    return store


@contextlib.contextmanager
def two_worker_server(store: Path, token_file: Path, logs: Path) -> Iterator[ServerProcess]:
    """A server of two worker processes on ``store``, model control behind the token."""
    server = start_server(store, logs, extra_args=[
        "--workers", "2", "--enable-model-control", "--api-token-file", str(token_file)])
    try:
        yield server
    finally:
        server.stop()


def module(flavour: str) -> ModuleType:
    return grpcclient if flavour == "grpc" else httpclient


def make_client(flavour: str, server: ServerProcess, **kwargs: Any) -> Any:
    if flavour == "grpc":
        return grpcclient.InferenceServerClient(server.grpc_url, **kwargs)
    return httpclient.InferenceServerClient(server.http_url, **kwargs)


def make_input(flavour: str, name: str, arr: np.ndarray, datatype: str, binary: bool = True) -> Any:
    inp = module(flavour).InferInput(name, list(arr.shape), datatype)
    if flavour == "http":
        inp.set_data_from_numpy(arr, binary_data=binary)
    else:
        inp.set_data_from_numpy(arr)
    return inp


def make_output(flavour: str, name: str, binary: bool = True, class_count: int = 0) -> Any:
    if flavour == "http":
        return httpclient.InferRequestedOutput(name, binary_data=binary, class_count=class_count)
    return grpcclient.InferRequestedOutput(name, class_count=class_count)


def assert_error(exc: pytest.ExceptionInfo[InferenceServerException], flavour: str, http_status: int,
                 match: str = "") -> None:
    """The status the protocol brief gives, in the flavour's own spelling, and the message."""
    status = exc.value.status()
    if flavour == "http":
        assert status == str(http_status), (status, exc.value.message())
    else:
        assert status == f"StatusCode.{GRPC_CODE[http_status]}", (status, exc.value.message())
    if match:
        assert match in (exc.value.message() or ""), exc.value.message()


# Every v2 conformance test runs once per tritonclient flavour (grpc, http).

@pytest.fixture(params=FLAVOURS)
def flavour(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def client(flavour: str, v2_server: ServerProcess) -> Any:
    c = make_client(flavour, v2_server)
    yield c
    c.close()
