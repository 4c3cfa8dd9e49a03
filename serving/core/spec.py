"""One model's configuration as plain, frozen data: built once when a version loads.

The store edge (``serving.store``) reads ``config.pbtxt`` into a :class:`ModelSpec`; everything
below the transports (repository, batching, backends, request checks, task pipelines) reads this
and nothing else, so no protobuf message lives past loading. ``config`` keeps the config message
as JSON-like data for the one route that returns it (the ModelConfig RPC / ``/config``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from serving.backends import BackendConfig
from serving.batching import BatchConfig
from serving.core.datatypes import triton_to_numpy
from serving.core.validation import RequestRules
from serving.core.versions import VersionPolicy
from serving.errors import InvalidInput
from serving.tasks.spec import TaskSpec


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One declared input or output (``dims`` exclude the batch dimension)."""

    name: str
    datatype: str  # Triton name: FP32, BYTES ...
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None
    optional: bool = False
    label_filename: str = ""


@dataclass(frozen=True, slots=True)
class WarmupInput:
    datatype: str
    dims: tuple[int, ...]
    source: str = "zero"  # zero | random | file
    file: str = ""  # for source "file": a name in the model's warmup/ folder


@dataclass(frozen=True, slots=True)
class WarmupSpec:
    """One ``model_warmup`` entry (``count`` 0 in the config is 1 here)."""

    name: str
    batch_size: int
    count: int
    inputs: tuple[tuple[str, WarmupInput], ...]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batching: BatchConfig
    instances: int  # instance_group counts added up
    backend: BackendConfig
    parameters: Mapping[str, str]
    labels: tuple[str, ...] = ()
    warmup: tuple[WarmupSpec, ...] = ()
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    # The image task, or why the model has none (an InvalidInput message for task requests).
    task: TaskSpec | None = None
    task_error: str = ""
    # The config message as JSON-like data (``json_format.MessageToDict``), for the route that
    # returns it; nothing below the transports reads it.
    config: Mapping[str, Any] = field(default_factory=dict)
    rules: RequestRules = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", _request_rules(self))

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def task_spec(self) -> TaskSpec:
        """The image task; InvalidInput (the reason) for a model without a usable one."""
        if self.task is None:
            raise InvalidInput(self.task_error or f"model '{self.name}' has no image task")
        return self.task

    def with_instances(self, instances: int) -> ModelSpec:
        """The same model at another instance count (what ``scale`` builds and reports)."""
        groups = self.config.get("instance_group") or [{}]
        kind = groups[0].get("kind")
        group: dict[str, Any] = {"count": instances} | ({"kind": kind} if kind else {})
        return dataclasses.replace(self, instances=instances,
                                   config={**self.config, "instance_group": [group]})


def _request_rules(spec: ModelSpec) -> RequestRules:
    """What a request to this model is checked against, built once with the spec."""
    inputs = {i.name: (i.datatype, None if i.datatype == "BYTES" else triton_to_numpy(i.datatype),
                       i.dims) for i in spec.inputs}
    # ONNX string tensors hold text; the ORT backend decodes BYTES elements as UTF-8.
    text = frozenset(n for n, (dt, _, _) in inputs.items()
                     if dt == "BYTES" and spec.platform == "onnxruntime_onnx")
    return RequestRules(model=spec.name, inputs=inputs,
                        required=tuple(i.name for i in spec.inputs if not i.optional),
                        outputs={o.name: o.datatype for o in spec.outputs},
                        max_batch=spec.max_batch_size, text_inputs=text,
                        min_side=_side_parameter(spec.parameters, "min_side"),
                        max_side=_side_parameter(spec.parameters, "max_side"))


def _side_parameter(params: Mapping[str, str], key: str) -> int:
    """A non-negative integer parameter, 0 when absent or malformed (the image pipeline
    reports a malformed one when it reads it)."""
    text = params.get(key, "").strip()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else 0
