"""Image decoding and preprocessing: bytes -> checked Pillow image -> normalised CHW array.

Pure functions (no event loop, no server state) so the server's pipelines and the TorchServe
handler produce the same tensors. Every failure is an ``InvalidInput`` naming what was wrong, and
an image with too many pixels is refused before any pixel is decoded, by the size Pillow's decoder
will produce (for a GIF, the first frame's real size, not the logical screen its header claims).
Only the first frame of an animation is ever read: nothing here walks the frames.
"""

from __future__ import annotations

import functools
import io
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from serving.errors import InvalidInput, PayloadTooLarge

if TYPE_CHECKING:
    from serving.tasks.spec import TaskSpec

SUPPORTED_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "GIF", "TIFF", "WEBP")
_FORMAT_NAMES = "PNG, JPEG, BMP, GIF, TIFF, WebP"
# Magic numbers of things people send by mistake, for a more helpful message.
_NOT_IMAGES = ((b"{", "JSON"), (b"[", "JSON"), (b"PK\x03\x04", "a ZIP archive"),
               (b"%PDF", "a PDF document"), (b"<", "HTML/XML text"))


@dataclass(frozen=True, slots=True)
class Decoded:
    """A decoded image and the size it had when it arrived (after EXIF orientation)."""

    image: Image.Image
    width: int
    height: int


def decode_image(data: bytes, max_pixels: int) -> Decoded:
    """Decode one image; first frame of animations, EXIF orientation applied."""
    if not data:
        raise InvalidInput("empty image: the request carried 0 bytes of image data")
    try:
        # Image.open reads only the header. Pillow's own bomb guard may warn (or refuse far
        # larger images) here; our limit below is the one that applies. (No catch_warnings:
        # it is not thread-safe and this runs in a thread pool.)
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise PayloadTooLarge(_bomb(max_pixels)) from None
    except Exception as exc:  # Pillow raises many types on hostile headers; all mean "bad image"
        raise InvalidInput(_unidentified(data, exc)) from None
    fmt = image.format or "unknown"
    if fmt not in SUPPORTED_FORMATS:
        raise InvalidInput(f"unsupported image format {fmt} (supported: {_FORMAT_NAMES})")
    width, height = decoded_size(image, fmt)
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"{fmt} image is {width}x{height} = {width * height} pixels, over the limit of "
            f"{max_pixels} pixels (max_image_pixels)")
    try:
        # Image.open leaves animations (GIF, APNG, WebP, MPO) and multi-page TIFFs on their
        # first frame; n_frames or seek would walk the others, so neither is ever called.
        image.load()
        upright: Image.Image = (ImageOps.exif_transpose(image) or image
                                if _may_be_rotated(image, fmt) else image)
    except Image.DecompressionBombError:
        raise PayloadTooLarge(_bomb(max_pixels)) from None
    except Exception as exc:  # KeyError, struct.error, ... from corrupt files: all client errors
        raise InvalidInput(f"cannot decode {fmt} image ({width}x{height}, {len(data)} bytes): "
                           f"{str(exc) or type(exc).__name__}; the file is truncated or "
                           "corrupt") from None
    return Decoded(image=upright, width=upright.size[0], height=upright.size[1])


def decoded_size(image: Image.Image, fmt: str) -> tuple[int, int]:
    """(width, height) that decoding the current frame produces, as Pillow's decoder set it up
    on open: for a GIF the first frame's own size when it is larger than the logical screen.
    Where the decoder's tiles reach further than the size (a TIFF whose orientation swaps its
    sides), the larger extent is what gets decoded, so that is the size returned."""
    width, height = image.size
    if width <= 0 or height <= 0:
        raise InvalidInput(f"{fmt} image declares an empty size {width}x{height}")
    for tile in getattr(image, "tile", None) or ():
        width, height = max(width, int(tile[1][2])), max(height, int(tile[1][3]))
    return width, height


def _bomb(max_pixels: int) -> str:
    # Pillow refuses at open time when the size is over twice its own limit, which the task
    # registry keeps at or above ours: the image is therefore over max_image_pixels too.
    return (f"image declares more than {2 * (Image.MAX_IMAGE_PIXELS or 0)} pixels, over the "
            f"limit of {max_pixels} pixels (max_image_pixels); refused before decoding")


# Where Pillow finds an orientation for these formats: EXIF, ImageMagick's PNG text chunk, XMP.
_ORIENTATION_KEYS = ("exif", "Raw profile type exif", "xmp", "XML:com.adobe.xmp")
_TAGLESS_UNLESS_INFO = ("PNG", "JPEG", "MPO", "GIF", "BMP", "WEBP")


def _may_be_rotated(image: Image.Image, fmt: str) -> bool:
    """False only when the image carries nothing an orientation could be read from: reading
    EXIF costs more than decoding a thumbnail, and most uploads have none. TIFF keeps its
    orientation among its own tags, so it is always asked."""
    if fmt not in _TAGLESS_UNLESS_INFO:
        return True
    return any(key in image.info for key in _ORIENTATION_KEYS)


def _unidentified(data: bytes, exc: Exception) -> str:
    head = data[:16].lstrip()
    for magic, what in _NOT_IMAGES:
        if head.startswith(magic):
            return f"the body is {what}, not an image (supported: {_FORMAT_NAMES})"
    if _looks_like_text(data[:512]):
        return f"the body is text, not an image (supported: {_FORMAT_NAMES})"
    for magic, fmt in ((b"\x89PNG", "PNG"), (b"\xff\xd8", "JPEG"), (b"GIF8", "GIF"),
                       (b"BM", "BMP"), (b"RIFF", "WebP"), (b"II*\x00", "TIFF"),
                       (b"MM\x00*", "TIFF")):
        if data.startswith(magic):
            return f"cannot read {fmt} header ({len(data)} bytes): truncated or corrupt ({exc})"
    return (f"cannot identify an image in {len(data)} bytes of data "
            f"(supported: {_FORMAT_NAMES})")


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def to_color(image: Image.Image, color: str) -> Image.Image:
    """Convert any decoded mode (16-bit, float, palette, CMYK, alpha, 1-bit) to ``L`` or ``RGB``."""
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        image = Image.fromarray(_grey8(image), mode="L")
        mode = "L"
    if mode in ("P", "PA") or (mode in ("L", "RGB") and "transparency" in image.info):
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode == color:
        return image
    if color == "L" and mode in ("LA", "1"):
        return image.convert("L")
    if color == "L" and mode in ("RGB", "RGBA"):
        return image.convert("L")
    rgb = image.convert("RGB")  # CMYK, YCbCr, LAB, HSV, RGBA, LA, 1 ...
    return rgb.convert("L") if color == "L" else rgb


# Rows are converted in blocks of about this many pixels, so the temporaries of a 16-bit or float
# image stay a few MB whatever its size (whole-image float64 arrays cost 8 bytes a pixel each).
_BLOCK_PIXELS = 1 << 18


def _grey8(image: Image.Image) -> np.ndarray:
    """16/32-bit and float greyscale scaled to 8 bits (not clipped at 255): 16-bit data, or
    integers over 255, span 0..65535; floats in 0..1 span 0..1. Pillow finds the extrema and
    cuts the row blocks, so no whole-image copy is made beside the 8-bit result."""
    mode, (width, height) = image.mode, image.size
    extrema = image.getextrema()
    top_value = float(extrema[1] if isinstance(extrema[1], int | float) else 0)
    if mode == "F":
        top = 1.0 if top_value <= 1.0 else 65535.0 if top_value > 255 else 255.0
    else:
        top = 65535.0 if mode.startswith("I;16") or top_value > 255 else 255.0
    out = np.empty((height, width), dtype=np.uint8)
    rows = max(1, _BLOCK_PIXELS // max(1, width))
    for start in range(0, height, rows):
        stop = min(height, start + rows)
        block = np.asarray(image.crop((0, start, width, stop)))
        out[start:stop] = _block8(block, mode, top)
    return out


def _block8(block: np.ndarray, mode: str, top: float) -> np.ndarray:
    if mode == "F":
        scaled = block.astype(np.float32) * np.float32(255.0 / top)
        np.rint(scaled, out=scaled)
        return np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)
    ints = np.clip(block.astype(np.int64 if block.dtype.itemsize > 2 else np.int32), 0,
                   int(top))
    if top > 255:
        # round(x * 255 / 65535) exactly, in integers: x / 257, never a tie since 257 is odd.
        ints += 128
        ints //= 257
    return ints.astype(np.uint8)


Box = tuple[float, float, float, float]  # (left, top, right, bottom) in fed-image pixels


def resize_with_box(spec: TaskSpec, image: Image.Image) -> tuple[Image.Image, Box | None]:
    """The resized image and where the whole original lies in it: None when it fills the fed
    image exactly, else a box that is inside it (padding) or larger than it (cropping)."""
    width, height = image.size
    if spec.resize == "none":
        if min(width, height) < spec.min_side:
            raise InvalidInput(
                f"image is {width}x{height}; model '{spec.model}' needs each side to be at least "
                f"{spec.min_side} pixels")
        longest = max(width, height)
        if spec.max_side and longest > spec.max_side:
            scale = spec.max_side / longest
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            return image.resize(size, Image.Resampling.BILINEAR), None
        return image, None
    target_w, target_h = spec.width, spec.height
    if target_w <= 0 or target_h <= 0:
        raise InvalidInput(f"model '{spec.model}' has resize '{spec.resize}' but no "
                           "input_height/input_width parameters")
    if spec.resize == "exact":
        if image.size == (target_w, target_h):
            return image, None  # already the model's size: no copy
        return image.resize((target_w, target_h), Image.Resampling.BILINEAR), None
    if spec.resize == "keep_aspect_pad":
        scale = min(target_w / width, target_h / height)
    else:  # keep_aspect_crop
        scale = max(target_w / width, target_h / height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    scaled = image.resize(size, Image.Resampling.BILINEAR)
    if spec.resize == "keep_aspect_crop":
        left, top = (size[0] - target_w) // 2, (size[1] - target_h) // 2
        return (scaled.crop((left, top, left + target_w, top + target_h)),
                (-left, -top, size[0] - left, size[1] - top))
    canvas = Image.new(scaled.mode, (target_w, target_h))
    left, top = (target_w - size[0]) // 2, (target_h - size[1]) // 2
    canvas.paste(scaled, (left, top))
    return canvas, (left, top, left + size[0], top + size[1])


@functools.lru_cache(maxsize=256)
def _affine(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel scale and offset, shaped [C, 1, 1], with ``x * scale + offset`` equal to
    ``(x / 255 - mean) / std``: one multiply-add per pixel instead of three array passes."""
    m = np.asarray(mean, dtype=np.float64)
    s = np.asarray(std, dtype=np.float64)
    return ((1.0 / (255.0 * s)).astype(np.float32)[:, None, None],
            (-m / s).astype(np.float32)[:, None, None])


def normalize(spec: TaskSpec, image: Image.Image) -> np.ndarray:
    """``(pixels / 255 - mean) / std`` as float32 CHW."""
    pixels = np.asarray(image, dtype=np.uint8)
    chw = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    scale, offset = _affine(spec.mean, spec.std)
    out = chw.astype(np.float32)  # a fresh C-contiguous copy, safe to change in place
    out *= scale
    out += offset
    return out


@dataclass(frozen=True, slots=True)
class Prepared:
    """A model input for one image plus what post-processing needs to know about the image."""

    tensor: np.ndarray  # float32 CHW
    original_size: tuple[int, int]  # (width, height) as received
    fed_size: tuple[int, int]  # (width, height) given to the model
    content_box: Box | None = None  # where the original lies in the fed image; None = all of it


def prepare(spec: TaskSpec, data: bytes, max_pixels: int) -> Prepared:
    """Decode, convert, resize and normalise one image for ``spec``'s model."""
    decoded = decode_image(data, max_pixels)
    try:
        converted = to_color(decoded.image, spec.color)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"cannot convert a {decoded.image.mode} image to {spec.color}: "
                           f"{exc}") from None
    image, box = resize_with_box(spec, converted)
    return Prepared(tensor=normalize(spec, image), original_size=(decoded.width, decoded.height),
                    fed_size=image.size, content_box=box)


INLINE_MAX_BYTES = 16 * 1024
INLINE_MAX_PIXELS = 128 * 128


def _header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) read straight from a PNG or BMP header, whose decoders produce exactly
    that size; None for other formats. (A GIF's header is only its logical screen: its frames
    may be far larger, so GIFs are sized by Pillow's decoder instead.)"""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return w, h
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    return None


def is_small_image(data: bytes) -> bool:
    """True when ``data`` is a small image: at most INLINE_MAX_BYTES and, by the size its
    decoder will produce, INLINE_MAX_PIXELS. Both bounds are the server's, not the client's, so
    decoding such an image anywhere (even on the event loop) costs tens of microseconds."""
    if len(data) > INLINE_MAX_BYTES:
        return False
    size = _header_size(data)
    if size is not None:
        return size[0] * size[1] <= INLINE_MAX_PIXELS
    try:
        with Image.open(io.BytesIO(data)) as image:  # the header and first frame descriptor
            width, height = decoded_size(image, image.format or "unknown")
    except Exception:  # the real decode reports what is wrong, off the loop
        return False
    return width * height <= INLINE_MAX_PIXELS


def total_pixels(images: list[bytes]) -> int:
    """Pixels the images decode to, all together, read from headers and first-frame
    descriptors only. One that cannot be opened counts 0: its own decode says what is wrong."""
    total = 0
    for data in images:
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = decoded_size(image, image.format or "unknown")
        except Image.DecompressionBombError:
            width, height = 2 * (Image.MAX_IMAGE_PIXELS or 0) + 1, 1
        except Exception:
            continue
        total += width * height
    return total


def encode_image(array_hwc: np.ndarray, fmt: str, quality: int = 95) -> bytes:
    """Encode a uint8 HWC (or HW) array as PNG or JPEG."""
    image = Image.fromarray(array_hwc)
    buf = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()
