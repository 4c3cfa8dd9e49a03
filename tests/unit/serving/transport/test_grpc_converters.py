"""v2 protobuf <-> neutral types: raw/typed contents, parameters, responses, JSON forms."""

from __future__ import annotations

import numpy as np
import pytest

from serving.core.stats import ModelStats, StatDuration
from serving.core.types import InferResponse, Tensor
from serving.errors import InvalidInput
from serving.generated import grpc_service_pb2 as pb
from serving.transport import grpc_converters as conv


def _request() -> pb.ModelInferRequest:
    msg = pb.ModelInferRequest(model_name="m", id="abc")
    msg.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    msg.parameters["priority"].uint64_param = 2
    msg.parameters["timeout"].int64_param = 1500
    out = msg.outputs.add(name="y")
    out.parameters["classification"].int64_param = 3
    return msg


def test_raw_contents() -> None:
    msg = _request()
    msg.raw_input_contents.append(np.array([1.5, -2], "<f4").tobytes())
    req = conv.infer_request_to_types(msg)
    np.testing.assert_array_equal(req.inputs[0].data, [[1.5, -2]])
    assert req.parameters == {"priority": 2, "timeout": 1500}
    assert req.outputs[0].class_count == 3 and req.id == "abc"


def test_typed_contents_and_no_mixing() -> None:
    msg = _request()
    msg.inputs[0].contents.fp32_contents.extend([1.5, -2])
    np.testing.assert_array_equal(conv.infer_request_to_types(msg).inputs[0].data, [[1.5, -2]])
    msg.raw_input_contents.append(b"\0" * 8)
    with pytest.raises(InvalidInput, match="not both"):
        conv.infer_request_to_types(msg)


def test_typed_count_mismatch() -> None:
    msg = _request()
    msg.inputs[0].contents.fp32_contents.extend([1.5])
    with pytest.raises(InvalidInput, match="1 elements.*needs 2"):
        conv.infer_request_to_types(msg)


def test_response_always_raw() -> None:
    strings = np.array([b"0.9:1:one"], dtype=object).reshape(1, 1)
    resp = InferResponse("m", "1", [Tensor("y", "FP32", (1, 2), np.array([[1, 2]], np.float32)),
                                    Tensor("c", "BYTES", (1, 1), strings)], id="abc")
    msg = conv.infer_response_from_types(resp)
    assert msg.id == "abc" and [o.name for o in msg.outputs] == ["y", "c"]
    assert not msg.outputs[0].HasField("contents")
    assert msg.raw_output_contents[0] == np.array([1, 2], "<f4").tobytes()
    assert msg.raw_output_contents[1] == b"\x09\x00\x00\x000.9:1:one"


def test_statistics_json_numbers() -> None:
    stats = [ModelStats(name="m", version="1", inference_count=3, execution_count=2,
                        success=StatDuration(2, 5_000_000_000_000), queue=StatDuration(2, 10))]
    doc = conv.message_to_json_dict(conv.statistics_from_types(stats))
    entry = doc["model_stats"][0]
    assert entry["inference_count"] == 3 and entry["version"] == "1"
    assert entry["inference_stats"]["success"] == {"count": 2, "ns": 5_000_000_000_000}
    assert entry["inference_stats"]["cache_hit"] == {"count": 0, "ns": 0}
