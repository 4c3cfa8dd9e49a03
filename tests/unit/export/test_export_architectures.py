"""Every architecture of the zoo exports to ONNX and TorchScript and passes the parity gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

FAST = ["lenet", "capsnet", "unet", "transformer_net", "alexnet", "vgg11", "googlenet", "resnet18"]
# The two largest torchvision nets have no width knob: ~20 M parameters even at their smallest
# input, ~20 s of ONNX export each on a loaded 2-core machine.
SLOW = ["resnet50", "inception_v3"]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _check_exported(arch: str, result, store: Path) -> None:
    assert result.passed, [a.gate.failures() for a in result.artifacts if a.gate]
    assert {a.fmt for a in result.artifacts} == {"onnx", "torchscript"}
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
                assert out["max_abs_diff"] <= max(1e-4, 1e-4 * out["scale"])
                assert out["finite_where_eager_finite"]


@pytest.mark.parametrize("arch", FAST)
def test_architecture_exports_pass_the_gate(arch: str, exported) -> None:
    result, store = exported(arch)
    _check_exported(arch, result, store)


@pytest.mark.slow
@pytest.mark.parametrize("arch", SLOW)
def test_large_torchvision_exports_pass_the_gate(arch: str, exported) -> None:
    result, store = exported(arch)
    _check_exported(arch, result, store)


def test_real_inputs_are_part_of_the_gate(exported) -> None:
    _, store = exported("lenet")
    report = json.loads((store / "lenet" / "1" / "export_report.json").read_text())
    assert {"real[b=1]", "real[b=7]"} <= set(report["parity"]["cases"]), report["parity"]["notes"]


def test_fully_convolutional_onnx_takes_any_size_and_batch(exported) -> None:
    """U-Net: dynamic batch and H/W in the ONNX graph, and the odd 61x67 case in the gate."""
    _, store = exported("unet")
    report = json.loads((store / "unet" / "1" / "export_report.json").read_text())
    assert {"random-61x67[b=1]", "random-61x67[b=7]"} <= set(report["parity"]["cases"])
    session = _session(store / "unet" / "1" / "model.onnx")
    (inp,) = session.get_inputs()
    assert inp.name == "input" and not all(isinstance(d, int) for d in inp.shape)
    (out,) = session.run(None, {"input": np.zeros((3, 1, 45, 70), np.float32)})
    assert out.shape == (3, 3, 45, 70)


def test_capsnet_exports_all_outputs_and_a_decoder(exported) -> None:
    _, store = exported("capsnet")
    session = _session(store / "capsnet" / "1" / "model.onnx")
    assert [o.name for o in session.get_outputs()] == ["lengths", "poses", "reconstruction"]
    lengths, poses, recon = session.run(None, {"input": np.zeros((2, 1, 28, 28), np.float32)})
    # the all-zero input is where a deleted squash epsilon gives NaN (models.md §0.2)
    assert np.isfinite(lengths).all() and poses.shape == (2, 10, 16) and recon.shape == (2, 1, 28, 28)
    assert 'string_value: "capsnet_decoder"' in (store / "capsnet" / "config.pbtxt").read_text()
    decoder = _session(store / "capsnet_decoder" / "1" / "model.onnx")
    assert [i.name for i in decoder.get_inputs()] == ["poses"]
    mask = np.zeros_like(lengths)
    mask[np.arange(2), lengths.argmax(axis=1)] = 1.0
    (image,) = decoder.run(None, {"poses": poses * mask[..., None]})
    np.testing.assert_allclose(image, recon, atol=1e-5)
    config = (store / "capsnet_decoder" / "config.pbtxt").read_text()
    assert 'string_value: "capsule_decoder"' in config and "onnxruntime_onnx" in config


def test_torchscript_method_is_recorded(exported) -> None:
    """Own modules are scripted (or traced with the reason); torchvision nets are traced."""
    result, store = exported("resnet18")
    ts = next(a for a in result.artifacts if a.fmt == "torchscript")
    assert ts.method == "torch.jit.trace" and "torchvision" in ts.note
    loaded = torch.jit.load(str(store / "resnet18_torchscript" / "1" / "model.pt"))
    assert loaded(torch.zeros(5, 3, 16, 16)).shape == (5, 4)  # the trace generalises the batch
    result, _ = exported("unet")
    assert next(a for a in result.artifacts if a.fmt == "torchscript").method == "torch.jit.script"
