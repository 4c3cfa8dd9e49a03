"""Descriptions of models and versions for metadata and the TorchServe management API."""

from __future__ import annotations

from dataclasses import dataclass

from serving.core.loaded import LoadedVersion
from serving.core.repository import ModelEntry
from serving.core.spec import ModelSpec, TensorSpec
from serving.core.types import TensorMetadata


@dataclass(slots=True)
class ModelDescription:
    name: str
    version: str
    platform: str
    max_batch_size: int
    max_queue_delay_us: int
    instances: int
    pending_requests: int
    max_queue_size: int  # 0 = unbounded
    is_default: bool
    loaded_at: float  # epoch seconds, 0 when not loaded
    load_seconds: float
    ready: bool
    model_dir: str


def describe_version(lv: LoadedVersion, is_default: bool) -> ModelDescription:
    spec = lv.spec
    return ModelDescription(
        name=lv.name, version=lv.version, platform=spec.platform,
        max_batch_size=spec.max_batch_size,
        max_queue_delay_us=spec.batching.max_queue_delay_us,
        instances=lv.batcher.instances, pending_requests=lv.batcher.queued,
        max_queue_size=spec.batching.default_queue_policy.max_queue_size,
        is_default=is_default, loaded_at=lv.loaded_at, load_seconds=lv.load_seconds,
        ready=True, model_dir=str(lv.model_dir),
    )


def unloaded_description(entry: ModelEntry, spec: ModelSpec) -> ModelDescription:
    """A model with no loaded version (unloaded, or failed to load)."""
    return ModelDescription(
        name=entry.name, version="", platform=spec.platform,
        max_batch_size=spec.max_batch_size,
        max_queue_delay_us=spec.batching.max_queue_delay_us,
        instances=spec.instances, pending_requests=0,
        max_queue_size=spec.batching.default_queue_policy.max_queue_size,
        is_default=False, loaded_at=0.0, load_seconds=0.0, ready=False,
        model_dir=str(entry.model_dir),
    )


def tensor_metadata(tensor: TensorSpec, batched: bool) -> TensorMetadata:
    """Metadata shape: the config dims, with a leading -1 when the model batches."""
    return TensorMetadata(tensor.name, tensor.datatype,
                          (-1, *tensor.dims) if batched else tensor.dims)
