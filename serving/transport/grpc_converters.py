"""Triton/KServe v2 protobuf messages <-> the neutral core types (the only bridge between them).

The servicer never reads a protobuf field itself: requests become :class:`InferRequest` here and
every answer of the core becomes its response message here, so the rules of the wire format
(raw vs typed contents, BYTES length prefixes, parameter oneofs) live in one module.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from serving.core import datatypes
from serving.core.shm import SHM_PARAMETERS, RegionStatus, ShmScope, in_region, take_ref
from serving.core.stats import ModelStats, StatDuration
from serving.core.types import (
    InferRequest,
    InferResponse,
    ModelIndexEntry,
    ModelMetadata,
    ParamValue,
    RequestedOutput,
    ServerMetadata,
    Tensor,
)
from serving.core.validation import DEFAULT_LIMITS, ElementBudget, TensorLimits, check_version
from serving.errors import InvalidInput
from serving.generated import grpc_service_pb2 as pb
from serving.transport.buffers import output_buffer
from serving.transport.grpc_wire import WireInferRequest, WireInferResponse

# A request as the servicer receives it: parsed by protobuf, or split with its raw inputs as
# views of the received buffer (grpc_wire).
AnyInferRequest = pb.ModelInferRequest | WireInferRequest

# Typed contents field per datatype (FP16/BF16 travel raw only, as the protocol says).
_CONTENTS_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_CLASSIFICATION = "classification"


def param_value(param: pb.InferParameter) -> ParamValue:
    """The Python value of an ``InferParameter`` oneof (priority may come as uint64 or int64)."""
    which = param.WhichOneof("parameter_choice")
    if which is None:
        raise InvalidInput("an InferParameter has no value set")
    value: ParamValue = getattr(param, which)
    return value


def params_to_types(params: Any) -> dict[str, ParamValue]:
    return {key: param_value(value) for key, value in params.items()}


def params_from_types(target: Any, params: dict[str, ParamValue]) -> None:
    for key, value in params.items():
        slot = target[key]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            slot.int64_param = value
        elif isinstance(value, float):
            slot.double_param = value
        else:
            slot.string_param = str(value)


def _typed_contents(tensor: pb.ModelInferRequest.InferInputTensor, shape: tuple[int, ...],
                    expected: int) -> np.ndarray:
    name, datatype = tensor.name, tensor.datatype
    field_name = _CONTENTS_FIELD.get(datatype)
    if field_name is None:
        raise InvalidInput(
            f"input '{name}': {datatype} data cannot travel in typed 'contents'; use raw_input_contents"
        )
    values = getattr(tensor.contents, field_name)
    if len(values) != expected:
        raise InvalidInput(
            f"input '{name}': contents.{field_name} holds {len(values)} elements, "
            f"shape {list(shape)} needs {expected}"
        )
    if datatype == "BYTES":
        arr = np.empty(expected, dtype=object)
        arr[:] = list(values)
    else:
        arr = _narrowed(values, datatypes.triton_to_numpy(datatype), name, field_name)
    return arr.reshape(shape)


def _narrowed(values: Any, dtype: np.dtype, name: str, field_name: str) -> np.ndarray:
    """Typed contents as ``dtype``; INT8/16 and UINT8/16 travel in 32-bit fields, so a value
    out of the datatype's range (INT8 300) is refused instead of wrapping or failing."""
    if dtype.kind not in "iu" or dtype.itemsize >= 4:
        return np.asarray(values, dtype=dtype)
    wide = np.asarray(values, dtype=np.int64)
    info = np.iinfo(dtype)
    bad = (wide < info.min) | (wide > info.max)
    if bad.any():
        first = int(wide[np.argmax(bad)])
        raise InvalidInput(
            f"input '{name}': contents.{field_name} value {first} is out of range for "
            f"{datatypes.numpy_to_triton(dtype)} ({info.min}..{info.max})"
        )
    return wide.astype(dtype)


def _in_shm(params: Any) -> bool:
    return any(k in params for k in SHM_PARAMETERS)


def infer_request_to_types(msg: AnyInferRequest, limits: TensorLimits = DEFAULT_LIMITS,
                           shm: ShmScope | None = None) -> InferRequest:
    """A ``ModelInferRequest`` as the neutral request; raw and typed contents never mixed.

    Each input's datatype and shape are checked against ``limits`` before its data is read.
    Inputs and outputs that name a shared-memory region are read from / noted in ``shm``;
    such inputs have no entry in ``raw_input_contents`` (tritonclient sends none for them).
    """
    check_version(msg.model_name, msg.model_version)
    budget = ElementBudget(limits)
    raw: list[bytes | memoryview] = list(msg.raw_input_contents)  # one read of each entry
    if raw and any(t.HasField("contents") for t in msg.inputs):
        raise InvalidInput("inputs must use either raw_input_contents or typed contents, not both")
    for t in msg.inputs:  # a half-given reference is named as such, before any count
        if _in_shm(t.parameters):
            take_ref(params_to_types(t.parameters), f"input '{t.name}'")
    carried = [t for t in msg.inputs if not _in_shm(t.parameters)]
    if raw and len(raw) != len(carried):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries for {len(carried)} inputs"
            + (" not in shared memory" if len(carried) != len(msg.inputs) else "")
        )
    if shm is None and len(carried) != len(msg.inputs):
        raise InvalidInput("shared memory is not available on this service")
    inputs: list[Tensor] = []
    next_raw = 0
    for tensor in msg.inputs:
        shape = tuple(tensor.shape)
        datatypes.triton_to_numpy(tensor.datatype)  # an unknown datatype fails before anything else
        count = budget.take(tensor.name, tensor.datatype, shape)
        params = params_to_types(tensor.parameters)
        shared = None if shm is None else shm.input_array(tensor.name, tensor.datatype, shape,
                                                          params)
        if shared is not None:
            if tensor.HasField("contents"):
                raise InvalidInput(
                    f"input '{tensor.name}' has both a shared memory region and contents")
            data = shared
        elif raw:
            data = datatypes.array_from_raw(raw[next_raw], tensor.datatype, shape, tensor.name)
            next_raw += 1
        else:
            data = _typed_contents(tensor, shape, count)
        inputs.append(Tensor(
            name=tensor.name, datatype=tensor.datatype, shape=shape, data=data,
            parameters=params,
        ))
    outputs: list[RequestedOutput] = []
    for out in msg.outputs:
        params = params_to_types(out.parameters)
        if _in_shm(params):
            if shm is None:
                raise InvalidInput("shared memory is not available on this service")
            shm.take_output(out.name, params)
        class_count = params.pop(_CLASSIFICATION, 0)
        if not isinstance(class_count, int) or isinstance(class_count, bool) or class_count < 0:
            raise InvalidInput(f"output '{out.name}': 'classification' must be a non-negative integer")
        outputs.append(RequestedOutput(name=out.name, class_count=class_count, parameters=params))
    return InferRequest(
        model_name=msg.model_name, model_version=msg.model_version, inputs=inputs, id=msg.id,
        outputs=outputs, parameters=params_to_types(msg.parameters),
    )


# Messages with up to this many payload bytes are decoded on the event loop; handing them to a
# thread costs more than the work (the HTTP transport uses the same bound).
INLINE_DECODE_BYTES = 32 * 1024


async def infer_request_to_types_off_loop(
    msg: AnyInferRequest, limits: TensorLimits = DEFAULT_LIMITS,
    shm: ShmScope | None = None,
) -> InferRequest:
    """:func:`infer_request_to_types`, on a worker thread when the payload is large (BYTES and
    typed contents are converted element by element; inputs in shared memory are views and
    cost nothing)."""
    raw = msg.raw_input_contents  # read once: each read of a protobuf bytes field copies it
    size = sum(len(r) for r in raw)
    if not raw:
        size = sum(_typed_count(t) for t in msg.inputs) * 4
    if size <= INLINE_DECODE_BYTES:
        return infer_request_to_types(msg, limits, shm)
    return await asyncio.to_thread(infer_request_to_types, msg, limits, shm)


def _typed_count(tensor: pb.ModelInferRequest.InferInputTensor) -> int:
    field_name = _CONTENTS_FIELD.get(tensor.datatype)
    return len(getattr(tensor.contents, field_name)) if field_name else 0


def _response_head(resp: InferResponse) -> pb.ModelInferResponse:
    """The response message with its outputs described and no raw_output_contents."""
    msg = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version, id=resp.id)
    params_from_types(msg.parameters, resp.parameters)
    for tensor in resp.outputs:
        out = msg.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if not in_region(tensor.parameters):  # in the client's region: no parameters (Triton)
            params_from_types(out.parameters, tensor.parameters)
    return msg


def _raw_output(tensor: Tensor) -> bytes | memoryview:
    if in_region(tensor.parameters):  # in the client's region; the empty entry keeps
        return b""  # every later output at its own index
    if tensor.datatype == "BYTES":
        return datatypes.serialize_bytes_tensor(tensor.data)
    return output_buffer(tensor.data, datatypes.triton_to_numpy(tensor.datatype).newbyteorder("<"))


def infer_response_to_wire(resp: InferResponse) -> WireInferResponse:
    """The neutral response for the wire: outputs are views of the result arrays until the
    serializer copies them, once, into the message grpc sends."""
    return WireInferResponse(_response_head(resp), [_raw_output(t) for t in resp.outputs])


def infer_response_from_types(resp: InferResponse) -> pb.ModelInferResponse:
    """The neutral response as a ``ModelInferResponse``; outputs always in raw_output_contents."""
    msg = _response_head(resp)
    msg.raw_output_contents.extend(bytes(_raw_output(t)) for t in resp.outputs)
    return msg


def server_metadata_from_types(meta: ServerMetadata) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=meta.name, version=meta.version, extensions=meta.extensions)


def model_metadata_from_types(meta: ModelMetadata) -> pb.ModelMetadataResponse:
    msg = pb.ModelMetadataResponse(name=meta.name, versions=meta.versions, platform=meta.platform)
    for t in meta.inputs:
        msg.inputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
    for t in meta.outputs:
        msg.outputs.add(name=t.name, datatype=t.datatype, shape=t.shape)
    return msg


def _duration(target: Any, value: StatDuration) -> None:
    target.count = value.count
    target.ns = value.ns


def statistics_from_types(stats: list[ModelStats]) -> pb.ModelStatisticsResponse:
    msg = pb.ModelStatisticsResponse()
    for s in stats:
        entry = msg.model_stats.add(
            name=s.name, version=s.version, last_inference=s.last_inference,
            inference_count=s.inference_count, execution_count=s.execution_count,
        )
        inf = entry.inference_stats
        for part in ("success", "fail", "queue", "compute_input", "compute_infer",
                     "compute_output", "cache_hit", "cache_miss"):
            _duration(getattr(inf, part), getattr(s, part))
        for b in s.batch_stats:
            batch = entry.batch_stats.add(batch_size=b.batch_size)
            _duration(batch.compute_input, b.compute_input)
            _duration(batch.compute_infer, b.compute_infer)
            _duration(batch.compute_output, b.compute_output)
    return msg


def shm_status_from_types(regions: list[RegionStatus]) -> pb.SystemSharedMemoryStatusResponse:
    msg = pb.SystemSharedMemoryStatusResponse()
    for r in regions:
        entry = msg.regions[r.name]
        entry.name, entry.key, entry.offset, entry.byte_size = r.name, r.key, r.offset, r.byte_size
    return msg


def repository_index_from_types(entries: list[ModelIndexEntry]) -> pb.RepositoryIndexResponse:
    msg = pb.RepositoryIndexResponse()
    for e in entries:
        msg.models.add(name=e.name, version=e.version, state=e.state, reason=e.reason)
    return msg


# --------------------------------------------------------------------------- JSON forms

_INT64_TYPES = {
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64,
}


def _int64_as_numbers(doc: Any, descriptor: Any) -> None:
    """Protobuf JSON prints 64-bit integers as strings; v2 clients want JSON numbers."""
    if not isinstance(doc, dict):
        return
    for fd in descriptor.fields:
        if fd.name not in doc:
            continue
        value = doc[fd.name]
        if fd.message_type is not None:
            if fd.message_type.GetOptions().map_entry:
                value_fd = fd.message_type.fields_by_name["value"]
                for key in list(value):
                    if value_fd.message_type is not None:
                        _int64_as_numbers(value[key], value_fd.message_type)
                    elif value_fd.type in _INT64_TYPES:
                        value[key] = int(value[key])
            elif isinstance(value, list):
                for item in value:
                    _int64_as_numbers(item, fd.message_type)
            else:
                _int64_as_numbers(value, fd.message_type)
        elif fd.type in _INT64_TYPES:
            doc[fd.name] = [int(v) for v in value] if isinstance(value, list) else int(value)


def message_to_json_dict(msg: Message) -> dict[str, Any]:
    """Triton's JSON form of a message: snake_case names, every primitive printed, int64 as numbers."""
    doc: dict[str, Any] = json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _int64_as_numbers(doc, msg.DESCRIPTOR)
    return doc
