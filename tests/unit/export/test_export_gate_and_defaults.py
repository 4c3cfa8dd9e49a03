"""The parity comparison itself, and ``python -m export.defaults`` on a tiny checkpoint set."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from export import defaults
from export.parity import compare


def test_compare_is_relative_to_the_output_scale() -> None:
    ref = np.array([[1e12, -3e11]], np.float32)
    assert compare("logits", ref, ref * (1 + 1e-6)).passed  # |diff| 1e6 but relative 1e-6
    assert not compare("logits", ref, ref * (1 + 1e-3)).passed
    small = np.array([[0.5, -0.25]], np.float32)
    assert compare("logits", small, small + 5e-5).passed
    assert not compare("logits", small, small + 5e-4).passed


def test_compare_requires_finite_outputs_and_the_same_shape() -> None:
    ref = np.zeros((2, 3), np.float32)
    nan = ref.copy()
    nan[1, 2] = np.nan
    check = compare("lengths", ref, nan)
    assert not check.passed and not check.finite_ok
    assert compare("lengths", nan, nan).passed  # non-finite where eager is non-finite: allowed
    assert not compare("lengths", ref, np.zeros((2, 4), np.float32)).passed


def test_defaults_exports_present_checkpoints_and_then_skips(make_checkpoint, tmp_path: Path,
                                                             snapshot, capsys) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    shutil.copy(make_checkpoint("lenet"), ckpts / "lenet.pt")
    shutil.copy(make_checkpoint("capsnet"), ckpts / "capsnet.pt")
    store = tmp_path / "model_store"
    assert defaults.main(["--checkpoints", str(ckpts), "--store", str(store)]) == 0
    assert {p.name for p in store.iterdir()} == {
        "lenet", "lenet_torchscript", "lenet.mar",
        "capsnet", "capsnet_torchscript", "capsnet_decoder", "capsnet.mar",
    }
    for model in ("lenet", "lenet_torchscript", "capsnet", "capsnet_torchscript", "capsnet_decoder"):
        assert (store / model / "1" / "export_report.json").is_file()
        assert "max_batch_size: 32" in (store / model / "config.pbtxt").read_text()
    before = snapshot(store)
    capsys.readouterr()
    assert defaults.main(["--checkpoints", str(ckpts), "--store", str(store)]) == 0
    assert "lenet: already in" in capsys.readouterr().out
    assert snapshot(store) == before
    # a changed checkpoint is exported again, as a new version; the unchanged one is not
    shutil.copy(make_checkpoint("lenet", "lenet_tanh.pt", arch_kwargs={"activation": "tanh"}),
                ckpts / "lenet.pt")
    assert defaults.main(["--checkpoints", str(ckpts), "--store", str(store)]) == 0
    assert (store / "lenet" / "2").is_dir() and (store / "lenet_torchscript" / "2").is_dir()
    assert not (store / "capsnet" / "2").exists()


def test_defaults_without_checkpoints_says_so(tmp_path: Path, capsys) -> None:
    assert defaults.main(["--checkpoints", str(tmp_path), "--store", str(tmp_path / "s")]) == 1
    assert "make models" in capsys.readouterr().err
