"""Decoding and preprocessing of every supported format and of the bad-input corpus."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from serving.errors import InvalidInput, PayloadTooLarge
from serving.tasks.images import decode_image, prepare, resize_with_box, to_color
from serving.tasks.spec import TaskSpec

DATA = Path(__file__).resolve().parents[3] / "data"
LIMIT = 40_000_000


def spec(**kw: str) -> TaskSpec:
    params = {"task": "classification", "input_color": "L", "input_height": "28",
              "input_width": "28", "mean": "0.5", "std": "0.25", **kw}
    return TaskSpec.from_parameters("m", params)


@pytest.mark.parametrize("name", ["photo.png", "photo.jpg", "photo_progressive.jpg", "photo.bmp",
                                  "photo.webp", "photo.tiff", "palette.png"])
def test_every_format_decodes_to_the_same_picture(name: str) -> None:
    ref = np.asarray(Image.open(DATA / "images" / "photo.png").convert("RGB"), dtype=np.float64)
    got = decode_image((DATA / "images" / name).read_bytes(), LIMIT)
    arr = np.asarray(to_color(got.image, "RGB"), dtype=np.float64)
    assert arr.shape == ref.shape
    tolerance = 40 if name == "palette.png" else 12  # JPEG loss, 16-colour palette
    assert np.abs(arr - ref).mean() < tolerance


def test_exif_orientation_is_applied() -> None:
    got = decode_image((DATA / "images" / "exif_rotated.jpg").read_bytes(), LIMIT)
    assert (got.width, got.height) == (20, 40)


def _rotated(fmt: str, how: str) -> bytes:
    """A 40 wide, 20 high image whose metadata says 'rotate 90' (orientation 6) by ``how``."""
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    buf = io.BytesIO()
    if how == "exif":
        exif = Image.Exif()
        exif[0x0112] = 6
        image.save(buf, format=fmt, exif=exif)
    else:
        from PIL import PngImagePlugin

        meta = PngImagePlugin.PngInfo()
        meta.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta><rdf:Description tiff:Orientation="6"/>'
                      "</x:xmpmeta>")
        image.save(buf, format=fmt, pnginfo=meta)
    return buf.getvalue()


@pytest.mark.parametrize(("fmt", "how"), [("PNG", "exif"), ("WEBP", "exif"), ("JPEG", "exif"),
                                          ("TIFF", "exif"), ("PNG", "xmp")])
def test_orientation_is_applied_wherever_pillow_finds_it(fmt: str, how: str) -> None:
    got = decode_image(_rotated(fmt, how), LIMIT)
    assert (got.width, got.height) == (20, 40)


def test_images_without_orientation_keep_their_size() -> None:
    buf = io.BytesIO()
    Image.new("L", (40, 20), 7).save(buf, format="PNG")
    got = decode_image(buf.getvalue(), LIMIT)
    assert (got.width, got.height) == (40, 20)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "JPEG", "WEBP"])
def test_small_image_hint_reads_the_header_size(fmt: str) -> None:
    from serving.tasks.images import is_small_image

    cases = [((28, 28), True), ((129, 128), False)]
    if fmt != "BMP":  # uncompressed: a 128x128 BMP is over the byte limit by itself
        cases.append(((128, 128), True))
    for size, small in cases:
        buf = io.BytesIO()
        Image.new("RGB", size, 0).save(buf, format=fmt)
        assert is_small_image(buf.getvalue()) is small, (fmt, size)


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    got = decode_image((DATA / "corpus" / "gray16.png").read_bytes(), LIMIT)
    grey = np.asarray(to_color(got.image, "L"))
    ref = np.asarray(Image.open(DATA / "images" / "digit7.png"))
    assert grey.dtype == np.uint8
    assert np.array_equal(grey, ref)


def test_cmyk_jpeg_and_animated_gif_first_frame() -> None:
    cmyk = decode_image((DATA / "corpus" / "cmyk.jpg").read_bytes(), LIMIT)
    assert to_color(cmyk.image, "RGB").mode == "RGB"
    gif = decode_image((DATA / "corpus" / "animated.gif").read_bytes(), LIMIT)
    first = np.asarray(to_color(gif.image, "L"))
    assert np.array_equal(first > 127, np.asarray(Image.open(DATA / "images" / "digit7.png")) > 127)


@pytest.mark.parametrize(("name", "needle"), [
    ("truncated.png", "PNG"), ("truncated.jpg", "JPEG"), ("empty.bin", "0 bytes"),
    ("text.txt", "text"),
])
def test_broken_inputs_are_invalid_with_a_reason(name: str, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        decode_image((DATA / "corpus" / name).read_bytes(), LIMIT)


def test_giant_header_is_refused_before_decoding() -> None:
    with pytest.raises(PayloadTooLarge, match="30000x30000|pixels"):
        decode_image((DATA / "corpus" / "huge_header.png").read_bytes(), LIMIT)


def test_pixel_limit_is_configurable() -> None:
    data = (DATA / "images" / "photo.png").read_bytes()
    with pytest.raises(PayloadTooLarge, match="64x48 = 3072 pixels, over the limit of 3000"):
        decode_image(data, 3000)


def test_prepare_normalises_chw() -> None:
    data = (DATA / "images" / "digit7.png").read_bytes()
    out = prepare(spec(), data, LIMIT)
    ref = (np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32) / 255 - 0.5) / 0.25
    assert out.tensor.shape == (1, 28, 28) and out.tensor.dtype == np.float32
    np.testing.assert_allclose(out.tensor[0], ref, rtol=1e-6)


def resize_for(spec: TaskSpec, image: Image.Image) -> Image.Image:
    return resize_with_box(spec, image)[0]


def test_resize_policies() -> None:
    wide = Image.new("RGB", (100, 50), (255, 255, 255))
    assert resize_for(spec(resize="exact"), wide).size == (28, 28)
    padded = np.asarray(resize_for(spec(resize="keep_aspect_pad"), wide))
    assert padded.shape[:2] == (28, 28)
    assert padded[0].max() == 0 and padded[14].min() == 255  # black bars top, image centre
    cropped = np.asarray(resize_for(spec(resize="keep_aspect_crop"), wide))
    assert cropped.shape[:2] == (28, 28) and cropped.min() == 255
    conv = TaskSpec.from_parameters("u", {"task": "segmentation", "max_side": "64"})
    assert resize_for(conv, wide).size == (64, 32)
    with pytest.raises(InvalidInput, match="at least 16"):
        resize_for(conv, Image.new("RGB", (1, 1)))


def test_one_pixel_image_is_accepted_by_fixed_size_models() -> None:
    out = prepare(spec(), (DATA / "corpus" / "one_pixel.png").read_bytes(), LIMIT)
    np.testing.assert_allclose(out.tensor, (1.0 - 0.5) / 0.25)


_SAMPLES = [(DATA / "images" / n).read_bytes() for n in
            ("photo.png", "photo.jpg", "photo.bmp", "photo.webp", "photo.tiff", "palette.png")]


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow notes corrupt TIFF tags
@settings(max_examples=150, deadline=None)
@given(sample=st.sampled_from(range(len(_SAMPLES))), cut=st.integers(0, 10_000),
       flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=8))
def test_corrupted_images_only_ever_raise_client_errors(sample: int, cut: int,
                                                        flips: list[tuple[int, int]]) -> None:
    data = bytearray(_SAMPLES[sample])
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    data = data[: max(0, len(data) - cut % len(data))]
    try:
        prepare(spec(), bytes(data), 1_000_000)
    except (InvalidInput, PayloadTooLarge) as exc:
        assert str(exc)
