"""The committed default checkpoints: loadable, and their stored metrics are real."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training import data
from training.checkpoint import load_checkpoint
from training.cli import get_args_parser
from training.defaults import DEFAULT_MODELS
from training.models.registry import build_model

CHECKPOINTS = Path(__file__).resolve().parents[3] / "checkpoints"


@pytest.mark.parametrize("model", DEFAULT_MODELS, ids=lambda m: m.name)
def test_default_checkpoint_passes_its_gate(model: object) -> None:
    from training.defaults import DefaultModel

    assert isinstance(model, DefaultModel)
    get_args_parser().parse_args(list(model.argv))  # the recipe is a valid command line
    ckpt = load_checkpoint(CHECKPOINTS / f"{model.name}.pt")
    assert model.passed(ckpt["metrics"]), ckpt["metrics"]
    assert ckpt["provenance"]["dry_run"] is False and ckpt["provenance"]["seed"] == 0


@pytest.mark.parametrize("name", ["lenet", "capsnet", "alexnet", "vgg", "googlenet"])
def test_stored_accuracy_is_reproduced_on_the_test_split(name: str) -> None:
    ckpt = load_checkpoint(CHECKPOINTS / f"{name}.pt")
    model = build_model(ckpt["arch"], **ckpt["arch_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    ds = data.load("mnist5k")
    side = ckpt["input"]["height"]  # the lecture CNNs see the digits resized
    x = data.normalize(data.adapt(ds.test_x, "L", side), ckpt["input"]["mean"], ckpt["input"]["std"])
    with torch.no_grad():
        out = torch.cat([model(x[i:i + 250]) if name != "capsnet" else model(x[i:i + 250])[0]
                         for i in range(0, 1000, 250)])
    accuracy = float((out.argmax(1) == ds.test_y).float().mean())
    assert accuracy == pytest.approx(ckpt["metrics"]["test_accuracy"], abs=1e-6)


def test_make_models_rewrites_docs_models_md_unchanged(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The page `make models` writes from the committed checkpoints is the committed page, so
    rerunning it keeps the hand-checked sections (the sample pictures are not redrawn here)."""
    from training.defaults import report

    monkeypatch.setattr(report, "SAMPLERS", {name: lambda *_: None for name in report.SAMPLERS})
    report.write_report(DEFAULT_MODELS, CHECKPOINTS, tmp_path)
    docs = CHECKPOINTS.parent / "docs" / "models.md"
    assert (tmp_path / "models.md").read_text() == docs.read_text()
