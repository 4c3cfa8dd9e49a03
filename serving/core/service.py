"""The protocol-neutral core every transport and task pipeline calls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import numpy as np

from serving.batching import BatchObserver
from serving.core.classification import classify
from serving.core.config import datatype_of
from serving.core.describe import (
    ModelDescription,
    describe_version,
    tensor_metadata,
    unloaded_description,
)
from serving.core.loaded import LoadedVersion, build_version
from serving.core.metrics import Metrics
from serving.core.repository import ModelRepository
from serving.core.stats import ModelStats, StatsRecorder
from serving.core.types import (
    InferRequest,
    InferResponse,
    ModelIndexEntry,
    ModelMetadata,
    RequestedOutput,
    ServerMetadata,
    Tensor,
)
from serving.core.validation import check_request
from serving.errors import (
    BackendError,
    FailureReason,
    InvalidInput,
    ModelLoadFailed,
    ModelNotFound,
    ServerNotReady,
    ServingError,
)
from serving.generated import model_config_pb2

logger = logging.getLogger(__name__)

__all__ = ["EXTENSIONS", "InferenceService", "ModelDescription"]

# The Triton extensions this server implements (binary_tensor_data lives in the HTTP transport).
EXTENSIONS = (
    "classification",
    "model_repository",
    "schedule_policy",
    "model_configuration",
    "binary_tensor_data",
    "parameters",
    "statistics",
)


class _Observer:
    """Routes one version's batcher events to its statistics and the metrics."""

    def __init__(self, metrics: Metrics, stats: StatsRecorder, name: str, version: str) -> None:
        self._metrics, self._stats, self._name, self._version = metrics, stats, name, version

    def pending_changed(self, delta: int) -> None:
        self._metrics.pending_changed(self._name, self._version, delta)

    def execution_finished(
        self, batch_size: int, compute_input_s: float, compute_infer_s: float,
        compute_output_s: float,
    ) -> None:
        self._stats.record_execution(batch_size, compute_input_s, compute_infer_s, compute_output_s)
        self._metrics.execution(self._name, self._version, batch_size, compute_input_s,
                                compute_infer_s, compute_output_s)


class InferenceService:
    """Protocol-neutral core: every transport and task pipeline calls only this."""

    def __init__(self, repository: ModelRepository, metrics: Metrics, *, server_version: str) -> None:
        self._repo = repository
        self._metrics = metrics
        self._version = server_version
        self._stats: dict[tuple[str, str], StatsRecorder] = {}
        self._draining = False
        self._started = False  # readiness waits for the first full load of the store
        self._closed = False
        self._inflight = 0
        self._quiet = asyncio.Event()
        self._quiet.set()
        repository.set_observer_factory(self._observer_for)

    def _observer_for(self, name: str, version: str) -> tuple[StatsRecorder, BatchObserver]:
        stats = self._stats.get((name, version))
        if stats is None:
            stats = self._stats[(name, version)] = StatsRecorder(name, version)
        return stats, _Observer(self._metrics, stats, name, version)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        for name in self._repo.scan():
            with contextlib.suppress(ModelLoadFailed):
                await self.load_model(name)
        self._started = True

    def begin_drain(self) -> None:
        self._draining = True

    async def drain(self, grace_s: float) -> None:
        deadline = time.monotonic() + grace_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._quiet.wait(), timeout=grace_s)
            for entry in self._repo.entries():
                for loaded in entry.versions.values():
                    left = max(0.0, deadline - time.monotonic())
                    await asyncio.wait_for(loaded.batcher.drain(), timeout=left)

    async def close(self) -> None:
        self._closed = True
        self._draining = True
        for entry in self._repo.entries():
            for loaded in self._repo.unload(entry.name):
                self._metrics.model_state(loaded.name, loaded.version, False)
                await loaded.close()

    # -- health and metadata -----------------------------------------------------------------

    def server_live(self) -> bool:
        return not self._closed

    def server_ready(self) -> bool:
        if self._draining or self._closed or not self._started:
            return False
        return all(e.load_error is None and e.versions for e in self._repo.entries() if e.wanted)

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(name="capserve", version=self._version, extensions=EXTENSIONS)

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self._repo.resolve(name, version)
        except ServingError:
            return False
        return True

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        loaded = self._repo.resolve(name, version)
        config = loaded.config
        batched = config.max_batch_size > 0
        return ModelMetadata(
            name=name,
            versions=tuple(self._repo.entry(name).ready_versions()),
            platform=config.platform,
            inputs=tuple(tensor_metadata(i, batched) for i in config.input),
            outputs=tuple(tensor_metadata(o, batched) for o in config.output),
        )

    def model_config(self, name: str, version: str = "") -> model_config_pb2.ModelConfig:
        config = model_config_pb2.ModelConfig()
        config.CopyFrom(self.model_config_view(name, version))
        return config

    def model_config_view(self, name: str, version: str = "") -> model_config_pb2.ModelConfig:
        """The repository's own config message, not a copy: callers must not change it.

        A reload replaces the message, so its identity tells a per-request cache (the task
        pipelines') that the config changed, without copying a protobuf on every request.
        """
        try:
            return self._repo.config_of(name, version)
        except (ValueError, OSError) as exc:
            raise ModelLoadFailed(f"model '{name}' has no valid config: {exc}") from None

    def model_statistics(self, name: str = "", version: str = "") -> list[ModelStats]:
        if version and not name:
            raise InvalidInput("a version needs a model name")
        entries = [self._repo.entry(name)] if name else self._repo.entries()
        out: list[ModelStats] = []
        for entry in entries:
            if version:
                out.append(self._repo.resolve(entry.name, version).stats.snapshot())
                continue
            out.extend(entry.versions[v].stats.snapshot() for v in entry.ready_versions())
        return out

    def repository_index(self, ready_only: bool = False) -> list[ModelIndexEntry]:
        out: list[ModelIndexEntry] = []
        for entry in self._repo.entries():
            if not entry.states:
                if not ready_only:
                    reason = entry.load_error or ("" if entry.wanted else "unloaded")
                    state = "UNAVAILABLE" if entry.load_error or not entry.wanted else "LOADING"
                    out.append(ModelIndexEntry(entry.name, "", state, reason))
                continue
            for v, (state, reason) in sorted(entry.states.items(), key=lambda kv: int(kv[0])):
                if not ready_only or state == "READY":
                    out.append(ModelIndexEntry(entry.name, v, state, reason))
        return out

    # -- model control -----------------------------------------------------------------------

    async def load_model(self, name: str) -> None:
        if name not in self._repo.names():
            self._repo.scan()  # a model directory added since start
        entry = self._repo.entry(name)
        try:
            replaced = await self._repo.load(name)
        except ModelNotFound:
            raise
        except Exception as exc:
            for v, (state, _) in entry.states.items():
                self._metrics.model_state(name, v, state == "READY")
            raise ModelLoadFailed(f"failed to load '{name}': {exc}") from None
        for v, loaded in entry.versions.items():
            self._metrics.model_state(name, v, True, loaded.load_seconds)
        for old in replaced:
            if old.version not in entry.versions:
                self._metrics.model_state(name, old.version, False)
            await self._retire(old)

    async def unload_model(self, name: str) -> None:
        for old in self._repo.unload(name):
            self._metrics.model_state(name, old.version, False)
            await self._retire(old)

    async def _retire(self, old: LoadedVersion) -> None:
        """Let queued and running requests of a replaced version finish, then release it."""
        await old.batcher.drain()
        await old.close()

    def model_names(self) -> list[str]:
        return self._repo.names()

    def describe_model(self, name: str, version: str = "") -> list[ModelDescription]:
        entry = self._repo.entry(name)
        if version:
            loaded = [self._repo.resolve(name, version)]
        else:
            loaded = [entry.versions[v] for v in entry.ready_versions()]
        if not loaded:
            return [unloaded_description(entry, self.model_config(name))]
        default = self._repo.default_version(name)
        return [describe_version(lv, lv.version == default) for lv in loaded]

    async def scale_model(self, name: str, version: str, instances: int) -> None:
        if instances < 1:
            raise InvalidInput(f"instances must be >= 1, got {instances}")
        current = self._repo.resolve(name, version)
        if current.batcher.instances == instances:
            return
        config = model_config_pb2.ModelConfig()
        config.CopyFrom(current.config)
        del config.instance_group[:]
        kind = current.config.instance_group[0].kind if current.config.instance_group else 0
        config.instance_group.add(count=instances, kind=kind)
        try:
            rebuilt = await asyncio.to_thread(
                build_version, config, current.model_dir, current.version,
                device=self._repo.device, instances=instances, clock=self._repo.clock,
                observer_factory=self._observer_for,
            )
        except Exception as exc:
            raise ModelLoadFailed(f"failed to scale '{name}' to {instances}: {exc}") from None
        old = self._repo.replace(rebuilt)
        if old is not None:
            await self._retire(old)

    def set_default_version(self, name: str, version: str) -> None:
        self._repo.set_default_version(name, version)

    def model_parameters(self, name: str, version: str = "") -> dict[str, str]:
        config = self.model_config_view(name, version)
        return {k: v.string_value for k, v in config.parameters.items()}

    def model_labels(self, name: str, version: str = "") -> list[str]:
        entry = self._repo.entry(name)
        if version:
            self._repo.resolve(name, version)
        return list(entry.labels)

    def load_failures(self) -> dict[str, str]:
        return {e.name: e.load_error for e in self._repo.entries() if e.load_error}

    # -- inference ---------------------------------------------------------------------------

    async def infer(self, request: InferRequest) -> InferResponse:
        if self._draining:
            raise ServerNotReady("Server is not ready: shutting down")
        start = time.perf_counter()
        loaded = self._repo.resolve(request.model_name, request.model_version)
        name, version = loaded.name, loaded.version
        self._inflight += 1
        self._quiet.clear()
        self._metrics.inflight_requests.inc()
        try:
            try:
                checked = check_request(loaded.rules, request)
                result = await loaded.batcher.submit(
                    checked.inputs, checked.batch_size, priority=checked.priority,
                    timeout_us=checked.timeout_us,
                )
                response = self._response(request, loaded, checked.outputs, result.outputs)
            except ServingError as exc:
                self._failed(loaded, exc.reason, start)
                raise
            except asyncio.CancelledError:
                self._failed(loaded, FailureReason.CANCELED, start)
                raise
            except Exception as exc:
                logger.exception("inference on %s/%s failed", name, version)
                self._failed(loaded, FailureReason.BACKEND, start)
                raise BackendError(f"inference failed: {exc}") from exc
            elapsed = time.perf_counter() - start
            loaded.stats.record_success(
                checked.batch_size, elapsed, result.queue_s, result.compute_input_s,
                result.compute_infer_s, result.compute_output_s,
            )
            self._metrics.request_succeeded(name, version, elapsed, result.queue_s,
                                            checked.batch_size)
            return response
        finally:
            self._inflight -= 1
            self._metrics.inflight_requests.dec()
            if self._inflight == 0:
                self._quiet.set()

    def _failed(self, loaded: LoadedVersion, reason: FailureReason, start: float) -> None:
        elapsed = time.perf_counter() - start
        loaded.stats.record_failure(elapsed)
        self._metrics.request_failed(loaded.name, loaded.version, reason, elapsed)

    def _response(
        self, request: InferRequest, loaded: LoadedVersion, wanted: list[RequestedOutput],
        arrays: dict[str, np.ndarray],
    ) -> InferResponse:
        config = loaded.config
        batched = config.max_batch_size > 0
        types = {o.name: datatype_of(o) for o in config.output}
        outputs: list[Tensor] = []
        for out in wanted:
            data = arrays[out.name]
            datatype = types[out.name]
            if out.class_count > 0:
                labels = self._repo.entry(loaded.name).labels
                data = classify(data, out.class_count, labels, batched)
                datatype = "BYTES"
            outputs.append(Tensor(out.name, datatype, tuple(data.shape), data))
        return InferResponse(model_name=loaded.name, model_version=loaded.version,
                             outputs=outputs, id=request.id)
