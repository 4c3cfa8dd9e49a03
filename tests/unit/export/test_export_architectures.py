"""Every architecture of the zoo exports to ONNX and TorchScript and passes the parity gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.pipeline import ExportOptions, export_checkpoint

FAST = ["lenet", "capsnet", "unet", "transformer_net", "alexnet", "vgg11", "googlenet", "resnet18"]
# The two largest torchvision nets have no width knob: ~20 M parameters even at their smallest
# input, ~25 s of ONNX export each on a loaded 2-core machine.
SLOW = ["resnet50", "inception_v3"]


def _export(arch: str, make_checkpoint, tmp_path: Path, **opts) -> tuple:
    ckpt = make_checkpoint(arch)
    store = tmp_path / "store"
    result = export_checkpoint(ckpt, arch, ExportOptions(store=store, batch_sizes=(1, 7), **opts))
    return result, store


def _check_exported(arch: str, result, store: Path) -> None:
    assert result.passed, [a.gate.failures() for a in result.artifacts if a.gate]
    fmts = {a.fmt for a in result.artifacts}
    assert {"onnx", "torchscript"} <= fmts
    for model, artifact in ((arch, "model.onnx"), (f"{arch}_torchscript", "model.pt")):
        vdir = store / model / "1"
        assert (vdir / artifact).is_file()
        assert (store / model / "config.pbtxt").is_file()
        report = json.loads((vdir / "export_report.json").read_text())
        assert report["parity"]["passed"] is True
        cases = report["parity"]["cases"]
        # batches of 1 and 7 of random and all-zero inputs are always part of the gate
        assert {"random[b=1]", "random[b=7]", "zeros[b=1]", "zeros[b=7]"} <= set(cases)
        for case in cases.values():
            for out in case["outputs"].values():
                bound = max(1e-4, 1e-4 * out["scale"])
                assert out["max_abs_diff"] <= bound


@pytest.mark.parametrize("arch", FAST)
def test_architecture_exports_pass_the_gate(arch: str, make_checkpoint, tmp_path: Path) -> None:
    result, store = _export(arch, make_checkpoint, tmp_path)
    _check_exported(arch, result, store)


@pytest.mark.slow
@pytest.mark.parametrize("arch", SLOW)
def test_large_torchvision_exports_pass_the_gate(arch: str, make_checkpoint, tmp_path: Path) -> None:
    result, store = _export(arch, make_checkpoint, tmp_path)
    _check_exported(arch, result, store)
    if arch == "inception_v3":
        # untrained Inception logits are huge: the gate must have judged them relatively
        report = json.loads((store / arch / "1" / "export_report.json").read_text())
        scales = [o["scale"] for c in report["parity"]["cases"].values() for o in c["outputs"].values()]
        assert max(scales) > 1.0


def test_fully_convolutional_onnx_takes_any_size_and_batch(make_checkpoint, tmp_path: Path) -> None:
    """U-Net: dynamic batch and H/W in the ONNX graph, the odd 61x67 case in the gate, real inputs."""
    result, store = _export("unet", make_checkpoint, tmp_path)
    report = json.loads((store / "unet" / "1" / "export_report.json").read_text())
    assert "random-61x67[b=7]" in report["parity"]["cases"]
    assert "real[b=7]" in report["parity"]["cases"], report["parity"]["notes"]
    session = ort.InferenceSession(str(store / "unet" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input" and inp.shape[0] != 1 and not isinstance(inp.shape[2], int)
    (out,) = session.run(None, {"input": np.zeros((3, 1, 45, 70), np.float32)})
    assert out.shape == (3, 3, 45, 70)


def test_capsnet_exports_all_outputs_and_a_decoder(make_checkpoint, tmp_path: Path) -> None:
    result, store = _export("capsnet", make_checkpoint, tmp_path)
    assert result.passed
    session = ort.InferenceSession(str(store / "capsnet" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["lengths", "poses", "reconstruction"]
    lengths, poses, recon = session.run(None, {"input": np.zeros((2, 1, 28, 28), np.float32)})
    # the all-zero input is where a deleted squash epsilon would give NaN
    assert np.isfinite(lengths).all() and poses.shape == (2, 10, 16) and recon.shape == (2, 1, 28, 28)
    config = (store / "capsnet" / "config.pbtxt").read_text()
    assert 'string_value: "capsnet_decoder"' in config
    decoder = ort.InferenceSession(str(store / "capsnet_decoder" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert [i.name for i in decoder.get_inputs()] == ["poses"]
    (image,) = decoder.run(None, {"poses": poses})
    np.testing.assert_allclose(image, recon, atol=1e-5)  # masked by the longest capsule upstream
    assert 'string_value: "capsule_decoder"' in (store / "capsnet_decoder" / "config.pbtxt").read_text()


def test_torchscript_method_is_recorded(make_checkpoint, tmp_path: Path) -> None:
    """Own modules are scripted (or traced with a reason); torchvision nets are traced."""
    result, store = _export("resnet18", make_checkpoint, tmp_path)
    ts = next(a for a in result.artifacts if a.fmt == "torchscript")
    assert ts.method == "torch.jit.trace" and "torchvision" in ts.note
    loaded = torch.jit.load(str(store / "resnet18_torchscript" / "1" / "model.pt"))
    assert loaded(torch.zeros(5, 3, 16, 16)).shape == (5, 4)  # the trace generalises the batch
