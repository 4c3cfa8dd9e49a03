"""Safe reading and extraction of TorchServe ``.mar`` archives (ZIP files).

Every member is checked before a single byte is written: no absolute paths, no ``..``, no links
or special files, bounded member count and total size (counted while decompressing, not trusted
from the header). Handler code inside an archive is never executed: the handler named in the
manifest must be one of the built-in ones unless the operator passed ``--allow-archive-code``.
"""

from __future__ import annotations

import json
import logging
import posixpath
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.errors import InvalidInput, PayloadTooLarge

log = logging.getLogger(__name__)
MANIFEST_PATH = "MAR-INF/MANIFEST.json"
TASK_FILE = "capserve_task.json"
# Keys of capserve_task.json that describe the tensors and batching; every other key is a
# config.pbtxt parameter.
NOT_PARAMETERS = ("inputs", "outputs", "max_batch_size", "name", "labels")
# Handler names served by the built-in pipelines (TorchServe's default handlers map to ours).
BUILTIN_HANDLERS = {
    "capserve_handler.py": "", "capserve_handler": "",
    "image_classifier": "classification", "image_segmenter": "segmentation",
}
_CHUNK = 1 << 20
MAX_LABELS = 100_000


class ArchiveError(InvalidInput):
    """An archive that capserve refuses to read or serve."""


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    max_total_bytes: int = 2 << 30  # sum of uncompressed member sizes
    max_members: int = 10_000
    max_manifest_bytes: int = 1 << 20
    max_labels: int = MAX_LABELS  # index_to_name.json keys must be below this
    max_json_bytes: int = 16 << 20  # capserve_task.json, index_to_name.json


@dataclass(frozen=True, slots=True)
class Manifest:
    model_name: str
    model_version: str
    handler: str
    serialized_file: str
    runtime: str
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def handler_name(self) -> str:
        """``handler`` without a ``:function`` suffix or directory."""
        return posixpath.basename(self.handler.split(":", 1)[0])


def _open(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ArchiveError(f"{path.name}: not a ZIP archive (capserve reads ZIP .mar "
                           "archives only)") from None
    except OSError as exc:
        raise ArchiveError(f"{path.name}: cannot open: {exc.strerror or exc}") from None


def check_member(info: zipfile.ZipInfo, archive: str) -> str:
    """The normalised relative path of a member, or ``ArchiveError`` naming the bad member."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise ArchiveError(f"{archive}: member '{name}' is a symbolic link; links are refused")
    # Archivers that record no file type (type bits 0) write plain files.
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ArchiveError(f"{archive}: member '{name}' is not a regular file")
    if "\\" in name or "\0" in name:
        raise ArchiveError(f"{archive}: member '{name}' has a backslash or NUL in its path")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"{archive}: member '{name}' has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"{archive}: member '{name}' escapes the archive with '..'")
    if not parts:
        raise ArchiveError(f"{archive}: member with an empty path")
    return "/".join(parts)


def check_archive(zf: zipfile.ZipFile, archive: str, limits: ArchiveLimits) -> None:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise ArchiveError(f"{archive}: {len(infos)} members, over the limit of "
                           f"{limits.max_members}")
    total = sum(i.file_size for i in infos)
    if total > limits.max_total_bytes:
        raise PayloadTooLarge(f"{archive}: members sum to {total} bytes uncompressed, over the "
                              f"limit of {limits.max_total_bytes}")
    for info in infos:
        check_member(info, archive)


def read_manifest(path: Path, limits: ArchiveLimits | None = None) -> Manifest:
    """Parse ``MAR-INF/MANIFEST.json`` (after checking every member of the archive)."""
    limits = limits or ArchiveLimits()
    with _open(path) as zf:
        check_archive(zf, path.name, limits)
        return _manifest(zf, path.name, limits)


def _manifest(zf: zipfile.ZipFile, archive: str, limits: ArchiveLimits) -> Manifest:
    try:
        info = zf.getinfo(MANIFEST_PATH)
    except KeyError:
        raise ArchiveError(f"{archive}: no {MANIFEST_PATH}") from None
    if info.file_size > limits.max_manifest_bytes:
        raise ArchiveError(f"{archive}: {MANIFEST_PATH} is {info.file_size} bytes")
    try:
        raw = json.loads(zf.read(info))
        model = raw["model"]
        return Manifest(model_name=str(model.get("modelName", "")),
                        model_version=str(model.get("modelVersion", "1")),
                        handler=str(model.get("handler", "")),
                        serialized_file=str(model.get("serializedFile", "")),
                        runtime=str(raw.get("runtime", "python")), raw=raw)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArchiveError(f"{archive}: {MANIFEST_PATH} is not a TorchServe manifest "
                           f"({type(exc).__name__}: {exc})") from None


def safe_extract(path: Path, dest: Path, limits: ArchiveLimits | None = None) -> Manifest:
    """Extract every (checked) member below ``dest``; returns the manifest."""
    limits = limits or ArchiveLimits()
    with _open(path) as zf:
        check_archive(zf, path.name, limits)
        manifest = _manifest(zf, path.name, limits)
        root = dest.resolve()
        written = 0
        for info in zf.infolist():
            rel = check_member(info, path.name)
            target = (root / rel).resolve()
            if root != target and root not in target.parents:  # belt and braces
                raise ArchiveError(f"{path.name}: member '{info.filename}' resolves outside")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "xb") as out:
                while chunk := src.read(_CHUNK):
                    written += len(chunk)  # the real size, whatever the header claims
                    if written > limits.max_total_bytes:
                        raise PayloadTooLarge(f"{path.name}: decompresses past the limit of "
                                              f"{limits.max_total_bytes} bytes")
                    out.write(chunk)
    return manifest


def labels_from_index(mapping: Any, max_labels: int = MAX_LABELS) -> list[str]:
    """TorchServe's ``index_to_name.json`` (``{"0": "cat"}`` or ``{"0": ["n01", "cat"]}``).

    Keys are class indices below ``max_labels``: the list is as long as the largest key, so an
    unchecked key such as ``"4000000000"`` would build billions of labels. ``ValueError``
    names the first bad key."""
    if not isinstance(mapping, dict):
        raise ValueError("index_to_name.json must be a JSON object of index -> label")
    if len(mapping) > max_labels:
        raise ValueError(f"{len(mapping)} labels, over the limit of {max_labels}")
    indices = {}
    for key in mapping:
        text = str(key)
        if not (text.isascii() and text.isdigit()) or len(text) > 9 or int(text) >= max_labels:
            raise ValueError(f"key {text[:40]!r} is not a class index from 0 to "
                             f"{max_labels - 1} (the label limit is {max_labels})")
        indices[key] = int(text)
    labels = [str(i) for i in range(1 + max(indices.values(), default=-1))]
    for key, value in mapping.items():
        labels[indices[key]] = str(value[-1] if isinstance(value, list) and value else value)
    return labels

