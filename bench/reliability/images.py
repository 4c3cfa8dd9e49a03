"""Hostile images, small on the wire: truncated files, decompression bombs made small, headers
that lie about the size, and the odd modes PIL can hand a pipeline (CMYK, LA, P, I;16, 1-bit...).

Each entry is (kind, bytes). Sizes are chosen so an unfixed server costs a few hundred MB at
most per request, which is enough to show the hole without endangering the machine.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from functools import cache

import numpy as np
from PIL import Image


def _save(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_declaring(width: int, height: int, bit_depth: int = 8, colour: int = 0,
                  rows: int = 1) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` but carries only ``rows`` rows."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    row = b"\x00" + b"\x00" * min(width, 1 << 16)
    data = zlib.compress(row * rows, 9)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", data)
            + _chunk(b"IEND", b""))


def png_bomb(width: int, height: int) -> bytes:
    """A real, complete PNG of zeros: tiny compressed, ``width*height`` bytes decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = (b"\x00" + b"\x00" * width) * height
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b""))


def gif_big_frame(side: int) -> bytes:
    """A GIF whose logical screen is 1x1 but whose frame is ``side`` x ``side``."""
    data = bytearray(_save(Image.new("L", (side, side), 0), "GIF"))
    data[6:10] = struct.pack("<HH", 1, 1)
    return bytes(data)


def gif_many_frames(count: int) -> bytes:
    frames = [Image.frombytes("L", (4, 4), bytes((i * 7 + j) % 256 for j in range(16)))
              for i in range(count)]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=1)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG with its SOF0 frame size patched to ``width`` x ``height``."""
    data = bytearray(_save(Image.new("L", (8, 8), 128), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def bmp_declaring(width: int, height: int) -> bytes:
    data = bytearray(_save(Image.new("RGB", (2, 2)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def _noise(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
    if mode == "F":
        return Image.fromarray(rng.random(size[::-1], dtype=np.float32))
    if mode == "I":
        return Image.fromarray(rng.integers(0, 1 << 30, size[::-1], dtype=np.int32))
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)


@cache
def valid_images() -> tuple[tuple[str, bytes], ...]:
    """Well-formed images in every mode and format a user could send (the base of mutations)."""
    out: list[tuple[str, bytes]] = []
    for mode in ("L", "RGB", "RGBA", "LA", "P", "1", "I;16", "I", "F", "CMYK"):
        img = _noise(mode, (28, 28), len(out))
        for fmt in ("PNG", "TIFF", "JPEG", "BMP", "GIF", "WEBP"):
            try:
                out.append((f"{fmt.lower()}-{mode}", _save(img, fmt)))
            except (OSError, ValueError, KeyError):
                continue
    out.append(("jpeg-progressive", _save(_noise("RGB", (64, 64), 1), "JPEG", progressive=True)))
    exif = Image.Exif()
    exif[0x0112] = 9  # an orientation value outside 1..8
    out.append(("jpeg-bad-orientation", _save(_noise("RGB", (28, 28), 2), "JPEG", exif=exif)))
    return tuple(out)


@cache
def bombs() -> tuple[tuple[str, bytes], ...]:
    """Sizes that lie, or that are large decoded and tiny on the wire."""
    return (
        ("png-declares-100000x100000", png_declaring(100_000, 100_000)),
        ("png-declares-2^31-wide", png_declaring(2**31 - 1, 1)),
        ("png-declares-7000x7000-1row", png_declaring(7000, 7000)),
        ("png-16bit-declares-6000x6000", png_declaring(6000, 6000, bit_depth=16)),
        ("png-bomb-3000x3000", png_bomb(3000, 3000)),
        ("png-16bit-2000x2000", _save(Image.new("I;16", (2000, 2000), 7), "PNG")),
        ("gif-1x1-screen-3000x3000-frame", gif_big_frame(3000)),
        ("gif-2000-frames", gif_many_frames(2000)),
        ("jpeg-declares-65000x65000", jpeg_declaring(65000, 65000)),
        ("jpeg-declares-6000x6000", jpeg_declaring(6000, 6000)),
        ("bmp-declares-100000x100000", bmp_declaring(100_000, 100_000)),
        ("bmp-declares-negative", bmp_declaring(-5, -2**31)),
        ("tiff-1bit-4000x4000", _save(Image.new("1", (4000, 4000), 0), "TIFF",
                                      compression="group4")),
    )


def mutate(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """One deterministic corruption of ``data``: truncation, flipped bytes, junk, a bad CRC."""
    choice = rng.randrange(6)
    if choice == 0:
        return "truncated", data[: rng.randrange(1, max(2, len(data)))]
    if choice == 1:
        out = bytearray(data)
        for _ in range(rng.randrange(1, 16)):
            pos = rng.randrange(len(out))
            out[pos] = rng.randrange(256)
        return "flipped-bytes", bytes(out)
    if choice == 2:
        return "magic-then-junk", data[:8] + rng.randbytes(rng.randrange(0, 200))
    if choice == 3:
        return "trailing-junk", data + rng.randbytes(rng.randrange(1, 2000))
    if choice == 4:
        return "header-only", data[: min(len(data), rng.randrange(8, 64))]
    return "doubled", data + data
