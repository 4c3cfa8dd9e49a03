"""The generated protobuf code: up to date with proto/, config.pbtxt text format, and wire
compatibility with the copies tritonclient and TorchServe clients are built from."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from google.protobuf import descriptor, message, text_format
from tritonclient.grpc import model_config_pb2 as tc_config
from tritonclient.grpc import service_pb2 as tc_service

from export.generated import model_config_pb2 as export_config
from serving.generated import grpc_service_pb2 as service
from serving.generated import grpc_service_pb2_grpc as service_grpc
from serving.generated import (
    health_pb2,
    model_config_pb2,
    torchserve_inference_pb2,
    torchserve_management_pb2,
)

ROOT = Path(__file__).resolve().parents[2]

# Hand-written in the style of a Triton model repository, touching the parts capserve reads.
CONFIG_PBTXT = """
name: "lenet"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
version_policy {
  specific {
    versions: 1
    versions: 3
  }
}
max_batch_size: 32
input {
  name: "input"
  data_type: TYPE_FP32
  format: FORMAT_NCHW
  dims: 1
  dims: -1
  dims: -1
  allow_ragged_batch: false
  optional: true
}
output {
  name: "logits"
  data_type: TYPE_FP32
  dims: 10
  label_filename: "labels.txt"
}
output {
  name: "caption"
  data_type: TYPE_STRING
  dims: 1
  reshape {
  }
}
dynamic_batching {
  preferred_batch_size: 8
  preferred_batch_size: 16
  max_queue_delay_microseconds: 2000
  preserve_ordering: true
  priority_levels: 2
  default_priority_level: 2
  default_queue_policy {
    timeout_action: DELAY
    default_timeout_microseconds: 100000
    allow_timeout_override: true
    max_queue_size: 64
  }
  priority_queue_policy {
    key: 1
    value {
      max_queue_size: 8
    }
  }
}
instance_group {
  name: "cpu_pool"
  kind: KIND_CPU
  count: 2
}
instance_group {
  kind: KIND_GPU
  count: 1
  gpus: 0
  rate_limiter {
    resources {
      name: "R1"
      global: true
      count: 2
    }
  }
}
parameters {
  key: "task"
  value {
    string_value: "classification"
  }
}
model_warmup {
  name: "zeros"
  batch_size: 1
  inputs {
    key: "input"
    value {
      data_type: TYPE_FP32
      dims: 1
      dims: 28
      dims: 28
      zero_data: true
    }
  }
}
response_cache {
  enable: false
}
"""


def test_checked_in_code_matches_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--check"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_config_pbtxt_round_trips_through_text_format() -> None:
    config = text_format.Parse(CONFIG_PBTXT, model_config_pb2.ModelConfig())

    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    batching = config.dynamic_batching
    assert batching.default_queue_policy.timeout_action == model_config_pb2.ModelQueuePolicy.DELAY
    assert batching.priority_queue_policy[1].max_queue_size == 8
    assert list(config.version_policy.specific.versions) == [1, 3]
    assert config.input[0].format == model_config_pb2.ModelInput.FORMAT_NCHW
    assert list(config.input[0].dims) == [1, -1, -1]
    assert config.output[0].label_filename == "labels.txt"
    assert config.output[1].data_type == model_config_pb2.TYPE_STRING
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.instance_group[1].rate_limiter.resources[0].count == 2
    assert config.parameters["task"].string_value == "classification"
    assert config.model_warmup[0].inputs["input"].zero_data

    printed = text_format.MessageToString(config)
    assert text_format.Parse(printed, model_config_pb2.ModelConfig()) == config
    # export writes config.pbtxt with its own copy; serving must read it identically.
    exported = text_format.Parse(printed, export_config.ModelConfig())
    assert exported.SerializeToString(deterministic=True) == config.SerializeToString(
        deterministic=True
    )


def test_unknown_config_field_is_rejected_by_name() -> None:
    with pytest.raises(text_format.ParseError, match="max_batch_sise"):
        text_format.Parse("max_batch_sise: 4", model_config_pb2.ModelConfig())


@pytest.mark.parametrize(
    ("message_type", "field", "number"),
    [
        (service.ModelInferRequest, "raw_input_contents", 7),
        (service.ModelInferResponse, "raw_output_contents", 6),
        (service.InferParameter, "double_param", 4),
        (service.InferParameter, "uint64_param", 5),
        (service.RepositoryModelLoadRequest, "model_name", 2),
        (service.ModelStatistics, "response_stats", 9),
        (model_config_pb2.ModelConfig, "dynamic_batching", 11),
        (model_config_pb2.ModelConfig, "model_metrics", 26),
        (model_config_pb2.ModelInput, "optional", 8),
        (torchserve_inference_pb2.PredictionsRequest, "input", 3),
        (torchserve_inference_pb2.PredictionResponse, "status", 3),
        (torchserve_management_pb2.RegisterModelRequest, "url", 9),
        (health_pb2.HealthCheckResponse, "status", 1),
    ],
)
def test_key_field_numbers(message_type: type[message.Message], field: str, number: int) -> None:
    assert message_type.DESCRIPTOR.fields_by_name[field].number == number


def _assert_same_schema(ours: descriptor.Descriptor, theirs: descriptor.Descriptor) -> None:
    """Every field of tritonclient's message exists in ours with the same number and type."""
    for name, their_field in theirs.fields_by_name.items():
        assert name in ours.fields_by_name, f"{ours.full_name} lacks {name}"
        our_field = ours.fields_by_name[name]
        assert (our_field.number, our_field.type) == (their_field.number, their_field.type), (
            f"{ours.full_name}.{name}"
        )
        if their_field.message_type is not None:
            assert our_field.message_type is not None, f"{ours.full_name}.{name}"
            _assert_same_schema(our_field.message_type, their_field.message_type)


def test_schema_is_a_superset_of_tritonclients() -> None:
    for name in tc_service.DESCRIPTOR.message_types_by_name:
        _assert_same_schema(
            service.DESCRIPTOR.message_types_by_name[name],
            tc_service.DESCRIPTOR.message_types_by_name[name],
        )
    for name in tc_config.DESCRIPTOR.message_types_by_name:
        _assert_same_schema(
            model_config_pb2.DESCRIPTOR.message_types_by_name[name],
            tc_config.DESCRIPTOR.message_types_by_name[name],
        )
    their_rpcs = tc_service.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    our_rpcs = service.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    assert set(their_rpcs) <= set(our_rpcs)


def test_tritonclient_request_parses_with_ours() -> None:
    theirs = tc_service.ModelInferRequest(model_name="lenet", model_version="1", id="req-7")
    theirs.parameters["priority"].uint64_param = 2
    theirs.parameters["timeout"].int64_param = 5000
    tensor = theirs.inputs.add(name="input", datatype="FP32", shape=[2, 1, 28, 28])
    tensor.parameters["binary_data_size"].int64_param = 6272
    theirs.outputs.add(name="logits").parameters["classification"].int64_param = 3
    theirs.raw_input_contents.append(np.arange(2 * 28 * 28, dtype=np.float32).tobytes())

    ours = service.ModelInferRequest.FromString(theirs.SerializeToString())

    assert text_format.MessageToString(ours) == text_format.MessageToString(theirs)
    assert ours.parameters["priority"].WhichOneof("parameter_choice") == "uint64_param"
    assert ours.SerializeToString(deterministic=True) == theirs.SerializeToString(
        deterministic=True
    )


def _round_trip_to_tritonclient(ours: message.Message, their_type: type[message.Message]) -> None:
    wire = ours.SerializeToString(deterministic=True)
    theirs = their_type.FromString(wire)
    assert text_format.MessageToString(theirs) == text_format.MessageToString(ours)
    assert theirs.SerializeToString(deterministic=True) == wire


def test_our_responses_parse_with_tritonclient() -> None:
    response = service.ModelInferResponse(model_name="lenet", model_version="1", id="req-7")
    response.outputs.add(name="logits", datatype="FP32", shape=[1, 10])
    response.raw_output_contents.append(np.ones(10, dtype=np.float32).tobytes())
    response.parameters["sequence_end"].bool_param = True
    response.parameters["scale"].double_param = 0.5
    _round_trip_to_tritonclient(response, tc_service.ModelInferResponse)

    config_response = service.ModelConfigResponse()
    text_format.Parse(CONFIG_PBTXT, config_response.config)
    _round_trip_to_tritonclient(config_response, tc_service.ModelConfigResponse)

    stats = service.ModelStatisticsResponse()
    model = stats.model_stats.add(name="lenet", version="1", inference_count=12, execution_count=3)
    model.last_inference = 1_700_000_000_000
    model.inference_stats.success.count = 12
    model.inference_stats.queue.ns = 48_000
    model.batch_stats.add(batch_size=4).compute_infer.ns = 900_000
    model.memory_usage.add(type="CPU", id=0, byte_size=1 << 20)
    model.response_stats["0"].success.count = 12
    _round_trip_to_tritonclient(stats, tc_service.ModelStatisticsResponse)


class _EchoInference(service_grpc.GRPCInferenceServiceServicer):
    """Just enough of a server to prove tritonclient's own stub talks to ours."""

    def ServerLive(
        self, request: service.ServerLiveRequest, context: grpc.ServicerContext
    ) -> service.ServerLiveResponse:
        return service.ServerLiveResponse(live=True)

    def ModelInfer(
        self, request: service.ModelInferRequest, context: grpc.ServicerContext
    ) -> service.ModelInferResponse:
        data = np.frombuffer(request.raw_input_contents[0], dtype=np.float32) * 2
        response = service.ModelInferResponse(model_name=request.model_name, id=request.id)
        response.outputs.add(name="doubled", datatype="FP32", shape=request.inputs[0].shape)
        response.raw_output_contents.append(data.tobytes())
        return response


@pytest.fixture()
def echo_server() -> Iterator[str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    service_grpc.add_GRPCInferenceServiceServicer_to_server(_EchoInference(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(grace=None)


def test_tritonclient_calls_our_generated_service(echo_server: str) -> None:
    client = triton_grpc.InferenceServerClient(url=echo_server)
    try:
        assert client.is_server_live()
        tensor = triton_grpc.InferInput("input", [2, 3], "FP32")
        tensor.set_data_from_numpy(np.arange(6, dtype=np.float32).reshape(2, 3))
        result = client.infer("echo", [tensor], request_id="r1")
        np.testing.assert_array_equal(
            result.as_numpy("doubled"), np.arange(6, dtype=np.float32).reshape(2, 3) * 2
        )
        assert result.get_response().id == "r1"
        # RPCs the servicer does not implement fail cleanly rather than hanging.
        with pytest.raises(triton_grpc.InferenceServerException, match="UNIMPLEMENTED"):
            client.get_server_metadata()
    finally:
        client.close()
