"""Fixtures of the exporter tests: tiny untrained checkpoints written with the training API."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from training.checkpoint import save_checkpoint
from training.models.registry import build_model

DIGITS = [str(i) for i in range(10)]
GREY_28 = {"channels": 1, "height": 28, "width": 28, "color": "L", "mean": [0.1307],
           "std": [0.3081], "fully_convolutional": False}

# arch -> (arch_kwargs, task, labels, input spec, data set): the smallest widths and inputs each
# architecture accepts, so an export takes seconds.
TINY: dict[str, tuple[dict[str, Any], str, list[str], dict[str, Any], str]] = {
    "lenet": ({}, "classification", DIGITS, GREY_28, "mnist5k"),
    "capsnet": ({"conv_channels": 8, "primary_types": 2, "decoder_hidden": [16, 32]},
                "capsule_classification", DIGITS, GREY_28, "mnist5k"),
    "unet": ({"base_width": 4, "depth": 2, "num_classes": 3}, "segmentation",
             ["background", "ellipse", "rectangle"],
             {"channels": 1, "height": 32, "width": 32, "color": "L", "mean": [0.5], "std": [0.25],
              "fully_convolutional": True}, "shapes"),
    "transformer_net": ({"width": 4, "residual_blocks": 1}, "style_transfer", [],
                        {"channels": 3, "height": 32, "width": 32, "color": "RGB",
                         "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                         "fully_convolutional": True}, "photos"),
}


def _rgb(size: int) -> dict[str, Any]:
    return {"channels": 3, "height": size, "width": size, "color": "RGB", "mean": [0.5] * 3,
            "std": [0.25] * 3, "fully_convolutional": False}


FOUR = ["a", "b", "c", "d"]
TINY.update({
    "alexnet": ({"num_classes": 4, "hidden": 16}, "classification", FOUR, _rgb(63), "digits"),
    "vgg11": ({"num_classes": 4, "width": 0.0625, "hidden": 16}, "classification", FOUR, _rgb(32),
              "digits"),
    "googlenet": ({"num_classes": 4}, "classification", FOUR, _rgb(15), "digits"),
    "resnet18": ({"num_classes": 4}, "classification", FOUR, _rgb(16), "digits"),
    "resnet50": ({"num_classes": 4}, "classification", FOUR, _rgb(32), "digits"),
    "inception_v3": ({"num_classes": 4}, "classification", FOUR, _rgb(75), "digits"),
})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: the exports of the largest torchvision networks")


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    torch.set_num_threads(1)


MakeCheckpoint = Callable[..., Path]


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("checkpoints")


@pytest.fixture(scope="session")
def make_checkpoint(ckpt_dir: Path) -> MakeCheckpoint:
    """Write a tiny untrained checkpoint of ``arch`` (overrides as keyword arguments)."""

    def make(arch: str, filename: str | None = None, **override: Any) -> Path:
        kwargs, task, labels, inp, data = TINY[arch]
        kwargs = override.pop("arch_kwargs", kwargs)
        torch.manual_seed(0)
        module = build_model(arch, **kwargs)
        path = ckpt_dir / (filename or f"{arch}.pt")
        save_checkpoint(
            path, arch=arch, arch_kwargs=kwargs, task=override.pop("task", task),
            labels=override.pop("labels", labels), input_spec=override.pop("input_spec", inp),
            state_dict=module.state_dict(), metrics={}, provenance={"data": data, "epochs": 0, "seed": 0},
        )
        assert not override, f"unused overrides {override}"
        return path

    return make


@pytest.fixture(scope="session")
def exported(make_checkpoint: MakeCheckpoint, tmp_path_factory: pytest.TempPathFactory
             ) -> Callable[[str], tuple[Any, Path]]:
    """Export an architecture once per session (ONNX + TorchScript) -> (ExportResult, store)."""
    from export.pipeline import ExportOptions, export_checkpoint

    cache: dict[str, tuple[Any, Path]] = {}

    def get(arch: str) -> tuple[Any, Path]:
        if arch not in cache:
            store = tmp_path_factory.mktemp(f"store-{arch}") / "model_store"
            result = export_checkpoint(make_checkpoint(arch), arch, ExportOptions(store=store))
            cache[arch] = (result, store)
        return cache[arch]

    return get


def _snapshot(root: Path) -> dict[str, str]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def snapshot() -> Callable[[Path], dict[str, str]]:
    """Every file and folder under a root (relative path -> sha256), to prove it was not touched."""
    return _snapshot
