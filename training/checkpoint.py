"""The checkpoint contract between training and export (docs/architecture.md).

A checkpoint is one ``torch.save`` dict of plain values and tensors. It is read back only with
``torch.load(weights_only=True)``, whose restricted unpickler refuses anything but tensors and
builtin containers, so a file carrying a code-running pickle payload fails to load instead of
running it.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import pickle
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

FORMAT = "capserve-checkpoint"
FORMAT_VERSION = 1
REQUIRED_KEYS = ("format", "format_version", "arch", "arch_kwargs", "task", "labels", "input",
                 "state_dict", "metrics", "provenance")
INPUT_KEYS = ("channels", "height", "width", "color", "mean", "std", "fully_convolutional")


class InvalidCheckpoint(ValueError):
    """A file that is not a loadable capserve checkpoint; the message says why."""


def versions() -> dict[str, str]:
    import torchvision

    return {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


def build_checkpoint(
    *,
    arch: str,
    arch_kwargs: Mapping[str, Any],
    task: str,
    labels: list[str],
    input_spec: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    metrics: Mapping[str, float],
    provenance: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The validated checkpoint dict (what ``save_checkpoint`` writes).

    ``provenance`` gains ``versions`` and ``created`` when absent; ``extra`` adds keys outside
    the contract (``optimizer`` for resuming), which loading ignores.
    """
    prov = dict(provenance)
    prov.setdefault("versions", versions())
    prov.setdefault("created", _dt.datetime.now(_dt.UTC).replace(microsecond=0).isoformat())
    ckpt: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "arch": arch, "arch_kwargs": _plain(dict(arch_kwargs), "arch_kwargs"),
        "task": task, "labels": [str(x) for x in labels],
        "input": _plain(dict(input_spec), "input"),
        # clone: a state_dict may share storage with a larger tensor, which torch.save would
        # write out whole.
        "state_dict": {k: v.detach().cpu().clone() for k, v in state_dict.items()},
        "metrics": {k: float(v) for k, v in metrics.items()},
        "provenance": _plain(prov, "provenance"),
        **dict(extra or {}),
    }
    validate(ckpt)
    return ckpt


def save_checkpoint(path: str | os.PathLike[str], **fields: Any) -> dict[str, Any]:
    """Build (see ``build_checkpoint``) and write a checkpoint atomically: a temporary file
    renamed over the target, so a crash never leaves half a checkpoint; returns the dict."""
    ckpt = build_checkpoint(**fields)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, target)
    return ckpt


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load with ``weights_only=True`` and validate; raises :class:`InvalidCheckpoint`."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidCheckpoint(f"{path}: not a safe checkpoint ({first})") from exc
    if not isinstance(ckpt, dict):
        raise InvalidCheckpoint(f"{path}: expected a dict, found {type(ckpt).__name__}")
    try:
        validate(ckpt)
    except InvalidCheckpoint as exc:
        raise InvalidCheckpoint(f"{path}: {exc}") from None
    return ckpt


def validate(ckpt: Mapping[str, Any]) -> None:
    """Check the keys and value types of the contract."""
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise InvalidCheckpoint(f"missing keys {missing}")
    if ckpt["format"] != FORMAT:
        raise InvalidCheckpoint(f"format is {ckpt['format']!r}, expected {FORMAT!r}")
    if ckpt["format_version"] != FORMAT_VERSION:
        raise InvalidCheckpoint(f"unsupported format_version {ckpt['format_version']!r}")
    from training.models.registry import ARCHITECTURES, TASKS

    if ckpt["arch"] not in ARCHITECTURES:
        raise InvalidCheckpoint(f"unknown arch {ckpt['arch']!r}")
    if ckpt["task"] not in TASKS:
        raise InvalidCheckpoint(f"unknown task {ckpt['task']!r}; expected one of {list(TASKS)}")
    if not isinstance(ckpt["labels"], list):
        raise InvalidCheckpoint("labels must be a list of strings")
    spec = ckpt["input"]
    if not isinstance(spec, dict) or any(k not in spec for k in INPUT_KEYS):
        raise InvalidCheckpoint(f"input spec must have keys {list(INPUT_KEYS)}")
    if spec["color"] not in ("L", "RGB") or spec["channels"] != (1 if spec["color"] == "L" else 3):
        raise InvalidCheckpoint("input color must be 'L' (1 channel) or 'RGB' (3 channels)")
    if len(spec["mean"]) != spec["channels"] or len(spec["std"]) != spec["channels"]:
        raise InvalidCheckpoint("input mean/std need one value per channel")
    sd = ckpt["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise InvalidCheckpoint("state_dict must map names to tensors")
    for key in ("arch_kwargs", "metrics", "provenance"):
        if not isinstance(ckpt[key], dict):
            raise InvalidCheckpoint(f"{key} must be a dict")


def _plain(value: dict[str, Any], what: str) -> dict[str, Any]:
    """Round-trip through JSON: only plain values may sit beside the tensors (tuples -> lists)."""
    try:
        out: dict[str, Any] = json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise InvalidCheckpoint(f"{what} must hold plain JSON values: {exc}") from None
    return out
