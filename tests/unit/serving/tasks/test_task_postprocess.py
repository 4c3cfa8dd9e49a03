"""Post-processing: top-k, masks, style images, capsule answers, options and specs."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from serving.errors import InvalidInput
from serving.tasks import explain, postprocess
from serving.tasks.options import TaskOptions
from serving.tasks.spec import TaskSpec


def test_topk_is_softmax_sorted_with_labels() -> None:
    logits = np.array([1.0, 3.0, 2.0, 0.0], dtype=np.float32)
    got = postprocess.classification(logits, ["a", "b", "c"], 3)
    assert list(got) == ["b", "c", "a"]
    probs = np.exp(logits) / np.exp(logits).sum()
    assert got["b"] == pytest.approx(probs[1])
    assert list(postprocess.classification(logits, [], 10)) == ["1", "2", "0", "3"]


def test_capsule_lengths_are_not_softmaxed() -> None:
    got = postprocess.classification(np.array([0.1, 0.9]), ["x", "y"], 2, "capsule_lengths")
    assert got == {"y": pytest.approx(0.9), "x": pytest.approx(0.1)}


def test_mask_png_at_original_size_with_palette() -> None:
    logits = np.zeros((3, 4, 6), dtype=np.float32)
    logits[2, :, 3:] = 5.0
    logits[1, :2, :3] = 5.0
    mask = postprocess.mask_at(logits, (12, 8))
    png = Image.open(io.BytesIO(postprocess.mask_png(mask, 3)))
    assert png.mode == "P" and png.size == (12, 8)
    arr = np.asarray(png)
    assert arr[0, 0] == 1 and arr[7, 11] == 2 and arr[7, 0] == 0
    assert png.getpalette()[3:6] != png.getpalette()[6:9]


def test_segmentation_json_grid_and_probabilities() -> None:
    logits = np.zeros((2, 2, 2), dtype=np.float32)
    logits[1, 0, 0] = 10
    body = postprocess.segmentation_json(logits, ["background", "cell"], (2, 2), True)
    assert body["mask"] == [[1, 0], [0, 0]]
    assert body["probabilities"]["cell"][0][0] > 0.99


def test_style_image_png_and_jpeg() -> None:
    img = np.random.default_rng(0).random((3, 5, 7)).astype(np.float32)
    png, ctype = postprocess.style_image(img, "png")
    assert ctype == "image/png"
    arr = np.asarray(Image.open(io.BytesIO(png)))
    assert arr.shape == (5, 7, 3)
    assert np.abs(arr / 255.0 - img.transpose(1, 2, 0)).max() <= 0.5 / 255 + 1e-6
    jpg, ctype = postprocess.style_image(img, "jpeg")
    assert ctype == "image/jpeg" and jpg[:2] == b"\xff\xd8"


def test_capsule_answer_with_poses_and_reconstruction() -> None:
    lengths = np.array([0.1, 0.8, 0.3])
    poses = np.arange(48, dtype=np.float32).reshape(3, 16)
    body = postprocess.capsule(lengths, ["a", "b", "c"], 2, poses, np.full((1, 4, 4), 0.5))
    assert body["class"] == "b" and body["index"] == 1
    assert list(body["lengths"]) == ["b", "c"]
    assert np.array_equal(np.asarray(body["poses"]), poses)
    recon = Image.open(io.BytesIO(base64.b64decode(body["reconstruction"])))
    assert recon.size == (4, 4)
    json.dumps(body)


def test_perturbation_sweeps_each_dimension_of_the_winner() -> None:
    poses = np.ones((10, 16), dtype=np.float32)
    variants = explain.perturbed_poses(poses, 3)
    assert variants.shape == (176, 10, 16)
    assert np.count_nonzero(variants[:, [0, 1, 2, 4]]) == 0
    np.testing.assert_allclose(variants[:11, 3, 0], 1 + np.linspace(-0.25, 0.25, 11), rtol=1e-6)
    np.testing.assert_allclose(variants[11:, 3, 0], 1.0)
    grid = Image.open(io.BytesIO(explain.grid_png(np.zeros((176, 1, 28, 28)), 16)))
    assert grid.size == (11 * 29 + 1, 16 * 29 + 1)


def test_options_from_query_and_accept() -> None:
    assert TaskOptions.parse({}, "*/*") == TaskOptions()
    assert TaskOptions.parse({"topk": "3"}, "image/jpeg").format == "jpeg"
    assert TaskOptions.parse({"format": "png"}, "application/json").format == "png"
    assert TaskOptions.parse({"poses": "true"}).poses
    for bad in ({"topk": "x"}, {"topk": "0"}, {"format": "gif"}, {"poses": "maybe"}):
        with pytest.raises(InvalidInput):
            TaskOptions.parse(bad)


def test_spec_defaults_and_errors() -> None:
    seg = TaskSpec.from_parameters("u", {"task": "segmentation", "input_color": "RGB",
                                         "mean": "0.1,0.2,0.3", "std": "1"})
    assert seg.resize == "none" and seg.std == (1.0, 1.0, 1.0)
    with pytest.raises(InvalidInput, match="no image task"):
        TaskSpec.from_parameters("raw", {})
    with pytest.raises(InvalidInput, match="3 values for 1 channel"):
        TaskSpec.from_parameters("m", {"task": "classification", "input_color": "L",
                                       "mean": "1,2,3"})


def _bright_with_dark_stripe(width: int, height: int) -> bytes:
    """White everywhere except a black stripe over the right quarter, as PNG bytes."""
    pixels = np.full((height, width), 255, np.uint8)
    pixels[:, width * 3 // 4:] = 0
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _threshold_model(tensor: np.ndarray) -> np.ndarray:
    """A stand-in segmentation output: class 1 where the fed pixel is bright, class 0 elsewhere
    (padding is black, so it reads as class 0)."""
    return np.stack([np.full(tensor.shape[1:], 0.5, np.float32), tensor[0]])


@pytest.mark.parametrize("policy", ["keep_aspect_pad", "keep_aspect_crop", "exact"])
def test_masks_map_back_through_letterbox_and_crop(policy: str) -> None:
    from serving.tasks.images import prepare

    spec = TaskSpec.from_parameters("seg", {
        "task": "segmentation", "input_color": "L", "input_height": "32", "input_width": "32",
        "mean": "0", "std": "1", "resize": policy})
    width, height = 80, 40
    prepared = prepare(spec, _bright_with_dark_stripe(width, height), 10**6)
    logits = _threshold_model(prepared.tensor)
    mask = postprocess.mask_at(logits, prepared.original_size, prepared.fed_size,
                               prepared.content_box)
    assert mask.shape == (height, width)
    want = np.ones((height, width), np.uint8)
    want[:, width * 3 // 4:] = 0
    if policy == "keep_aspect_crop":  # 80x40 -> 64x32, 16 fed pixels cut off each side
        want[:, :20] = 0
        want[:, 60:] = 0
    # Nearest-neighbour edges may land one original pixel either way.
    assert (mask != want).mean() < 0.03, policy
    body = postprocess.segmentation_json(logits, ["bg", "fg"], prepared.original_size, False,
                                         prepared.fed_size, prepared.content_box)
    assert np.array_equal(np.array(body["mask"], np.uint8), mask)
