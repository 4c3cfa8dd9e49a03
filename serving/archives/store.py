"""What the management API may register: models and ``.mar`` archives already in the store.

A ``url`` is never fetched. Remote schemes are refused, and a local path must resolve (after
following links and ``..``) to a direct child of the model store: a Triton model directory or a
``.mar`` file. This closes the SSRF and path-escape holes TorchServe's register API had.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from serving.archives.mar import ArchiveLimits
from serving.archives.materialize import materialize
from serving.errors import InvalidInput, shown

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# A store entry is one path component (255 bytes on common file systems) plus, at most, the
# store's own path or a file:// prefix: anything longer names nothing the store can hold.
MAX_URL_CHARS = 4096


class ModelStoreAccess:
    def __init__(self, store: Path, cache_dir: Path, *, limits: ArchiveLimits | None = None,
                 allow_archive_code: bool = False,
                 add_model_dir: Callable[[str, Path], None] | None = None) -> None:
        self.store = store.resolve()
        self.cache_dir = cache_dir
        self.limits = limits or ArchiveLimits()
        self.allow_archive_code = allow_archive_code
        self._add_model_dir = add_model_dir

    def resolve(self, url: str) -> Path:
        """The store entry ``url`` names, or ``InvalidInput`` saying why it is refused."""
        if not url:
            raise InvalidInput("parameter 'url' is required (a model directory or .mar file "
                               "inside the model store)")
        if len(url) > MAX_URL_CHARS:
            raise InvalidInput(f"parameter 'url' has {len(url)} characters, over the limit of "
                               f"{MAX_URL_CHARS}; name a model directory or .mar file inside "
                               "the model store")
        text = url
        if _SCHEME.match(url):
            parts = urlsplit(url)
            if parts.scheme.lower() != "file" or parts.netloc not in ("", "localhost"):
                raise InvalidInput(f"remote model URLs are never fetched ('{shown(parts.scheme)}"
                                   "://' refused); copy the model into the model store and "
                                   "register it by name")
            text = unquote(parts.path)
        if "\x00" in text:  # the OS refuses such paths with a ValueError
            raise InvalidInput("parameter 'url' contains a NUL character")
        try:
            return self._entry(url, Path(text))
        except OSError as exc:  # a name too long for the file system, a bad link...
            raise InvalidInput(f"'{shown(url)}' cannot be looked up in the model store: "
                               f"{exc.strerror or exc}") from None
        except RuntimeError:  # what Path.resolve raises for a loop of links on Python 3.11
            raise InvalidInput(f"'{shown(url)}' in the model store is a loop of symbolic "
                               "links") from None

    def _entry(self, url: str, path: Path) -> Path:
        candidate = (path if path.is_absolute() else self.store / path).resolve()
        if candidate.parent != self.store:
            raise InvalidInput(f"'{shown(url)}' is outside the model store; only models and "
                               ".mar archives directly inside the store can be registered")
        if not candidate.exists():
            raise InvalidInput(f"'{shown(url)}' does not exist in the model store")
        if candidate.is_dir():
            if not (candidate / "config.pbtxt").is_file():
                raise InvalidInput(f"'{candidate.name}' in the store has no config.pbtxt")
        elif candidate.suffix != ".mar":
            raise InvalidInput(f"'{candidate.name}' is neither a model directory nor a .mar")
        return candidate

    def register(self, url: str, model_name: str = "") -> str:
        """Make the store entry loadable; returns the model name to load."""
        entry = self.resolve(url)
        if entry.is_dir():
            if model_name and model_name != entry.name:
                raise InvalidInput(f"model_name '{shown(model_name)}' differs from the directory "
                                   f"'{entry.name}'; a store directory is served under its name")
            return entry.name
        name = model_name or entry.stem
        if not _NAME.fullmatch(name):  # match() would let a trailing newline through
            raise InvalidInput(f"'{shown(name)}' is not a valid model name")
        model_dir = materialize(entry, self.cache_dir, self.limits, self.allow_archive_code,
                                name)
        if self._add_model_dir is not None:
            self._add_model_dir(name, model_dir)
        return name
