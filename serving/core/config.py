"""Reading one model directory: ``config.pbtxt``, ``labels.txt`` and the version folders."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format

from serving.backends.factory import platform_of
from serving.core.datatypes import config_to_triton
from serving.generated import model_config_pb2

CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"


def read_config(model_dir: Path, name: str) -> model_config_pb2.ModelConfig:
    """Parse and check ``config.pbtxt``; the name defaults to ``name`` (the directory)."""
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise ValueError(f"{path} not found")
    config = model_config_pb2.ModelConfig()
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
    tensors: list[model_config_pb2.ModelInput | model_config_pb2.ModelOutput] = [
        *config.input, *config.output
    ]
    for tensor in tensors:
        if not tensor.name:
            raise ValueError(f"{path}: an input or output has no name")
        type_name = model_config_pb2.DataType.Name(tensor.data_type)
        if type_name == "TYPE_INVALID":
            raise ValueError(f"{path}: '{tensor.name}' has no data_type")
        config_to_triton(type_name)
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


def datatype_of(tensor: model_config_pb2.ModelInput | model_config_pb2.ModelOutput
                | model_config_pb2.ModelWarmup.Input) -> str:
    """Triton datatype (``FP32``) of a config input, output or warm-up input."""
    return config_to_triton(model_config_pb2.DataType.Name(tensor.data_type))


def instance_count(config: model_config_pb2.ModelConfig) -> int:
    return sum(max(1, g.count) for g in config.instance_group) or 1


def read_labels(model_dir: Path, config: model_config_pb2.ModelConfig) -> list[str]:
    """Labels from the first output's ``label_filename``, else ``labels.txt``, else []."""
    names = [o.label_filename for o in config.output if o.label_filename] + [LABELS_FILE]
    for filename in names:
        path = model_dir / filename
        if path.is_file():
            return [line.rstrip("\r\n") for line in path.read_text(encoding="utf-8").splitlines()]
    return []


# Versions are int64 in the protocols: 19 digits hold them all.
MAX_VERSION_DIGITS = 19


def is_version_name(name: str) -> bool:
    """ASCII digits, at most 19: ``str.isdigit`` alone accepts '²' and other scripts' digits
    that ``int`` refuses, and ``int`` refuses over 4300 digits."""
    return len(name) <= MAX_VERSION_DIGITS and name.isascii() and name.isdigit()


def available_versions(model_dir: Path) -> list[int]:
    """Version folders of a model directory (a folder named otherwise is not a version)."""
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.is_dir() and is_version_name(p.name))


def select_versions(model_dir: Path, config: model_config_pb2.ModelConfig) -> list[str]:
    """Version folders the version policy serves (ascending); ValueError when there are none."""
    present = available_versions(model_dir)
    policy = config.version_policy
    kind = policy.WhichOneof("policy_choice")
    if kind == "all":
        chosen = present
    elif kind == "specific":
        wanted = sorted(int(v) for v in policy.specific.versions)
        missing = [v for v in wanted if v not in present]
        if missing:
            raise ValueError(f"version policy names missing versions {missing}")
        chosen = wanted
    else:
        n = policy.latest.num_versions if kind == "latest" and policy.latest.num_versions else 1
        chosen = present[-n:]
    if not chosen:
        raise ValueError(f"no version folders (e.g. '1/') under {model_dir}")
    return [str(v) for v in chosen]
