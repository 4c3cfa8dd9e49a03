"""Reading one model directory's ``config.pbtxt`` and labels into a :class:`ModelSpec`."""

from __future__ import annotations

import logging
from pathlib import Path

from google.protobuf import json_format, text_format

from serving.backends import BackendConfig
from serving.backends.factory import DEFAULT_FILES
from serving.batching import BatchConfig, QueuePolicy
from serving.core.datatypes import config_to_triton
from serving.core.spec import ModelSpec, TensorSpec, WarmupInput, WarmupSpec
from serving.core.versions import CONFIG_FILE, VersionPolicy
from serving.errors import InvalidInput
from serving.generated import model_config_pb2 as pb
from serving.tasks.spec import TaskSpec

logger = logging.getLogger(__name__)

LABELS_FILE = "labels.txt"
_BACKEND_TO_PLATFORM = {"onnxruntime": "onnxruntime_onnx", "pytorch": "pytorch_libtorch"}


def read_model_spec(model_dir: Path, name: str) -> ModelSpec:
    """Parse and check ``config.pbtxt`` and the labels of one model directory."""
    config = read_config(model_dir, name)
    return spec_of(config, read_labels(model_dir, config))


def read_config(model_dir: Path, name: str) -> pb.ModelConfig:
    """Parse and check ``config.pbtxt``; the name defaults to ``name`` (the directory)."""
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{path} not found")
    config = pb.ModelConfig()
    try:
        text_format.Parse(path.read_text(encoding="utf-8"), config)
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not config.name:
        config.name = name
    elif config.name != name:
        raise ValueError(f"{path}: config name '{config.name}' does not match model '{name}'")
    config.platform = platform_of(config, model_dir)
    if config.max_batch_size < 0:
        raise ValueError(f"{path}: max_batch_size must be >= 0")
    if not config.input:
        raise ValueError(f"{path}: no input declared")
    if not config.output:
        raise ValueError(f"{path}: no output declared")
    tensors: list[pb.ModelInput | pb.ModelOutput] = [*config.input, *config.output]
    for tensor in tensors:
        if not tensor.name:
            raise ValueError(f"{path}: an input or output has no name")
        if pb.DataType.Name(tensor.data_type) == "TYPE_INVALID":
            raise ValueError(f"{path}: '{tensor.name}' has no data_type")
        _datatype(tensor)
        if any(d < -1 or d == 0 for d in tensor.dims):
            raise ValueError(f"{path}: '{tensor.name}' dims must be positive or -1")
    if not config.instance_group:
        config.instance_group.add(count=1)
    for group in config.instance_group:
        if group.count == 0:
            group.count = 1
        elif group.count < 0:
            raise ValueError(f"{path}: instance_group count must be >= 1")
    return config


def platform_of(config: pb.ModelConfig, model_dir: Path | None = None) -> str:
    """The served platform; when neither field is set, guess from the files of a version dir."""
    if config.platform:
        if config.platform not in DEFAULT_FILES:
            raise ValueError(
                f"unsupported platform '{config.platform}' (supported: {', '.join(DEFAULT_FILES)})"
            )
        return config.platform
    if config.backend:
        try:
            return _BACKEND_TO_PLATFORM[config.backend]
        except KeyError:
            raise ValueError(
                f"unsupported backend '{config.backend}' (supported: onnxruntime, pytorch)"
            ) from None
    if model_dir is not None:
        for platform, filename in DEFAULT_FILES.items():
            if any(model_dir.glob(f"*/{filename}")):
                return platform
    raise ValueError("config sets neither platform nor backend, and no model file was found")


def read_labels(model_dir: Path, config: pb.ModelConfig) -> list[str]:
    """Labels from the first output's ``label_filename``, else ``labels.txt``, else []."""
    names = [o.label_filename for o in config.output if o.label_filename] + [LABELS_FILE]
    for filename in names:
        path = model_dir / filename
        if path.is_file():
            return [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    return []


def spec_of(config: pb.ModelConfig, labels: list[str] | tuple[str, ...] = ()) -> ModelSpec:
    """The plain-data spec of a checked config message (``ValueError`` for bad parameters)."""
    params = {k: v.string_value for k, v in config.parameters.items()}
    inputs = tuple(_tensor(i, optional=i.optional) for i in config.input)
    outputs = tuple(_tensor(o, label_filename=o.label_filename) for o in config.output)
    task, task_error = _task(config.name, params)
    return ModelSpec(
        name=config.name, platform=config.platform, max_batch_size=int(config.max_batch_size),
        inputs=inputs, outputs=outputs, batching=batch_config(config),
        instances=sum(max(1, g.count) for g in config.instance_group) or 1,
        backend=BackendConfig.from_parameters(
            config.platform, tuple(i.name for i in inputs), tuple(o.name for o in outputs),
            config.default_model_filename, params),
        parameters=params, labels=tuple(labels), warmup=_warmup(config),
        version_policy=_version_policy(config.version_policy), task=task, task_error=task_error,
        config=json_format.MessageToDict(config, preserving_proto_field_name=True),
    )


def config_message(spec: ModelSpec) -> pb.ModelConfig:
    """The ModelConfig message of a spec, for the protocol route that returns it."""
    return json_format.ParseDict(dict(spec.config), pb.ModelConfig())


def _datatype(tensor: pb.ModelInput | pb.ModelOutput | pb.ModelWarmup.Input) -> str:
    return config_to_triton(pb.DataType.Name(tensor.data_type))


def _tensor(tensor: pb.ModelInput | pb.ModelOutput, *, optional: bool = False,
            label_filename: str = "") -> TensorSpec:
    reshape = tuple(int(d) for d in tensor.reshape.shape) if tensor.HasField("reshape") else None
    return TensorSpec(name=tensor.name, datatype=_datatype(tensor),
                      dims=tuple(int(d) for d in tensor.dims), reshape=reshape,
                      optional=optional, label_filename=label_filename)


def _task(name: str, params: dict[str, str]) -> tuple[TaskSpec | None, str]:
    """The image task, parsed now; a model without one (or with bad task parameters) still
    serves tensors, and task requests get the reason as their 400."""
    try:
        return TaskSpec.from_parameters(name, params), ""
    except InvalidInput as exc:
        return None, exc.message


def _queue_policy(msg: pb.ModelQueuePolicy) -> QueuePolicy:
    if msg.timeout_action == pb.ModelQueuePolicy.DELAY:
        logger.warning("queue policy timeout_action DELAY is not supported; requests are rejected")
    return QueuePolicy(
        max_queue_size=int(msg.max_queue_size),
        default_timeout_us=int(msg.default_timeout_microseconds),
        allow_timeout_override=bool(msg.allow_timeout_override),
    )


def _max_batch_elements(config: pb.ModelConfig) -> int:
    """Parameter ``max_batch_elements`` (0 when absent); ``ValueError`` names a malformed one."""
    param = config.parameters.get("max_batch_elements")
    text = param.string_value.strip() if param is not None else ""
    if not text:
        return 0
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise ValueError(f"parameter max_batch_elements must be a non-negative integer, "
                         f"got {text[:40]!r}")
    return int(text)


def batch_config(config: pb.ModelConfig) -> BatchConfig:
    elements = _max_batch_elements(config)
    if not config.HasField("dynamic_batching"):
        return BatchConfig(max_batch_size=int(config.max_batch_size),
                           max_batch_elements=elements)
    db = config.dynamic_batching
    return BatchConfig(
        max_batch_size=int(config.max_batch_size), dynamic=True, max_batch_elements=elements,
        preferred_batch_sizes=tuple(int(p) for p in db.preferred_batch_size),
        max_queue_delay_us=int(db.max_queue_delay_microseconds),
        priority_levels=int(db.priority_levels),
        default_priority_level=int(db.default_priority_level),
        default_queue_policy=_queue_policy(db.default_queue_policy),
        level_policies=tuple((int(k), _queue_policy(v))
                             for k, v in sorted(db.priority_queue_policy.items())),
    )


_SOURCES = {"zero_data": "zero", "random_data": "random", "input_data_file": "file"}


def _warmup(config: pb.ModelConfig) -> tuple[WarmupSpec, ...]:
    out = []
    for warm in config.model_warmup:
        inputs = tuple(
            (name, WarmupInput(datatype=_datatype(sample), dims=tuple(int(d) for d in sample.dims),
                               source=_SOURCES.get(sample.WhichOneof("input_data_type") or "",
                                                   "zero"),
                               file=sample.input_data_file))
            for name, sample in warm.inputs.items())
        out.append(WarmupSpec(name=warm.name, batch_size=int(warm.batch_size),
                              count=int(warm.count), inputs=inputs))
    return tuple(out)


def _version_policy(policy: pb.ModelVersionPolicy) -> VersionPolicy:
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        return VersionPolicy("all")
    if kind == "specific":
        return VersionPolicy("specific", versions=tuple(int(v) for v in policy.specific.versions))
    n = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
    return VersionPolicy("latest", num_versions=int(n))
