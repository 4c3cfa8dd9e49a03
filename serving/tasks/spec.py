"""A model's image task, read from its ``config.pbtxt`` parameters (no per-model Python).

The keys and values are the model store contract of ``docs/architecture.md``. Everything a
pipeline needs (colour mode, size, normalisation, resize policy, output meaning) is here, so the
server and the TorchServe handler build identical tensors from the same parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from serving.errors import InvalidInput

RESIZE_POLICIES = ("exact", "keep_aspect_pad", "keep_aspect_crop", "none")
# Fully convolutional models accept any size, but shrinking through the pooling levels needs a
# few pixels; a smaller input is refused with a message instead of failing inside the model.
DEFAULT_MIN_SIDE = 16
DEFAULT_MAX_SIDE = 1024
# The image task kinds, and whether each one's models are fully convolutional (take any image
# size, so the default resize is "none" rather than "exact"). serving/tasks/kinds.py has one
# Task per name; this table sits here so the spec needs nothing from the renderers.
FULLY_CONVOLUTIONAL: Mapping[str, bool] = {
    "classification": False, "segmentation": True, "style_transfer": True,
    "capsule_classification": False}


@dataclass(frozen=True, slots=True)
class TaskSpec:
    """How one model turns images into tensors and tensors into answers."""

    model: str
    task: str
    color: str  # "L" or "RGB"
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str
    max_side: int
    min_side: int
    output_semantics: str
    decoder_model: str = ""

    @property
    def channels(self) -> int:
        return 1 if self.color == "L" else 3

    @classmethod
    def from_parameters(cls, model: str, params: Mapping[str, str]) -> TaskSpec:
        """Parse and check the parameters; a model without ``task`` has no image pipeline."""
        task = params.get("task", "")
        if not task:
            raise InvalidInput(
                f"model '{model}' has no image task (its config.pbtxt parameters lack 'task'); "
                "send tensors through the v2 API instead"
            )
        fully_convolutional = FULLY_CONVOLUTIONAL.get(task)
        if fully_convolutional is None:
            raise InvalidInput(f"model '{model}' has task '{task}', which takes no images "
                               f"(image tasks: {', '.join(FULLY_CONVOLUTIONAL)})")
        color = params.get("input_color", "RGB")
        if color not in ("L", "RGB"):
            raise InvalidInput(f"model '{model}': input_color must be L or RGB, got '{color}'")
        resize = params.get("resize", "none" if fully_convolutional else "exact")
        if resize not in RESIZE_POLICIES:
            raise InvalidInput(f"model '{model}': resize must be one of {RESIZE_POLICIES}, "
                               f"got '{resize}'")
        channels = 1 if color == "L" else 3
        mean = _floats(model, "mean", params.get("mean", ""), channels, 0.0)
        std = _floats(model, "std", params.get("std", ""), channels, 1.0)
        if any(s == 0.0 for s in std):
            raise InvalidInput(f"model '{model}': std must not contain 0")
        return cls(
            model=model, task=task, color=color,
            height=_int(model, "input_height", params.get("input_height", "0")),
            width=_int(model, "input_width", params.get("input_width", "0")),
            mean=mean, std=std, resize=resize,
            max_side=_int(model, "max_side", params.get("max_side", str(DEFAULT_MAX_SIDE))),
            min_side=_int(model, "min_side", params.get("min_side", str(DEFAULT_MIN_SIDE))),
            output_semantics=params.get("output_semantics", ""),
            decoder_model=params.get("decoder_model", ""),
        )


def _int(model: str, key: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidInput(f"model '{model}': parameter {key} must be an integer, got '{text}'") from None
    if value < 0:
        raise InvalidInput(f"model '{model}': parameter {key} must be >= 0, got {value}")
    return value


def _floats(model: str, key: str, text: str, channels: int, default: float) -> tuple[float, ...]:
    if not text.strip():
        return (default,) * channels
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise InvalidInput(f"model '{model}': parameter {key} must be comma-separated floats, "
                           f"got '{text}'") from None
    if len(values) == 1:
        return values * channels
    if len(values) != channels:
        raise InvalidInput(f"model '{model}': parameter {key} has {len(values)} values for "
                           f"{channels} channel(s)")
    return values
