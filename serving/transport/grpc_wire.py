"""ModelInfer on the wire without copies of the tensor bytes.

Protobuf copies every ``bytes`` field twice on the way in (into its arena when parsing, into a
new Python object each time the field is read) and twice on the way out. For a 37 MiB image
batch those copies are most of the time a request spends in the transport.

In: :class:`InferRequestDecoder` splits the received message at its top level. The small
fields are parsed by protobuf as usual; each ``raw_input_contents`` entry stays a
``memoryview`` of the buffer grpc handed over, and ``np.frombuffer`` on it is a view.

Out: :class:`WireInferResponse` is the response message without ``raw_output_contents`` plus
the output arrays; its serializer writes the field tags itself and joins everything into the
one ``bytes`` grpc sends, so each output byte is copied once.

Anything unusual on the way in (groups, a truncated field, very many fields) goes to
protobuf's own parser, which gives its usual answer or error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc

from serving.generated import grpc_service_pb2 as pb

_RAW_INPUT_FIELD = 7  # ModelInferRequest.raw_input_contents
_RAW_OUTPUT_TAG = bytes([(6 << 3) | 2])  # ModelInferResponse.raw_output_contents, length-delimited
_INFER_RESPONSE_TAG = bytes([(2 << 3) | 2])  # ModelStreamInferResponse.infer_response
# Below this size protobuf's C parser is faster than any split; above it the copies dominate.
SPLIT_MIN_BYTES = 64 * 1024
# A message of many tiny fields is left to the C parser: the split is a Python loop per field.
SPLIT_MAX_FIELDS = 4096


class _Unsplittable(Exception):
    """The bytes are not a message this splitter handles; protobuf's parser decides."""


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Unsplittable
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _field_end(data: memoryview, wire_type: int, pos: int) -> tuple[int, int]:
    """(start of the payload, end of the field) for a field whose tag ends at ``pos``."""
    if wire_type == 0:
        return pos, _varint(data, pos)[1]
    if wire_type == 1:
        return pos, pos + 8
    if wire_type == 5:
        return pos, pos + 4
    if wire_type == 2:
        length, start = _varint(data, pos)
        return start, start + length
    raise _Unsplittable  # groups (3/4) and invalid wire types


def split_request(data: bytes) -> tuple[bytes, list[memoryview]]:
    """The message without its raw_input_contents, and those entries as views of ``data``."""
    view = memoryview(data)
    rest: list[memoryview] = []
    raw: list[memoryview] = []
    pos = fields = 0
    while pos < len(view):
        fields += 1
        if fields > SPLIT_MAX_FIELDS:
            raise _Unsplittable
        begin = pos
        tag, pos = _varint(view, pos)
        start, pos = _field_end(view, tag & 7, pos)
        if pos > len(view):
            raise _Unsplittable
        if tag >> 3 == _RAW_INPUT_FIELD and tag & 7 == 2:
            raw.append(view[start:pos])
        else:
            rest.append(view[begin:pos])
    return b"".join(rest), raw


class WireInferRequest:
    """A ``ModelInferRequest`` whose raw_input_contents are views of the received buffer.

    Every other field is read from the parsed ``message``.
    """

    __slots__ = ("message", "raw_input_contents", "wire")

    def __init__(self, message: pb.ModelInferRequest, raw: list[memoryview],
                 wire: bytes = b"") -> None:
        self.message = message
        self.raw_input_contents = raw
        self.wire = wire  # the message as received (what a forward to another worker sends)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)


class InferRequestDecoder:
    """The request deserializer of ModelInfer and ModelStreamInfer.

    ``DESCRIPTOR`` names the message in the errors of a request that does not decode.
    """

    DESCRIPTOR = pb.ModelInferRequest.DESCRIPTOR

    def FromString(self, data: bytes) -> pb.ModelInferRequest | WireInferRequest:
        if len(data) < SPLIT_MIN_BYTES:
            return pb.ModelInferRequest.FromString(data)
        try:
            rest, raw = split_request(data)
        except _Unsplittable:
            return pb.ModelInferRequest.FromString(data)
        message = pb.ModelInferRequest.FromString(rest)
        return WireInferRequest(message, raw, data) if raw else message


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class WireInferResponse:
    """A ``ModelInferResponse`` (without raw_output_contents) and the raw outputs it carries."""

    __slots__ = ("message", "raw")

    def __init__(self, message: pb.ModelInferResponse, raw: list[bytes | memoryview]) -> None:
        self.message = message
        self.raw = raw

    def __getattr__(self, name: str) -> Any:  # the other fields, as on the message
        return getattr(self.message, name)

    @property
    def raw_output_contents(self) -> list[bytes]:
        """The outputs as protobuf would give them (copies; for inspection, not the wire)."""
        return [bytes(c) for c in self.raw]

    def pieces(self) -> list[bytes | memoryview]:
        parts: list[bytes | memoryview] = [self.message.SerializeToString()]
        for chunk in self.raw:
            parts += [_RAW_OUTPUT_TAG, _varint_bytes(len(chunk)), chunk]
        return parts

    def SerializeToString(self) -> bytes:
        return b"".join(self.pieces())

    def to_message(self) -> pb.ModelInferResponse:
        """The plain protobuf message (copies the outputs; for callers that need one)."""
        msg = pb.ModelInferResponse()
        msg.CopyFrom(self.message)
        msg.raw_output_contents.extend(bytes(c) for c in self.raw)
        return msg


def request_bytes(message: pb.ModelInferRequest | WireInferRequest) -> bytes:
    """The request as it came over the wire (a small message is serialized again)."""
    if isinstance(message, WireInferRequest):
        return message.wire or message.message.SerializeToString()
    data: bytes = message.SerializeToString()
    return data


class RawInferResponse:
    """An already serialized ``ModelInferResponse`` (another worker's answer), sent as is."""

    __slots__ = ("data", "worker")

    def __init__(self, data: bytes, worker: int) -> None:
        self.data = data
        self.worker = worker  # the worker that ran it

    def pieces(self) -> list[bytes | memoryview]:
        return [self.data]

    def SerializeToString(self) -> bytes:
        return self.data


class WireStreamResponse:
    """A ``ModelStreamInferResponse`` holding a :class:`WireInferResponse`."""

    __slots__ = ("infer_response",)
    error_message = ""  # a failed request of the stream is answered with a plain message

    def __init__(self, infer_response: WireInferResponse | RawInferResponse) -> None:
        self.infer_response = infer_response

    def SerializeToString(self) -> bytes:
        inner = self.infer_response.pieces()
        size = sum(len(p) for p in inner)
        return b"".join([_INFER_RESPONSE_TAG, _varint_bytes(size), *inner])


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


_WIRE_METHODS = ("ModelInfer", "ModelStreamInfer")


def _rewired(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    replaced: grpc.RpcMethodHandler = handler._replace(
        request_deserializer=InferRequestDecoder().FromString, response_serializer=_serialize)
    return replaced


class _Rewire:
    """Stands in for the server in a generated ``add_XServicer_to_server`` call and passes the
    handlers on with the wire codec on the inference methods."""

    def __init__(self, server: Any) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        self._server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        rewired = {name: _rewired(h) if name in _WIRE_METHODS else h for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, rewired)


def with_wire_codec(register: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """``register`` (the generated ``add_GRPCInferenceServiceServicer_to_server``) with
    ModelInfer and ModelStreamInfer decoded and encoded by this module."""
    def add(servicer: Any, server: Any) -> None:
        register(servicer, _Rewire(server))

    add.__name__ = getattr(register, "__name__", "add")
    return add
