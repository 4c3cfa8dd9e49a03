"""OpenTelemetry traces sent to a real OTLP/HTTP receiver, configured only by OTEL_* variables.

For each dialect and transport, a request sent with a W3C ``traceparent`` yields a server span
of that trace whose parent is the caller's span, child spans for its decode, queue and encode,
and an ``execute`` span linked to it.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from serving.generated import torchserve_inference_pb2 as inf
from serving.generated import torchserve_inference_pb2_grpc as inf_grpc
from tests.helpers.otlp import ReceivedSpan, Receiver, start_receiver
from tests.helpers.server import ServerProcess, start_server

pytestmark = pytest.mark.integration

DIGIT = (Path(__file__).parents[1] / "data" / "images" / "digit7.png").read_bytes()
X = np.zeros((1, 1, 28, 28), np.float32)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def traced(default_store: Path, receiver: Receiver,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    store = tmp_path_factory.mktemp("traced") / "model_store"
    store.mkdir()
    shutil.copytree(default_store / "lenet", store / "lenet")
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint + "/v1/traces",
           "OTEL_SERVICE_NAME": "capserve-traced", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    server = start_server(store, tmp_path_factory.mktemp("traced-logs"), env=env)
    try:
        yield server
    finally:
        server.stop()


def _parent() -> tuple[str, str, str]:
    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def _check_trace(receiver: Receiver, trace_id: str, parent: str) -> ReceivedSpan:
    servers = receiver.wait_for(lambda s: s.trace_id == trace_id and s.parent_span_id == parent)
    assert len(servers) == 1, [s.name for s in receiver.spans if s.trace_id == trace_id]
    server = servers[0]
    assert server.kind == 2  # SPAN_KIND_SERVER
    assert server.service == "capserve-traced"
    assert server.attributes.get("capserve.model") == "lenet", server.attributes
    children = receiver.wait_for(lambda s: s.parent_span_id == server.span_id)
    names = {s.name for s in children}
    assert {"decode", "queue", "encode"} <= names, names
    linked = receiver.wait_for(lambda s: (trace_id, server.span_id) in s.links)
    assert [s.name for s in linked] == ["execute"], linked
    assert int(linked[0].attributes["capserve.batch_size"]) >= 1  # type: ignore[call-overload]
    return server


def test_v2_http_and_grpc_requests_continue_the_callers_trace(
        traced: ServerProcess, receiver: Receiver) -> None:
    trace_id, span_id, header = _parent()
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28],
                        "data": X.ravel().tolist()}]}
    r = httpx.post(traced.base + "/v2/models/lenet/infer", json=body, timeout=30,
                   headers={"traceparent": header, "tracestate": "vendor=1"})
    assert r.status_code == 200, r.text
    span = _check_trace(receiver, trace_id, span_id)
    assert span.attributes.get("capserve.status") == "OK"

    trace_id, span_id, header = _parent()
    client = grpcclient.InferenceServerClient(traced.grpc_url)
    inp = grpcclient.InferInput("input", [1, 1, 28, 28], "FP32")
    inp.set_data_from_numpy(X)
    client.infer("lenet", [inp], headers={"traceparent": header})
    _check_trace(receiver, trace_id, span_id)


def test_torchserve_http_and_grpc_requests_continue_the_callers_trace(
        traced: ServerProcess, receiver: Receiver) -> None:
    trace_id, span_id, header = _parent()
    r = httpx.post(traced.base + "/predictions/lenet", content=DIGIT, timeout=30,
                   headers={"traceparent": header})
    assert r.status_code == 200, r.text
    _check_trace(receiver, trace_id, span_id)

    trace_id, span_id, header = _parent()
    with grpc.insecure_channel(traced.grpc_url) as channel:
        inf_grpc.InferenceAPIsServiceStub(channel).Predictions(
            inf.PredictionsRequest(model_name="lenet", input={"data": DIGIT}),
            metadata=(("traceparent", header),))
    _check_trace(receiver, trace_id, span_id)


def test_a_failed_request_is_traced_with_its_status(
        traced: ServerProcess, receiver: Receiver) -> None:
    trace_id, span_id, header = _parent()
    r = httpx.post(traced.base + "/v2/models/lenet/infer", timeout=30,
                   headers={"traceparent": header},
                   json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3],
                                     "data": [1, 2, 3]}]})
    assert r.status_code == 400
    spans = receiver.wait_for(lambda s: s.trace_id == trace_id and s.parent_span_id == span_id)
    assert spans and spans[0].attributes.get("capserve.status") == "INVALID_ARGUMENT", spans
