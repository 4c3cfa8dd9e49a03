"""Large tensors cross the ordinary wire without copies: gRPC raw contents and HTTP binary data
are numpy views of the received buffer; outputs are copied once, into the body that is sent."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError

from serving.core.types import InferResponse, Tensor
from serving.errors import InvalidInput
from serving.generated import grpc_service_pb2 as pb
from serving.transport import grpc_converters as conv
from serving.transport import http_codec as codec
from serving.transport.grpc_wire import (
    SPLIT_MAX_FIELDS,
    InferRequestDecoder,
    WireInferRequest,
    WireStreamResponse,
)

SHAPE = (1, 3, 64, 128)  # 96 KiB of FP32, past the split threshold


def _request(*arrays: np.ndarray, model: str = "ident") -> bytes:
    msg = pb.ModelInferRequest(model_name=model, id="r1")
    for i, arr in enumerate(arrays):
        msg.inputs.add(name=f"in{i}", datatype="FP32", shape=arr.shape)
        msg.raw_input_contents.append(arr.astype("<f4").tobytes())
    msg.outputs.add(name="out")
    return msg.SerializeToString()


def _received_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.uint8)


def test_raw_inputs_are_views_of_the_received_message() -> None:
    a = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    b = -a
    data = _request(a, b)
    decoded = InferRequestDecoder().FromString(data)
    assert isinstance(decoded, WireInferRequest)
    request = conv.infer_request_to_types(decoded)
    assert request.model_name == "ident" and request.id == "r1"
    assert [t.name for t in request.inputs] == ["in0", "in1"]
    assert [o.name for o in request.outputs] == ["out"]
    for tensor, expected in zip(request.inputs, (a, b), strict=True):
        np.testing.assert_array_equal(tensor.data, expected)
        assert np.shares_memory(tensor.data, _received_bytes(data)), "the input was copied"


def test_a_raw_input_of_the_wrong_size_is_refused_before_it_is_read() -> None:
    msg = pb.ModelInferRequest(model_name="ident")
    msg.inputs.add(name="x", datatype="FP32", shape=[1, 3, 64, 128])
    msg.raw_input_contents.append(b"\0" * (3 * 64 * 128 * 4 - 4))
    decoded = InferRequestDecoder().FromString(msg.SerializeToString())
    with pytest.raises(InvalidInput, match="unexpected total byte size"):
        conv.infer_request_to_types(decoded)


def test_what_the_split_cannot_handle_is_protobufs_to_decide() -> None:
    decoder = InferRequestDecoder()
    small = pb.ModelInferRequest(model_name="m").SerializeToString()
    assert isinstance(decoder.FromString(small), pb.ModelInferRequest)
    truncated = _request(np.zeros(SHAPE, np.float32))[:-5]
    with pytest.raises(DecodeError):
        decoder.FromString(truncated)
    # Many tiny fields: left to the C parser instead of a long Python loop.
    many = pb.ModelInferRequest(model_name="m")
    for _ in range(SPLIT_MAX_FIELDS + 1):
        many.outputs.add(name="o" * 20)
    assert isinstance(decoder.FromString(many.SerializeToString()), pb.ModelInferRequest)


def _response(arr: np.ndarray) -> InferResponse:
    return InferResponse("ident", "1", [
        Tensor(name="out", datatype="FP32", shape=arr.shape, data=arr),
        Tensor(name="tag", datatype="BYTES", shape=(1,), data=np.array([b"ok"], dtype=object)),
    ], id="r1")


def test_grpc_outputs_are_views_until_the_one_copy_of_serializing() -> None:
    arr = np.linspace(0, 1, int(np.prod(SHAPE)), dtype=np.float32).reshape(SHAPE)
    wire = conv.infer_response_to_wire(_response(arr))
    assert np.shares_memory(np.frombuffer(wire.raw[0], np.uint8), arr)
    parsed = pb.ModelInferResponse.FromString(wire.SerializeToString())
    assert parsed == conv.infer_response_from_types(_response(arr))
    np.testing.assert_array_equal(
        np.frombuffer(parsed.raw_output_contents[0], "<f4").reshape(SHAPE), arr)
    streamed = pb.ModelStreamInferResponse.FromString(WireStreamResponse(wire).SerializeToString())
    assert streamed.infer_response == parsed and not streamed.error_message


def test_http_binary_inputs_are_views_of_the_body_and_outputs_round_trip() -> None:
    arr = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    header = {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(SHAPE),
                          "parameters": {"binary_data_size": arr.nbytes}}]}
    head = codec._dumps(header)
    body = head + arr.tobytes()
    header_bytes, binary = codec.split_body(body, str(len(head)))
    decoded = codec.decode_infer_request("ident", "", codec.parse_json_body(header_bytes), binary)
    data = decoded.request.inputs[0].data
    np.testing.assert_array_equal(data, arr)
    assert np.shares_memory(data, np.frombuffer(body, np.uint8)), "the input was copied"

    out, json_length = codec.encode_infer_response(_response(arr), True, {})
    assert json_length is not None
    assert np.frombuffer(out[json_length:json_length + arr.nbytes], "<f4").tolist() == \
        arr.reshape(-1).tolist()
