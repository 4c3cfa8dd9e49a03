"""Descriptions of models and versions for metadata and the TorchServe management API."""

from __future__ import annotations

from dataclasses import dataclass

from serving.core.config import datatype_of, instance_count
from serving.core.loaded import LoadedVersion
from serving.core.repository import ModelEntry
from serving.core.types import TensorMetadata
from serving.generated import model_config_pb2


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
    cfg = lv.config
    db = cfg.dynamic_batching
    return ModelDescription(
        name=lv.name, version=lv.version, platform=cfg.platform,
        max_batch_size=int(cfg.max_batch_size),
        max_queue_delay_us=int(db.max_queue_delay_microseconds),
        instances=lv.batcher.instances, pending_requests=lv.batcher.queued,
        max_queue_size=int(db.default_queue_policy.max_queue_size),
        is_default=is_default, loaded_at=lv.loaded_at, load_seconds=lv.load_seconds,
        ready=True, model_dir=str(lv.model_dir),
    )


def unloaded_description(entry: ModelEntry, cfg: model_config_pb2.ModelConfig) -> ModelDescription:
    """A model with no loaded version (unloaded, or failed to load)."""
    return ModelDescription(
        name=entry.name, version="", platform=cfg.platform,
        max_batch_size=int(cfg.max_batch_size),
        max_queue_delay_us=int(cfg.dynamic_batching.max_queue_delay_microseconds),
        instances=instance_count(cfg), pending_requests=0,
        max_queue_size=int(cfg.dynamic_batching.default_queue_policy.max_queue_size),
        is_default=False, loaded_at=0.0, load_seconds=0.0, ready=False,
        model_dir=str(entry.model_dir),
    )


def tensor_metadata(
    tensor: model_config_pb2.ModelInput | model_config_pb2.ModelOutput, batched: bool
) -> TensorMetadata:
    """Metadata shape: the config dims, with a leading -1 when the model batches."""
    dims = tuple(int(d) for d in tensor.dims)
    return TensorMetadata(tensor.name, datatype_of(tensor), (-1, *dims) if batched else dims)
