"""Which ``.mar`` archives run their own handler, and their checked extraction.

An archive runs its own handler when the manifest names a handler that is not built in and it
carries no ``capserve_task.json`` (with one, the built-in pipeline serves it). It is extracted,
every member checked, into ``<cache>/handler-<name>-<sha256 prefix>/``, built beside its final
place and renamed in one step, so workers sharing a cache never see half an extraction.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile
from pathlib import Path

from serving.archives.mar import (
    BUILTIN_HANDLERS,
    TASK_FILE,
    ArchiveError,
    ArchiveLimits,
    Manifest,
    read_manifest,
    safe_extract,
)

PLANS_FILE = ".capserve-ts-models.json"  # per-model values a config.properties gave


def runs_own_handler(mar: Path, limits: ArchiveLimits | None = None) -> Manifest | None:
    """The manifest when ``mar`` needs a handler process, else None (``ArchiveError`` for an
    archive that cannot be read)."""
    manifest = read_manifest(mar, limits)
    if manifest.handler_name in BUILTIN_HANDLERS:
        return None
    try:
        with zipfile.ZipFile(mar) as zf:
            if TASK_FILE in zf.namelist():
                return None
    except (OSError, zipfile.BadZipFile) as exc:
        raise ArchiveError(f"{mar.name}: unreadable archive ({exc})") from None
    return manifest


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def extract_handler_archive(mar: Path, cache_dir: Path, name: str,
                            limits: ArchiveLimits | None = None) -> Path:
    """The folder the archive's members are extracted into (once per content)."""
    root = cache_dir / f"handler-{name}-{_digest(mar)}"
    if (root / "MAR-INF" / "MANIFEST.json").is_file():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".handler-{name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        safe_extract(mar, tmp, limits)
        try:
            os.replace(tmp, root)
        except OSError:  # another worker won the race with the same content
            if not (root / "MAR-INF" / "MANIFEST.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def read_plans(store: Path) -> dict[str, dict[str, object]]:
    """Per-model values from a prepared store (empty for a plain store)."""
    path = store / PLANS_FILE
    if not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    return doc if isinstance(doc, dict) else {}
