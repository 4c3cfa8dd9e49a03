"""The training CLI: each task's --dry-run, determinism, resume, and one-line errors (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.checkpoint import load_checkpoint
from training.cli import curves_path, get_args_parser, main, run

ROOT = Path(__file__).resolve().parents[3]

DRY_RUNS = {
    "classification": ["lenet", "--data", "mnist5k"],
    "capsule_classification": ["capsnet", "--model-kwargs",
                               '{"conv_channels": 8, "primary_types": 2, "decoder_hidden": [16, 32]}'],
    "segmentation": ["unet", "--data", "shapes", "--batch-size", "4",
                     "--model-kwargs", '{"base_width": 4, "depth": 2}'],
    "style_transfer": ["transformer_net", "--batch-size", "2", "--image-size", "32",
                       "--model-kwargs", '{"width": 4, "residual_blocks": 1}'],
}


@pytest.mark.parametrize("task", sorted(DRY_RUNS))
def test_dry_run_writes_a_valid_checkpoint(task: str, tmp_path: Path) -> None:
    out = tmp_path / "m.pt"
    ckpt = main(get_args_parser().parse_args([*DRY_RUNS[task], "--dry-run", "--out", str(out)]))
    assert ckpt["task"] == task
    loaded = load_checkpoint(out)
    assert loaded["provenance"]["dry_run"] is True
    assert loaded["metrics"] and all(v == v for v in loaded["metrics"].values())  # no NaN
    assert curves_path(out).stat().st_size > 1000
    if task == "segmentation":
        assert loaded["labels"] == ["background", "ellipse", "rectangle"]
        assert loaded["input"]["fully_convolutional"] is True
    if task == "style_transfer":
        assert loaded["labels"] == [] and loaded["input"]["mean"] == [0.0, 0.0, 0.0]


def test_torchvision_net_on_grey_digits_is_fed_rgb(tmp_path: Path) -> None:
    ckpt = main(get_args_parser().parse_args([
        "vgg11", "--data", "digits", "--dry-run", "--out", str(tmp_path / "v.pt"),
        "--model-kwargs", '{"width": 0.0625, "hidden": 16}']))
    assert ckpt["input"]["color"] == "RGB" and ckpt["input"]["height"] == 32
    assert len(ckpt["input"]["mean"]) == 3


def test_same_seed_same_weights_and_resume(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    args = ["lenet", "--dry-run", "--seed", "3", "--save-optimizer"]
    main(get_args_parser().parse_args([*args, "--out", str(a)]))
    main(get_args_parser().parse_args([*args, "--out", str(b)]))
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    assert "optimizer" in load_checkpoint(a)
    assert sorted(p.name for p in tmp_path.glob("*.pt*")) == ["a.pt", "b.pt"]  # no temp left
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = tmp_path / "c.pt"
    resumed = main(get_args_parser().parse_args(
        ["lenet", "--dry-run", "--resume", str(a), "--out", str(c)]))
    assert resumed["provenance"]["epochs"] == 2
    assert [h["epoch"] for h in resumed["provenance"]["history"]] == [1, 2]
    assert not all(torch.equal(resumed["state_dict"][k], sa[k]) for k in sa)


def test_dry_run_without_out_builds_the_real_checkpoint_format(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ckpt = main(get_args_parser().parse_args(["lenet", "--dry-run"]))
    assert ckpt["format"] == "capserve-checkpoint"
    assert {"versions", "created"} <= set(ckpt["provenance"])
    assert not list(tmp_path.rglob("*.pt"))  # nothing written


@pytest.mark.parametrize(("argv", "expected"), [
    (["lenet7"], "unknown architecture 'lenet7'; choose one of: alexnet, alexnet_lecture, capsnet"),
    (["lenet", "--data", "cifar"], "unknown data set 'cifar'; choose one of: mnist5k, digits"),
    (["unet", "--data", "mnist5k"], "choose one of: shapes"),
])
def test_bad_names_exit_2_with_one_line(argv: list[str], expected: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert run(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0]


def test_module_entry_point_exits_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "training", "nonet", "--dry-run"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "choose one of" in proc.stderr
