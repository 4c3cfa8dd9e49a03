"""What a served model looks like: tensors, task parameters and naming, derived from a checkpoint.

The model-store contract (docs/architecture.md) fixes tensor names per task, the config.pbtxt
``parameters`` keys and the naming rule (``NAME`` = ONNX, ``NAME_torchscript`` = TorchScript,
``NAME_decoder`` = a capsule model's decoder). Everything here is plain data so the writers
(config.pbtxt, ``capserve_task.json``) and the parity gate read one description.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from export.errors import InvalidInput

TASKS = ("classification", "segmentation", "style_transfer", "capsule_classification")
DECODER_TASK = "capsule_decoder"
# Same rule as torch-model-archiver's model names, which also suits Triton directory names.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
# Largest side a fully convolutional model is fed by default (the server scales larger inputs
# down): keeps one request's activations in the tens of MB on CPU.
DEFAULT_MAX_SIDE = 512
POSE_DIM = 16


@dataclass(frozen=True)
class TensorSpec:
    """One input or output, without the implicit batch dimension."""

    name: str
    dims: tuple[int, ...]
    image: bool = False  # an NCHW image tensor (config format FORMAT_NCHW)
    label_filename: str = ""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "data_type": "TYPE_FP32", "dims": list(self.dims)}
        if self.image:
            out["format"] = "FORMAT_NCHW"
        if self.label_filename:
            out["label_filename"] = self.label_filename
        return out


@dataclass(frozen=True)
class InputSpec:
    """The checkpoint's ``input`` block."""

    channels: int
    height: int
    width: int
    color: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fully_convolutional: bool

    @classmethod
    def from_checkpoint(cls, block: Any) -> InputSpec:
        try:
            spec = cls(
                channels=int(block["channels"]), height=int(block["height"]),
                width=int(block["width"]), color=str(block["color"]),
                mean=tuple(float(v) for v in block["mean"]),
                std=tuple(float(v) for v in block["std"]),
                fully_convolutional=bool(block.get("fully_convolutional", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"checkpoint 'input' block is malformed: {exc!r}") from exc
        if spec.color not in ("L", "RGB") or spec.channels != (1 if spec.color == "L" else 3):
            raise InvalidInput(
                f"checkpoint input color {spec.color!r} does not match {spec.channels} channels"
            )
        if len(spec.mean) != spec.channels or len(spec.std) != spec.channels:
            raise InvalidInput("checkpoint input mean/std need one value per channel")
        return spec


@dataclass(frozen=True)
class ModelSpec:
    """One served model (an ONNX or TorchScript artifact of one checkpoint, or a decoder)."""

    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: dict[str, str] = field(default_factory=dict)
    labels: tuple[str, ...] = ()

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]


def check_name(name: str) -> str:
    if not _NAME_RE.match(name) or name.endswith(".mar"):
        raise InvalidInput(
            f"model name {name!r} is not allowed: use letters, digits, '_', '-', '.' "
            "and start with a letter or digit"
        )
    return name


def _floats(values: tuple[float, ...]) -> str:
    return ",".join(repr(float(v)) for v in values)


def model_spec(
    task: str, labels: list[str], inp: InputSpec, provenance: dict[str, str],
    decoder_model: str = "", capsule_dims: tuple[int, tuple[int, ...]] | None = None,
) -> ModelSpec:
    """The served description of a checkpoint's main model."""
    if task not in TASKS:
        raise InvalidInput(f"checkpoint task {task!r} is not one of {', '.join(TASKS)}")
    fc = inp.fully_convolutional
    hw: tuple[int, int] = (-1, -1) if fc else (inp.height, inp.width)
    image_in = TensorSpec("input", (inp.channels, *hw), image=True)
    n = len(labels)
    if task in ("classification", "segmentation", "capsule_classification") and n == 0:
        raise InvalidInput(f"a {task} checkpoint needs class labels")
    params = {
        "task": task,
        "input_color": inp.color,
        "input_height": str(inp.height),
        "input_width": str(inp.width),
        "mean": _floats(inp.mean),
        "std": _floats(inp.std),
    }
    outputs: tuple[TensorSpec, ...]
    if task == "classification":
        outputs = (TensorSpec("logits", (n,), label_filename="labels.txt"),)
        params.update(resize="exact", output_semantics="logits")
    elif task == "segmentation":
        outputs = (TensorSpec("logits", (n, -1, -1) if fc else (n, inp.height, inp.width)),)
        params.update(resize="none" if fc else "exact", output_semantics="mask_logits")
    elif task == "style_transfer":
        outputs = (TensorSpec("image", (3, -1, -1) if fc else (3, inp.height, inp.width)),)
        params.update(resize="none" if fc else "exact", output_semantics="image_0_1")
    else:
        pose_dim, recon = capsule_dims or (POSE_DIM, (1, inp.height, inp.width))
        outputs = (
            TensorSpec("lengths", (n,), label_filename="labels.txt"),
            TensorSpec("poses", (n, pose_dim)),
            TensorSpec("reconstruction", recon),
        )
        params.update(resize="exact", output_semantics="capsule_lengths")
        if decoder_model:
            params["decoder_model"] = decoder_model
    if fc:
        params["max_side"] = str(max(DEFAULT_MAX_SIDE, inp.height, inp.width))
    params.update(provenance)
    return ModelSpec(task, (image_in,), outputs, params, tuple(labels))


def decoder_spec(num_classes: int, inp: InputSpec, provenance: dict[str, str],
                 capsule_dims: tuple[int, tuple[int, ...]] | None = None) -> ModelSpec:
    """A capsule model's decoder: masked poses -> reconstruction, for explanations."""
    params = {
        "task": DECODER_TASK,
        "input_color": inp.color,
        "input_height": str(inp.height),
        "input_width": str(inp.width),
        "output_semantics": "image_0_1",
        **provenance,
    }
    pose_dim, recon = capsule_dims or (POSE_DIM, (1, inp.height, inp.width))
    return ModelSpec(
        DECODER_TASK,
        (TensorSpec("poses", (num_classes, pose_dim)),),
        (TensorSpec("reconstruction", recon),),
        params,
    )
