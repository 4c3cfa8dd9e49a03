"""The default models: what ``make models`` trains, the quality gates they must pass, and the
report (``docs/models.md`` with curves and sample outputs).

Each model is trained through the training CLI's :func:`training.cli.main`, with fixed seeds
and one CPU thread, so a rerun on the same platform reproduces the weights bit for bit.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.cli import curves_path, get_args_parser, main

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DefaultModel:
    name: str  # checkpoint file stem
    argv: tuple[str, ...]  # training CLI arguments (without --out)
    gate_metric: str
    gate: float
    higher_is_better: bool = True

    def passed(self, metrics: dict[str, float]) -> bool:
        value = metrics.get(self.gate_metric, float("nan"))
        return value >= self.gate if self.higher_is_better else value <= self.gate


DEFAULT_MODELS = (
    DefaultModel("lenet", ("lenet", "--data", "mnist5k", "--epochs", "30", "--lr", "2e-3"),
                 "test_accuracy", 0.97),
    DefaultModel("capsnet", ("capsnet", "--data", "mnist5k", "--epochs", "15", "--lr", "2e-3"),
                 "test_accuracy", 0.98),
    # the lecture-scale ImageNet-era CNNs, on the same digits resized to the side each needs
    DefaultModel("alexnet", ("alexnet_lecture", "--data", "mnist5k", "--epochs", "15",
                             "--lr", "1e-3"), "test_accuracy", 0.965),
    DefaultModel("vgg", ("vgg_lecture", "--data", "mnist5k", "--epochs", "15", "--lr", "1e-3"),
                 "test_accuracy", 0.96),
    DefaultModel("googlenet", ("googlenet_lecture", "--data", "mnist5k", "--epochs", "20",
                               "--lr", "3e-3"), "test_accuracy", 0.95),
    DefaultModel("unet", ("unet", "--data", "shapes", "--epochs", "12", "--batch-size", "16",
                          "--lr", "5e-3", "--model-kwargs", '{"base_width": 16, "depth": 3}'),
                 "test_mean_iou", 0.85),
    DefaultModel("style_mosaic", ("transformer_net", "--data", "photos", "--style", "mosaic",
                                  "--epochs", "4", "--steps-per-epoch", "100", "--batch-size", "4",
                                  "--lr", "2e-3", "--style-weight", "100", "--lowpass-weight", "0",
                                  "--model-kwargs", '{"width": 16, "residual_blocks": 3}'),
                 "test_style_distance_ratio", 0.1, higher_is_better=False),
)


def names() -> list[str]:
    return [m.name for m in DEFAULT_MODELS]


def train_default(model: DefaultModel, out_dir: Path, seed: int = 0, dry_run: bool = False
                  ) -> dict[str, Any]:
    argv = [*model.argv, "--out", str(out_dir / f"{model.name}.pt"), "--seed", str(seed),
            "--threads", "1", "--device", "cpu"]
    if dry_run:
        argv.append("--dry-run")
    log.info("training %s: python -m training %s", model.name, " ".join(argv))
    return main(get_args_parser().parse_args(argv))


def train_timed(model: DefaultModel, out_dir: Path, seed: int = 0, dry_run: bool = False
                ) -> tuple[dict[str, Any], float]:
    """:func:`train_default` plus its wall time; importable, so a spawned worker can run it."""
    if not logging.getLogger().handlers:  # a fresh worker process
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    t0 = time.monotonic()
    ckpt = train_default(model, out_dir, seed, dry_run)
    return ckpt, time.monotonic() - t0


def copy_curves(out_dir: Path, img_dir: Path) -> None:
    img_dir.mkdir(parents=True, exist_ok=True)
    for m in DEFAULT_MODELS:
        src = curves_path(out_dir / f"{m.name}.pt")
        if src.exists():
            shutil.copyfile(src, img_dir / f"{m.name}_curves.png")
