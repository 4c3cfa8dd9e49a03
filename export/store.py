"""The Triton-layout model store writer.

Everything is first written to a staging folder beside the store (same file system, so a
rename moves it in atomically) and moved into the store only after every artifact passed the
parity gate; a failed export therefore leaves the store exactly as it was. The staging folder
is a hidden sibling of the store, not inside it, so a server scanning the store never sees a
half-written model.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from export.errors import InvalidInput

logger = logging.getLogger(__name__)


def existing_versions(model_dir: Path) -> list[int]:
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def resolve_version(store: Path, names: list[str], requested: str) -> int:
    """``next``: one above the highest version of any of the models; ``N``: N, if free for all."""
    if requested == "next":
        highest = max((max(existing_versions(store / n), default=0) for n in names), default=0)
        return highest + 1
    if not requested.isdigit() or int(requested) < 1:
        raise InvalidInput(f"--version must be a positive integer or 'next', not {requested!r}")
    version = int(requested)
    for n in names:
        if (store / n / str(version)).exists():
            raise InvalidInput(f"{store / n / str(version)} already exists; use --version next")
    return version


@dataclass
class Staging:
    """A private folder mirroring the store layout for the models of one export."""

    store: Path
    root: Path
    models: list[str] = field(default_factory=list)
    archives: list[str] = field(default_factory=list)

    @classmethod
    def create(cls, store: Path) -> Staging:
        parent = store.resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        root = Path(tempfile.mkdtemp(prefix=f".{store.name}-export-", dir=parent))
        return cls(store=store, root=root)

    def model_dir(self, name: str) -> Path:
        path = self.root / name
        if name not in self.models:
            path.mkdir()
            self.models.append(name)
        return path

    def archive_path(self, name: str) -> Path:
        self.archives.append(name)
        return self.root / f"{name}.mar"

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def commit(self, version: int) -> list[Path]:
        """Move every staged model version and archive into the store; returns what was written."""
        self.store.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for name in self.models:
            staged, target = self.root / name, self.store / name
            if not target.exists():
                os.rename(staged, target)
            else:
                os.rename(staged / str(version), target / str(version))
                for f in staged.iterdir():  # config.pbtxt, labels.txt
                    if f.is_file():
                        os.replace(f, target / f.name)
            written.append(target / str(version))
        for name in self.archives:
            target = self.store / f"{name}.mar"
            os.replace(self.root / f"{name}.mar", target)
            written.append(target)
        self.discard()
        return written
