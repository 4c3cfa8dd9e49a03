"""The model repository: a Triton-layout store scanned into models, versions and their state.

A model whose load fails is recorded with its error and stays unavailable; every other model is
still served. Requests for a model's unversioned name go to its default version: the highest
ready one unless :meth:`ModelRepository.set_default_version` chose another.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from serving.batching import Clock
from serving.batching.workers import run_detached
from serving.core.limits import ServiceLimits
from serving.core.loaded import LoadedVersion, ObserverFactory, build_version
from serving.core.spec import ModelSpec
from serving.core.validation import check_version
from serving.core.versions import CONFIG_FILE, available_versions, select_versions
from serving.errors import InvalidInput, ModelNotFound, ModelNotReady, shown

# Reads a model directory into its spec (``serving.store.read_model_spec``: the store edge,
# passed in so the core never touches the config's protobuf form); raises ValueError/OSError.
SpecReader = Callable[[Path, str], ModelSpec]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class ModelEntry:
    """Everything known about one model directory."""

    name: str
    model_dir: Path
    spec: ModelSpec | None = None  # of the last successful read
    versions: dict[str, LoadedVersion] = field(default_factory=dict)  # ready versions
    states: dict[str, tuple[str, str]] = field(default_factory=dict)  # version -> (state, reason)
    load_error: str | None = None
    default_version: str | None = None
    wanted: bool = False  # the server means to serve it (loaded at start or by load_model)

    def ready_versions(self) -> list[str]:
        return sorted(self.versions, key=int)


class ModelRepository:
    def __init__(
        self, store: Path | str, *, reader: SpecReader, device: str = "auto",
        clock: Clock | None = None, limits: ServiceLimits | None = None,
    ) -> None:
        self.store = Path(store)
        self._read = reader
        self.device = device
        self.limits = limits or ServiceLimits()
        self._clock = clock
        self._models: dict[str, ModelEntry] = {}
        self._observer_factory: ObserverFactory | None = None
        self._locks: dict[str, asyncio.Lock] = {}

    @property
    def clock(self) -> Clock | None:
        """The clock batchers use (None: the real monotonic clock)."""
        return self._clock

    def set_observer_factory(self, factory: ObserverFactory) -> None:
        self._observer_factory = factory

    # -- discovery ---------------------------------------------------------------------------

    def scan(self) -> list[str]:
        """Find model directories in the store (those with a config or version folders)."""
        if not self.store.is_dir():
            raise FileNotFoundError(f"model store {self.store} is not a directory")
        for path in sorted(self.store.iterdir()):
            if not path.is_dir() or path.name.startswith("."):
                continue
            if (path / CONFIG_FILE).is_file() or available_versions(path):
                self._models.setdefault(path.name, ModelEntry(path.name, path))
        return sorted(self._models)

    def add_model_dir(self, name: str, path: Path | str) -> None:
        """Register a model directory that lives outside the store (e.g. an unpacked archive)."""
        if not name or "/" in name or name.startswith("."):
            raise InvalidInput(f"invalid model name '{name}'")
        existing = self._models.get(name)
        if existing is not None and existing.model_dir != Path(path):
            raise InvalidInput(f"model '{name}' already exists at {existing.model_dir}")
        self._models.setdefault(name, ModelEntry(name, Path(path)))

    def names(self) -> list[str]:
        return sorted(self._models)

    def entry(self, name: str) -> ModelEntry:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFound(f"Request for unknown model: '{shown(name)}' is not found") from None

    def entries(self) -> list[ModelEntry]:
        return [self._models[n] for n in sorted(self._models)]

    # -- load / unload -----------------------------------------------------------------------

    async def build(
        self, spec: ModelSpec, model_dir: Path, version: str, instances: int,
    ) -> LoadedVersion:
        """Build one version on a daemon thread, bounded by the load timeout.

        A load that overruns raises ``TimeoutError`` and is abandoned: whatever it builds
        later is closed at once, and it never keeps the process from exiting.
        """
        build = functools.partial(
            build_version, spec, model_dir, version, device=self.device, instances=instances,
            clock=self._clock, observer_factory=self._observer_factory, limits=self.limits,
        )
        future = run_detached(build, name=f"load-{spec.name}-{version}")
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.limits.load_timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            future.add_done_callback(_close_late_load)
            raise


    async def load(self, name: str) -> list[LoadedVersion]:
        """(Re)load a model; returns versions it replaced (the caller closes them).

        On failure the error is recorded and raised as ``ValueError``/``OSError``; versions
        that were serving before keep serving.
        """
        entry = self.entry(name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            entry.wanted = True
            try:
                spec = await asyncio.wait_for(
                    run_detached(self._read, entry.model_dir, name, name=f"config-{name}"),
                    self.limits.load_timeout_s)
                versions = select_versions(entry.model_dir, spec.version_policy)
            except Exception as exc:
                entry.load_error = str(exc)
                logger.error("model '%s' failed to load: %s", name, exc)
                for v in entry.versions:  # they go on serving
                    entry.states[v] = ("READY", f"reload failed: {exc}")
                raise
            for v in versions:
                if v not in entry.versions:  # a version serving now stays READY meanwhile
                    entry.states[v] = ("LOADING", "")
            built: dict[str, LoadedVersion] = {}
            errors: dict[str, str] = {}
            for v in versions:
                try:
                    built[v] = await self.build(spec, entry.model_dir, v, spec.instances)
                except TimeoutError:
                    errors[v] = (f"load did not finish within {self.limits.load_timeout_s:g} s "
                                 "(model_load_timeout_seconds)")
                except Exception as exc:
                    errors[v] = str(exc)
                if v in errors:
                    logger.error("model '%s' version %s failed to load: %s", name, v, errors[v])
            if not built:
                self._reload_failed(entry, versions, errors)
                raise ValueError(f"model '{name}' failed to load: {entry.load_error}")
            for v in versions:
                entry.states[v] = ("UNAVAILABLE", errors[v]) if v in errors else ("READY", "")
            old = entry.versions
            entry.versions = built
            entry.spec = spec
            entry.load_error = _joined(errors) or None
            if entry.default_version not in built:
                entry.default_version = None
            for v in old:
                if v not in built and v not in errors:
                    entry.states[v] = ("UNAVAILABLE", "unloaded")
            return list(old.values())

    @staticmethod
    def _reload_failed(entry: ModelEntry, versions: list[str], errors: dict[str, str]) -> None:
        """Nothing new loaded: versions that were serving go on serving (and stay READY, with
        the failure as their reason, so the repository index reports it)."""
        entry.load_error = _joined(errors)
        for v in versions:
            if v not in entry.versions:
                entry.states[v] = ("UNAVAILABLE", errors.get(v, ""))
        for v in entry.versions:
            entry.states[v] = ("READY", f"reload failed: {errors[v]}" if v in errors
                               else "reload failed; this version goes on serving")

    def unload(self, name: str) -> list[LoadedVersion]:
        """Stop routing to the model now; returns the versions for the caller to drain/close."""
        entry = self.entry(name)
        entry.wanted = False
        old = list(entry.versions.values())
        entry.versions = {}
        entry.default_version = None
        for v in entry.states:
            entry.states[v] = ("UNAVAILABLE", "unloaded")
        return old

    def replace(self, loaded: LoadedVersion) -> LoadedVersion | None:
        """Swap a rebuilt version in (e.g. another instance count); returns the old one."""
        entry = self.entry(loaded.name)
        old = entry.versions.get(loaded.version)
        entry.versions[loaded.version] = loaded
        return old

    # -- lookup ------------------------------------------------------------------------------

    def resolve(self, name: str, version: str = "") -> LoadedVersion:
        """The ready version that serves a request; ModelNotFound / ModelNotReady otherwise."""
        entry = self.entry(name)
        if version:
            version = str(int(check_version(name, version)))  # "007" is version 7
            loaded = entry.versions.get(version)
            if loaded is not None:
                return loaded
            if version in entry.states:
                raise ModelNotReady(f"Request for unavailable model: '{name}' version {version} is not ready")
            raise ModelNotFound(f"Request for unknown model: '{name}' version {version} is not found")
        default = self.default_version(name)
        if default is None:
            raise ModelNotReady(f"Request for unavailable model: '{name}' has no ready versions")
        return entry.versions[default]

    def default_version(self, name: str) -> str | None:
        entry = self.entry(name)
        if entry.default_version in entry.versions:
            return entry.default_version
        ready = entry.ready_versions()
        return ready[-1] if ready else None

    def set_default_version(self, name: str, version: str) -> None:
        entry = self.entry(name)
        if version not in entry.versions:
            raise ModelNotFound(f"model '{shown(name)}' has no ready version '{shown(version)}'")
        entry.default_version = version

    def spec_of(self, name: str, version: str = "") -> ModelSpec:
        """The spec of a version, or of the model when it has none loaded (e.g. unloaded)."""
        entry = self.entry(name)
        if version or entry.versions:
            try:
                return self.resolve(name, version).spec
            except ModelNotReady:
                pass
        if entry.spec is None:
            entry.spec = self._read(entry.model_dir, name)
        return entry.spec


def _joined(errors: dict[str, str]) -> str:
    return "; ".join(f"version {v}: {e}" for v, e in errors.items())


def _close_late_load(future: asyncio.Future[LoadedVersion]) -> None:
    """A load that finished after its caller gave up: release what it built."""
    if future.cancelled() or future.exception() is not None:
        return
    loaded = future.result()
    logger.warning("model '%s' version %s finished loading after its timeout; closing it",
                   loaded.name, loaded.version)
    task = asyncio.ensure_future(loaded.close(0))
    _late_closes.add(task)
    task.add_done_callback(_late_closes.discard)


_late_closes: set[asyncio.Future[None]] = set()
