"""Protocol-neutral request, response and metadata types.

Both transports convert their wire messages into these types at the edge and back; the core,
the batcher and the backends only ever see these. Tensor payloads are numpy arrays so the hot
path never touches per-element Python objects (BYTES tensors are object arrays of ``bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# A request/response/tensor parameter value, as KServe v2 allows them.
ParamValue = bool | int | float | str


@dataclass(slots=True)
class Tensor:
    """One named tensor; ``data.shape == shape`` always holds."""

    name: str
    datatype: str  # Triton spelling: "FP32", "INT64", "BYTES", ...
    shape: tuple[int, ...]
    data: np.ndarray
    parameters: dict[str, ParamValue] = field(default_factory=dict)


@dataclass(slots=True)
class RequestedOutput:
    """An output the client asked for; ``class_count > 0`` asks for Triton classification."""

    name: str
    class_count: int = 0
    parameters: dict[str, ParamValue] = field(default_factory=dict)


@dataclass(slots=True)
class InferRequest:
    model_name: str
    inputs: list[Tensor]
    model_version: str = ""  # "" = the version the model's policy picks
    id: str = ""
    outputs: list[RequestedOutput] = field(default_factory=list)  # empty = every output
    parameters: dict[str, ParamValue] = field(default_factory=dict)


@dataclass(slots=True)
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str = ""
    parameters: dict[str, ParamValue] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class TensorMetadata:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 = variable; leading -1 when the model batches


@dataclass(slots=True, frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]


@dataclass(slots=True, frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]


@dataclass(slots=True, frozen=True)
class ModelIndexEntry:
    name: str
    version: str
    state: str  # "READY", "UNAVAILABLE", "LOADING", "UNLOADING"
    reason: str = ""
