"""Hostile images: lying headers, decompression bombs, frame walks and wide temporaries."""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import GifImagePlugin, Image, TiffImagePlugin

from serving.errors import PayloadTooLarge
from serving.settings import Settings
from serving.tasks import pipelines as pipelines_mod
from serving.tasks.images import decode_image, is_small_image, to_color
from serving.tasks.spec import TaskSpec

LIMIT = 40_000_000


def _gif_with_screen(screen: tuple[int, int], frame: tuple[int, int]) -> bytes:
    """One frame of ``frame`` pixels in a GIF whose header claims a ``screen`` logical screen."""
    buf = io.BytesIO()
    Image.new("P", frame, 0).save(buf, format="GIF")
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", *screen)
    return bytes(data)


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` and carries 100 bytes of pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b""))


def _tiff_header(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="TIFF")
    data = bytearray(buf.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack("<HH", data[entry:entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength as LONG values
            data[entry + 2:entry + 4] = struct.pack("<H", 4)
            data[entry + 8:entry + 12] = struct.pack("<I", width if tag == 256 else height)
    return bytes(data)


def _webp_header(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="WEBP", lossless=True)
    data = buf.getvalue()
    at = data.index(b"VP8L") + 9  # after the chunk size and the 0x2f signature byte
    bits = struct.unpack("<I", data[at:at + 4])[0] & ~((1 << 28) - 1)
    bits |= (width - 1) | ((height - 1) << 14)
    return data[:at] + struct.pack("<I", bits) + data[at + 4:]


def test_gif_with_a_tiny_screen_and_a_big_frame_is_not_a_small_image() -> None:
    gif = _gif_with_screen((1, 1), (4000, 4000))
    assert len(gif) < 16 * 1024  # small on the wire: only the frame's real size tells
    assert not is_small_image(gif)


def test_gif_frame_size_is_checked_against_the_pixel_limit() -> None:
    gif = _gif_with_screen((1, 1), (4000, 4000))
    with pytest.raises(PayloadTooLarge, match=r"4000x4000 = 16000000 pixels.*max_image_pixels"):
        decode_image(gif, 1_000_000)


def test_big_gif_frame_is_prepared_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[str] = []
    real = pipelines_mod.prepare

    def spy(*args: object) -> object:
        threads.append(threading.current_thread().name)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(pipelines_mod, "prepare", spy)
    spec = TaskSpec.from_parameters("m", {"task": "classification", "input_color": "L",
                                          "input_height": "28", "input_width": "28"})
    pipelines = pipelines_mod.Pipelines(None, Settings(image_workers=1))  # type: ignore[arg-type]
    try:
        asyncio.run(pipelines._prepare(spec, _gif_with_screen((1, 1), (1500, 1500))))
    finally:
        pipelines.close()
    assert threads and threads[0].startswith("capserve-image"), threads


@pytest.mark.parametrize("cls", [GifImagePlugin.GifImageFile, TiffImagePlugin.TiffImageFile])
def test_decoding_never_walks_the_frames(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    def walk(self: object) -> int:
        raise AssertionError("n_frames walks every frame of an untrusted file")

    monkeypatch.setattr(cls, "n_frames", property(walk))
    frames = [Image.new("L", (16, 16), v) for v in (10, 200, 90)]
    buf = io.BytesIO()
    fmt = "GIF" if cls is GifImagePlugin.GifImageFile else "TIFF"
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:])
    got = decode_image(buf.getvalue(), LIMIT)
    assert (got.width, got.height) == (16, 16)
    assert abs(int(np.asarray(to_color(got.image, "L"))[0, 0]) - 10) <= 2  # the first frame


def test_sixteen_bit_conversion_has_no_float64_temporaries() -> None:
    side = 2000
    gradient = (np.arange(side * side, dtype=np.uint32) % 65536).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(gradient.reshape(side, side)).save(buf, format="PNG")
    decoded = decode_image(buf.getvalue(), LIMIT)
    assert decoded.image.mode.startswith("I;16")
    tracemalloc.start()
    try:
        grey = to_color(decoded.image, "L")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # The 8-bit result is 1 byte a pixel; float64 temporaries cost 8 bytes a pixel each.
    assert peak < 3 * side * side, f"{peak / 1e6:.1f} MB for a {side * side / 1e6:.0f} MP image"
    assert grey.mode == "L"
    assert np.asarray(grey)[0, 257] == 1  # 257 / 65535 * 255, scaled, not clipped


@pytest.mark.parametrize(("fmt", "make"), [("PNG", _png_header), ("TIFF", _tiff_header),
                                           ("WEBP", _webp_header)])
@pytest.mark.parametrize("side", [7000, 16000])
def test_decompression_bombs_name_the_limit(fmt: str, make: object, side: int) -> None:
    data = make(side, side)  # type: ignore[operator]
    assert len(data) < 4096
    # Both paths name the server's limit: ours (7000^2 is under Pillow's own bomb guard) and
    # Pillow's refusal at open time (16000^2 is over twice its guard).
    with pytest.raises(PayloadTooLarge, match=r"over the limit of 40000000 pixels "
                                              r"\(max_image_pixels\)"):
        decode_image(data, LIMIT)
