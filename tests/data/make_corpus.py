"""Write the bad-input corpus and the small sample images into tests/data/.

Run ``python tests/data/make_corpus.py`` (deterministic; the files are committed, so tests never
generate them). ``corpus/`` holds inputs that must be refused with a 4xx or handled specially;
``images/`` holds good samples in every supported format; ``archives/`` hostile ``.mar`` files.
"""

from __future__ import annotations

import io
import json
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
FIXED_TIME = (2024, 1, 1, 0, 0, 0)
MANIFEST = {"createdOn": "01/01/2024 00:00:00", "runtime": "python",
            "model": {"modelName": "evil", "serializedFile": "model.pt",
                      "handler": "capserve_handler.py", "modelVersion": "1.0"},
            "archiverVersion": "0.12.0"}


def digit(value: int = 7, size: int = 28) -> Image.Image:
    """A white-on-black hand-drawn-like digit, MNIST style."""
    image = Image.new("L", (size, size))
    draw = ImageDraw.Draw(image)
    if value == 7:
        draw.line([(7, 7), (21, 7), (12, 22)], fill=255, width=3)
    else:
        draw.ellipse([8, 5, 20, 23], outline=255, width=3)
    return image


def photo(width: int = 64, height: int = 48) -> Image.Image:
    """A colourful smooth test picture with shapes (for style and segmentation)."""
    y, x = np.mgrid[0:height, 0:width]
    arr = np.stack([(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)),
                    ((x + y) * 127 // max(width + height - 2, 1))], axis=-1).astype(np.uint8)
    image = Image.fromarray(arr, "RGB")
    ImageDraw.Draw(image).ellipse([width // 4, height // 4, width // 2, height // 2], fill=(250, 250, 250))
    return image


def save(image: Image.Image, path: Path, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, **kwargs)  # type: ignore[arg-type]
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` with a tiny (invalid) body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def exif_rotated() -> bytes:
    """A 40x20 JPEG whose EXIF says 'rotate 90° CW' (orientation 6): upright it is 20x40."""
    image = Image.new("RGB", (40, 20), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    image.save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


def archive(path: Path, members: list[tuple[str, bytes]], symlink: tuple[str, str] | None = None,
            manifest: dict | None = None) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        info = zipfile.ZipInfo("MAR-INF/MANIFEST.json", FIXED_TIME)
        zf.writestr(info, json.dumps(manifest or MANIFEST))
        for name, data in members:
            member = zipfile.ZipInfo(name, FIXED_TIME)
            member.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(member, data)
        if symlink:
            link = zipfile.ZipInfo(symlink[0], FIXED_TIME)
            link.create_system = 3
            link.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(link, symlink[1])


def main() -> None:
    corpus, images, archives = HERE / "corpus", HERE / "images", HERE / "archives"
    for folder in (corpus, images, archives):
        folder.mkdir(exist_ok=True)

    # Good samples.
    save(digit(7), images / "digit7.png", format="PNG")
    save(digit(0), images / "digit0.png", format="PNG")
    pic = photo()
    save(pic, images / "photo.png", format="PNG")
    save(pic, images / "photo.jpg", format="JPEG", quality=92)
    save(pic, images / "photo_progressive.jpg", format="JPEG", quality=92, progressive=True)
    save(pic, images / "photo.bmp", format="BMP")
    save(pic, images / "photo.webp", format="WEBP", lossless=True)
    save(pic, images / "photo.tiff", format="TIFF")
    save(pic.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), images / "palette.png",
         format="PNG")
    (images / "exif_rotated.jpg").write_bytes(exif_rotated())

    # Unusual but valid: must decode (200).
    save(pic.convert("CMYK"), corpus / "cmyk.jpg", format="JPEG", quality=92)
    gray16 = (np.asarray(digit(7), dtype=np.uint16) * 257).astype(np.uint16)
    save(Image.fromarray(gray16), corpus / "gray16.png", format="PNG")
    frames = [digit(7).convert("P"), digit(0).convert("P")]
    save(frames[0], corpus / "animated.gif", format="GIF", save_all=True,
         append_images=frames[1:], duration=100, loop=0)
    save(Image.new("L", (1, 1), 255), corpus / "one_pixel.png", format="PNG")

    # Broken: must be refused with 400 (or 413 for the giant header).
    full_png = save(pic, corpus / ".tmp.png", format="PNG")
    (corpus / ".tmp.png").unlink()
    (corpus / "truncated.png").write_bytes(full_png[: len(full_png) // 2])
    full_jpg = (images / "photo.jpg").read_bytes()
    (corpus / "truncated.jpg").write_bytes(full_jpg[: len(full_jpg) // 2])
    (corpus / "empty.bin").write_bytes(b"")
    (corpus / "text.txt").write_bytes(b"this is not an image, just some text\n")
    (corpus / "huge_header.png").write_bytes(png_header_only(30000, 30000))

    # Hostile archives.
    archive(archives / "zipslip.mar", [("../evil.txt", b"escaped"), ("model.pt", b"x")])
    archive(archives / "absolute.mar", [("/tmp/capserve-evil.txt", b"escaped")])
    archive(archives / "symlink.mar", [("model.pt", b"x")], symlink=("link", "/etc/passwd"))
    archive(archives / "bomb.mar", [("model.pt", b"\0" * (4 << 20))])  # 4 MiB of zeros, ~4 KiB
    custom = {**MANIFEST, "model": {**MANIFEST["model"], "handler": "my_handler.py"}}
    archive(archives / "custom_handler.mar",
            [("my_handler.py", b"raise SystemExit('archive code must never run')\n"),
             ("model.pt", b"x")], manifest=custom)


if __name__ == "__main__":
    main()
