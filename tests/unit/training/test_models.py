"""Every architecture in the registry: forward and backward on a tiny input."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from training.models.registry import ARCHITECTURES, UnknownArchitecture, build_model

# (kwargs for a tiny variant, input shape, expected output shape without batch)
TINY: dict[str, tuple[dict[str, Any], tuple[int, ...], tuple[int, ...]]] = {
    "lenet": ({"num_classes": 10}, (1, 28, 28), (10,)),
    "capsnet": ({"num_classes": 4, "conv_channels": 8, "primary_types": 2,
                 "decoder_hidden": [16, 32]}, (1, 28, 28), (4,)),
    "unet": ({"num_classes": 3, "base_width": 4, "depth": 2}, (1, 19, 23), (3, 19, 23)),
    "transformer_net": ({"width": 4, "residual_blocks": 1}, (3, 17, 22), (3, 17, 22)),
    "alexnet": ({"num_classes": 5, "hidden": 16}, (3, 63, 63), (5,)),
    "vgg11": ({"num_classes": 5, "width": 0.0625, "hidden": 16}, (3, 32, 32), (5,)),
    "vgg16": ({"num_classes": 5, "width": 0.0625, "hidden": 16, "batch_norm": True},
              (3, 32, 32), (5,)),
    "googlenet": ({"num_classes": 5}, (3, 32, 32), (5,)),
    "inception_v3": ({"num_classes": 5}, (3, 75, 75), (5,)),
    "resnet18": ({"num_classes": 5, "small_input": True}, (3, 16, 16), (5,)),
    "resnet50": ({"num_classes": 5}, (3, 32, 32), (5,)),
    "alexnet_lecture": ({"num_classes": 5, "input_size": 63, "widths": [4, 8, 8, 8, 8],
                         "hidden": 16}, (1, 63, 63), (5,)),
    "vgg_lecture": ({"num_classes": 5, "width": 0.0625, "hidden": 16}, (1, 32, 32), (5,)),
    "googlenet_lecture": ({"num_classes": 5, "in_channels": 3, "input_size": 15, "width": 0.125},
                          (3, 15, 15), (5,)),
}


def test_every_architecture_has_a_tiny_case() -> None:
    assert set(TINY) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_forward_backward(arch: str) -> None:
    kwargs, shape, out_shape = TINY[arch]
    torch.manual_seed(0)
    model = build_model(arch, **kwargs).train()
    x = torch.rand(2, *shape)
    out = model(x)
    first = out[0] if isinstance(out, tuple) else out
    assert tuple(first.shape) == (2, *out_shape)
    loss = sum(o.float().pow(2).mean() for o in (out if isinstance(out, tuple) else (out,)))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)
    model.eval()
    with torch.no_grad():
        again = model(x[:1])
    assert torch.isfinite(again[0] if isinstance(again, tuple) else again).all()


def test_style_output_is_an_image_of_the_input_size() -> None:
    model = build_model("transformer_net", width=4, residual_blocks=1).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 33, 47))
    assert y.shape == (1, 3, 33, 47) and float(y.min()) >= 0.0 and float(y.max()) <= 1.0


@pytest.mark.parametrize("up_mode", ["upconv", "resize"])
def test_unet_odd_sizes_and_scripting(up_mode: str) -> None:
    model = build_model("unet", num_classes=3, base_width=4, depth=3, up_mode=up_mode).eval()
    scripted = torch.jit.script(model)
    for h, w in [(61, 59), (37, 50), (9, 15)]:
        x = torch.rand(1, 1, h, w)
        with torch.no_grad():
            assert model(x).shape == (1, 3, h, w)
            torch.testing.assert_close(scripted(x), model(x))


def test_paper_capsnet_has_8_2_million_parameters() -> None:
    model = build_model("capsnet", conv_channels=256, primary_types=32)
    assert sum(p.numel() for p in model.parameters()) == 8_215_568


def test_unknown_architecture_names_the_valid_ones() -> None:
    with pytest.raises(UnknownArchitecture) as err:
        build_model("lenet6")
    assert "lenet6" in str(err.value) and "capsnet" in str(err.value)


def test_lenet_options() -> None:
    model = build_model("lenet", activation="tanh", pooling="avg")
    assert isinstance(model.features[1], torch.nn.Tanh)
    assert isinstance(model.features[2], torch.nn.AvgPool2d)
    with pytest.raises(ValueError, match="activation"):
        build_model("lenet", activation="gelu6")
