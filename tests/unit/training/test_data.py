"""Offline data: the fixed mnist5k split, shapes masks, photos, sample_inputs."""

from __future__ import annotations

import pytest
import torch

from training import data, photos, shapes


def test_mnist5k_split_has_every_class_400_100() -> None:
    ds = data.load("mnist5k")
    assert ds.train_x.shape == (4000, 1, 28, 28) and ds.test_x.shape == (1000, 1, 28, 28)
    assert torch.bincount(ds.train_y, minlength=10).tolist() == [400] * 10
    assert torch.bincount(ds.test_y, minlength=10).tolist() == [100] * 10
    # disjoint: no test digit appears in train
    train_rows = {tuple(r) for r in (ds.train_x.flatten(1) * 255).round().to(torch.uint8).tolist()}
    test_rows = [tuple(r) for r in (ds.test_x.flatten(1) * 255).round().to(torch.uint8).tolist()]
    assert sum(r in train_rows for r in test_rows) < 5  # MNIST holds a few exact duplicates
    # fixed: independent of anything but the split seed
    assert torch.equal(data.load("mnist5k").test_y, ds.test_y)


def test_shapes_masks_match_their_images() -> None:
    x, m = shapes.generate(8, seed=3)
    x2, m2 = shapes.generate(8, seed=3)
    assert (x == x2).all() and (m == m2).all()
    assert x.shape == (8, 1, 64, 64) and x.min() >= 0 and x.max() <= 1
    assert set(int(v) for v in torch.from_numpy(m).unique()) <= {0, 1, 2}
    assert (m > 0).any(axis=(1, 2)).all()  # every image holds at least one shape


def test_sample_inputs_are_normalised_held_out_data() -> None:
    ds = data.load("mnist5k")
    x = data.sample_inputs("mnist5k", 16, seed=1)
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    raw = x * ds.std[0] + ds.mean[0]
    test = ds.test_x.flatten(1)
    for row in raw.flatten(1):
        assert (test - row).abs().amax(dim=1).min() < 1e-5  # each one is a test image
    assert torch.equal(x, data.sample_inputs("mnist5k", 16, seed=1))
    rgb = data.sample_inputs("digits", 4, color="RGB", size=32)
    assert rgb.shape == (4, 3, 32, 32)
    seg = data.sample_inputs("shapes", 3)
    assert seg.shape == (3, 1, 64, 64)
    style = data.sample_inputs("photos", 2)
    assert style.shape[:2] == (2, 3) and float(style.min()) >= 0 and float(style.max()) <= 1


def test_unknown_dataset_lists_the_valid_names() -> None:
    with pytest.raises(data.UnknownDataset, match="mnist5k, digits, shapes, photos"):
        data.load("cifar10")


def test_photos_come_only_from_bundled_files() -> None:
    for name in [*photos.TRAIN_PHOTOS, *photos.TEST_PHOTOS]:
        package, filename = {**photos.TRAIN_PHOTOS, **photos.TEST_PHOTOS}[name]
        assert (photos._package_dir(package) / filename).is_file()
    assert not set(photos.TRAIN_PHOTOS) & set(photos.TEST_PHOTOS)
    style = photos.style_image("mosaic", 64)
    assert style.shape == (64, 64, 3) and (style == 0).all(axis=2).any()  # black borders
