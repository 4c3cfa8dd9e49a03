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


def _shape_matches(shape: tuple[int, ...], dims: list[int]) -> bool:
    return len(shape) == len(dims) and all(d == -1 or d == s for s, d in zip(shape, dims, strict=True))


def check_request(config: model_config_pb2.ModelConfig, request: InferRequest) -> CheckedRequest:
    model = config.name
    mbs = int(config.max_batch_size)
    declared = {i.name: i for i in config.input}
    seen: dict[str, np.ndarray] = {}
    batch: int | None = None
    for tensor in request.inputs:
        spec = declared.get(tensor.name)
        if spec is None:
            raise InvalidInput(f"unexpected inference input '{tensor.name}' for model '{model}'")
        if tensor.name in seen:
            raise InvalidInput(f"input '{tensor.name}' appears more than once")
        expected = datatype_of(spec)
        if tensor.datatype != expected:
            raise InvalidInput(
                f"input '{tensor.name}' of model '{model}' has the wrong datatype: "
                f"expected {expected}, got {tensor.datatype}"
            )
        data = tensor.data
        shape = tuple(int(d) for d in tensor.shape)
        if tuple(data.shape) != shape:
            raise InvalidInput(
                f"input '{tensor.name}' data has shape {list(data.shape)}, header says {list(shape)}"
            )
        if data.dtype != triton_to_numpy(expected) and expected != "BYTES":
            raise InvalidInput(f"input '{tensor.name}' data is {data.dtype}, expected {expected}")
        dims = [int(d) for d in spec.dims]
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
                f"{dims}, got {list(shape)}"
            )
        seen[tensor.name] = data
    missing = [n for n, i in declared.items() if n not in seen and not i.optional]
    if missing:
        raise InvalidInput(
            f"expected {len(declared)} inputs but got {len(seen)} inputs for model '{model}'; "
            f"missing {', '.join(repr(m) for m in missing)}"
        )
    batch_size = batch if batch is not None else 1
    if mbs > 0 and batch_size > mbs:
        raise InvalidInput(
            f"inference request batch-size must be <= {mbs} for '{model}', got {batch_size}"
        )
    outputs_by_name = {o.name: o for o in config.output}
    if request.outputs:
        for out in request.outputs:
            spec_out = outputs_by_name.get(out.name)
            if spec_out is None:
                raise InvalidInput(f"unexpected inference output '{out.name}' for model '{model}'")
            if out.class_count < 0:
                raise InvalidInput(f"output '{out.name}': class count must be >= 0")
            if out.class_count and datatype_of(spec_out) == "BYTES":
                raise InvalidInput(f"output '{out.name}' is BYTES and cannot be classified")
        outputs = list(request.outputs)
    else:
        outputs = [RequestedOutput(o.name) for o in config.output]
    return CheckedRequest(
        inputs=seen,
        batch_size=batch_size,
        outputs=outputs,
        priority=_int_param(request.parameters, "priority"),
        timeout_us=_int_param(request.parameters, "timeout"),
    )
