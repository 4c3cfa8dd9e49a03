"""Request checks against the model config, so every transport reports identical errors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.core.config import datatype_of
from serving.core.datatypes import triton_to_numpy
from serving.core.types import InferRequest, ParamValue, RequestedOutput
from serving.errors import InvalidInput
from serving.generated import model_config_pb2


@dataclass(slots=True)
class CheckedRequest:
    inputs: dict[str, np.ndarray]
    batch_size: int  # 1 for a model without a batch dimension
    outputs: list[RequestedOutput]  # what to return, in order
    priority: int
    timeout_us: int


def _int_param(params: dict[str, ParamValue], key: str) -> int:
    value = params.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise InvalidInput(f"request parameter '{key}' must be an integer, got {value!r}")
    return value


def _shape_matches(shape: tuple[int, ...], dims: tuple[int, ...]) -> bool:
    return len(shape) == len(dims) and all(d == -1 or d == s for s, d in zip(shape, dims, strict=True))


@dataclass(frozen=True, slots=True)
class RequestRules:
    """What ``check_request`` reads from a model config, extracted once when the version loads:
    reading protobuf fields and naming enum values on every request costs more than the checks."""

    model: str
    inputs: dict[str, tuple[str, np.dtype | None, tuple[int, ...]]]  # datatype, dtype, dims
    required: tuple[str, ...]
    outputs: dict[str, str]  # name -> datatype
    max_batch: int

    @classmethod
    def of(cls, config: model_config_pb2.ModelConfig) -> RequestRules:
        inputs = {}
        for i in config.input:
            datatype = datatype_of(i)
            inputs[i.name] = (datatype,
                              None if datatype == "BYTES" else triton_to_numpy(datatype),
                              tuple(int(d) for d in i.dims))
        return cls(model=config.name, inputs=inputs,
                   required=tuple(i.name for i in config.input if not i.optional),
                   outputs={o.name: datatype_of(o) for o in config.output},
                   max_batch=int(config.max_batch_size))


def check_request(rules: RequestRules, request: InferRequest) -> CheckedRequest:
    model = rules.model
    mbs = rules.max_batch
    seen: dict[str, np.ndarray] = {}
    batch: int | None = None
    for tensor in request.inputs:
        rule = rules.inputs.get(tensor.name)
        if rule is None:
            raise InvalidInput(f"unexpected inference input '{tensor.name}' for model '{model}'")
        if tensor.name in seen:
            raise InvalidInput(f"input '{tensor.name}' appears more than once")
        expected, dtype, dims = rule
        if tensor.datatype != expected:
            raise InvalidInput(
                f"input '{tensor.name}' of model '{model}' has the wrong datatype: "
                f"expected {expected}, got {tensor.datatype}"
            )
        data = tensor.data
        shape = tuple(int(d) for d in tensor.shape)
        if data.shape != shape:
            raise InvalidInput(
                f"input '{tensor.name}' data has shape {list(data.shape)}, header says {list(shape)}"
            )
        if dtype is not None and data.dtype != dtype:
            raise InvalidInput(f"input '{tensor.name}' data is {data.dtype}, expected {expected}")
        if mbs > 0:
            if len(shape) != len(dims) + 1 or not _shape_matches(shape[1:], dims):
                raise InvalidInput(
                    f"unexpected shape for input '{tensor.name}' for model '{model}'. Expected "
                    f"{[-1, *dims]}, got {list(shape)}"
                )
            if shape[0] < 1:
                raise InvalidInput(f"input '{tensor.name}' has batch size {shape[0]}; must be >= 1")
            if batch is not None and shape[0] != batch:
                raise InvalidInput(
                    f"input '{tensor.name}' has batch size {shape[0]}, other inputs have {batch}"
                )
            batch = shape[0]
        elif not _shape_matches(shape, dims):
            raise InvalidInput(
                f"unexpected shape for input '{tensor.name}' for model '{model}'. Expected "
                f"{list(dims)}, got {list(shape)}"
            )
        seen[tensor.name] = data
    missing = [n for n in rules.required if n not in seen]
    if missing:
        raise InvalidInput(
            f"expected {len(rules.inputs)} inputs but got {len(seen)} inputs for model "
            f"'{model}'; missing {', '.join(repr(m) for m in missing)}"
        )
    batch_size = batch if batch is not None else 1
    if mbs > 0 and batch_size > mbs:
        raise InvalidInput(
            f"inference request batch-size must be <= {mbs} for '{model}', got {batch_size}"
        )
    if request.outputs:
        for out in request.outputs:
            out_type = rules.outputs.get(out.name)
            if out_type is None:
                raise InvalidInput(f"unexpected inference output '{out.name}' for model '{model}'")
            if out.class_count < 0:
                raise InvalidInput(f"output '{out.name}': class count must be >= 0")
            if out.class_count and out_type == "BYTES":
                raise InvalidInput(f"output '{out.name}' is BYTES and cannot be classified")
        outputs = list(request.outputs)
    else:
        outputs = [RequestedOutput(name) for name in rules.outputs]
    return CheckedRequest(
        inputs=seen,
        batch_size=batch_size,
        outputs=outputs,
        priority=_int_param(request.parameters, "priority"),
        timeout_us=_int_param(request.parameters, "timeout"),
    )
