"""The protocol-neutral core every transport and task pipeline calls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

import numpy as np

from serving import tracing
from serving.backends.base import on_gpu
from serving.batching import BatchObserver
from serving.core.classification import classify
from serving.core.describe import (
    ModelDescription,
    describe_version,
    tensor_metadata,
    unloaded_description,
)
from serving.core.limits import ServiceLimits
from serving.core.loaded import LoadedVersion
from serving.core.metrics import Metrics
from serving.core.repository import ModelRepository
from serving.core.shm import RegionStatus, SharedMemoryRegistry, host_copies
from serving.core.spec import ModelSpec
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
    QueueFull,
    ServerNotReady,
    ServingError,
)
from serving.logs import request_id_var

logger = logging.getLogger(__name__)

# The service that admitted the request running in this context (see ``admission``).
_admitted_by: ContextVar[object | None] = ContextVar("capserve_admitted_by", default=None)
# After a drain's grace is spent, running batches get this much more before ``close`` fails them.
_CLOSE_AFTER_DRAIN_S = 1.0

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
    "system_shared_memory",
)


class _Observer:
    """Routes one version's batcher events to its statistics and the metrics."""

    def __init__(self, metrics: Metrics, stats: StatsRecorder, name: str, version: str) -> None:
        self._metrics, self._stats, self._name, self._version = metrics, stats, name, version

    def pending_changed(self, delta: int) -> None:
        self._metrics.pending_changed(self._name, self._version, delta)

    def execution_finished(
        self, batch_size: int, compute_input_s: float, compute_infer_s: float,
        compute_output_s: float, traces: Sequence[object] = (),
    ) -> None:
        self._stats.record_execution(batch_size, compute_input_s, compute_infer_s, compute_output_s)
        self._metrics.execution(self._name, self._version, batch_size, compute_input_s,
                                compute_infer_s, compute_output_s)
        if traces:  # one span per execution, linked to every traced request it served
            tracing.record_span(
                "execute", compute_input_s + compute_infer_s + compute_output_s, 0.0,
                links=traces, **{"capserve.model": self._name, "capserve.version": self._version,
                                 "capserve.batch_size": batch_size})


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
        self._inflight = 0  # requests admitted and not yet answered (see ``admission``)
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._drain_deadline: float | None = None
        self._control_locks: dict[str, asyncio.Lock] = {}
        self.shared_memory = SharedMemoryRegistry()
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
        """Refuse requests that arrive from now on; those admitted before still run."""
        self._draining = True

    @contextlib.contextmanager
    def admission(self, relayed: bool = False) -> Iterator[None]:
        """Mark the request handled in this context as accepted by the server.

        A transport enters it when a request arrives, before reading its body or decoding its
        images: a request admitted before the drain began is served to the end (``infer`` lets
        it through and ``drain`` waits for it); one admitted later is refused by ``infer``.
        ``relayed`` marks a request another worker accepted and handed over: the drain waits
        for it here too, but the in-flight gauge leaves it to the worker that counts it already
        (summed over workers, the gauge counts each client request once).
        """
        if self._draining or _admitted_by.get() is self:
            yield  # arrived during the drain (refused by infer), or admitted already
            return
        token = _admitted_by.set(self)
        self._enter(counted=not relayed)
        try:
            yield
        finally:
            self._leave(counted=not relayed)
            _admitted_by.reset(token)

    def admitted(self) -> bool:
        """True inside the :meth:`admission` of a request this server accepted (false for one
        that arrived during a drain: ``infer`` will refuse it)."""
        return _admitted_by.get() is self

    def _enter(self, counted: bool = True) -> None:
        self._inflight += 1
        self._quiet.clear()
        if counted:
            self._metrics.inflight_requests.inc()

    def _leave(self, counted: bool = True) -> None:
        self._inflight -= 1
        if counted:
            self._metrics.inflight_requests.dec()
        if self._inflight == 0:
            self._quiet.set()

    async def drain(self, grace_s: float) -> None:
        """Wait (at most ``grace_s``) until every admitted request is answered."""
        deadline = time.monotonic() + grace_s
        self._drain_deadline = deadline
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._quiet.wait(), timeout=grace_s)
            for entry in self._repo.entries():
                for loaded in entry.versions.values():
                    left = max(0.0, deadline - time.monotonic())
                    await asyncio.wait_for(loaded.batcher.drain(), timeout=left)

    async def close(self) -> None:
        """Unload everything. Running batches get what is left of a drain's grace (at least
        a second), else the close timeout; then they fail and their threads are abandoned."""
        self._closed = True
        self._draining = True
        self.shared_memory.unregister()
        self.shared_memory.unregister_cuda()
        if self._drain_deadline is not None:
            bound = max(_CLOSE_AFTER_DRAIN_S, self._drain_deadline - time.monotonic())
        else:
            bound = self._limits.close_timeout_s
        closing = []
        for entry in self._repo.entries():
            for loaded in self._repo.unload(entry.name):
                self._metrics.model_state(loaded.name, loaded.version, False)
                closing.append(loaded.close(bound))
        for result in await asyncio.gather(*closing, return_exceptions=True):
            if isinstance(result, BaseException):
                logger.error("closing a model failed", exc_info=result)

    @property
    def _limits(self) -> ServiceLimits:
        return self._repo.limits

    # -- health and metadata -----------------------------------------------------------------

    def server_live(self) -> bool:
        """False once closed, and while a model instance is stuck past the execution timeout
        (a call that does not return can only be cured by a restart)."""
        return not self._closed and not self.stuck_instances()

    def server_ready(self) -> bool:
        """True while every wanted model has a READY version (a failed reload that left the
        old versions serving keeps it true) and no instance is stuck."""
        if self._draining or self._closed or not self._started or self.stuck_instances():
            return False
        return all(e.versions for e in self._repo.entries() if e.wanted)

    def stuck_instances(self) -> dict[str, int]:
        """``name/version`` -> instances whose run outlived the execution timeout."""
        return {f"{e.name}/{v}": lv.batcher.stuck for e in self._repo.entries()
                for v, lv in e.versions.items() if lv.batcher.stuck}

    def server_metadata(self) -> ServerMetadata:
        # CUDA shared memory is listed only where a device is visible (Triton does the same).
        cuda = ("cuda_shared_memory",) if self.shared_memory.cuda_available() else ()
        return ServerMetadata(name="capserve", version=self._version,
                              extensions=EXTENSIONS + cuda)

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self._repo.resolve(name, version)
        except ServingError:
            return False
        return True

    def model_metadata(self, name: str, version: str = "") -> ModelMetadata:
        loaded = self._repo.resolve(name, version)
        spec = loaded.spec
        return ModelMetadata(
            name=name,
            versions=tuple(self._repo.entry(name).ready_versions()),
            platform=spec.platform,
            inputs=tuple(tensor_metadata(i, spec.batched) for i in spec.inputs),
            outputs=tuple(tensor_metadata(o, spec.batched) for o in spec.outputs),
        )

    def resolve(self, name: str, version: str = "") -> LoadedVersion:
        """The version that serves ``name``/``version`` now: pass it to :meth:`infer` so the
        spec a caller read and the model that runs are one version's, whatever reloads."""
        return self._repo.resolve(name, version)

    def model_spec(self, name: str, version: str = "") -> ModelSpec:
        """The spec of a ready version, else of the model's config on disk (e.g. unloaded)."""
        try:
            return self._repo.spec_of(name, version)
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

    async def gather_statistics(self, name: str = "", version: str = "") -> list[ModelStats]:
        """Statistics as clients see them: this process's counts here; a worker of a supervisor
        adds up every worker's (its core overrides this)."""
        return self.model_statistics(name, version)

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

    def _control_lock(self, name: str) -> asyncio.Lock:
        """One lock per model: load, unload, scale and set-default never interleave."""
        return self._control_locks.setdefault(name, asyncio.Lock())

    async def load_model(self, name: str) -> None:
        if name not in self._repo.names():
            self._repo.scan()  # a model directory added since start
        self._repo.entry(name)  # ModelNotFound before taking a lock for an unknown name
        async with self._control_lock(name):
            await self._load(name)

    async def _load(self, name: str) -> None:
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
        self._repo.entry(name)
        async with self._control_lock(name):
            for old in self._repo.unload(name):
                self._metrics.model_state(name, old.version, False)
                await self._retire(old)

    async def _retire(self, old: LoadedVersion) -> None:
        """Let queued and running requests of a replaced version finish (within the close
        timeout: then they fail and its threads are abandoned), then release it."""
        bound = self._limits.close_timeout_s
        deadline = time.monotonic() + bound
        try:
            await asyncio.wait_for(old.batcher.drain(), timeout=bound)
        except TimeoutError:
            logger.error("%s/%s did not finish its requests within %g s of being unloaded "
                         "(model_close_timeout_seconds)", old.name, old.version, bound)
        await old.close(max(0.0, deadline - time.monotonic()))

    def model_names(self) -> list[str]:
        return self._repo.names()

    def describe_model(self, name: str, version: str = "") -> list[ModelDescription]:
        entry = self._repo.entry(name)
        if version:
            loaded = [self._repo.resolve(name, version)]
        else:
            loaded = [entry.versions[v] for v in entry.ready_versions()]
        if not loaded:
            return [unloaded_description(entry, self.model_spec(name))]
        default = self._repo.default_version(name)
        return [describe_version(lv, lv.version == default) for lv in loaded]

    async def gather_descriptions(self, name: str, version: str = "") -> list[ModelDescription]:
        """Descriptions as clients see them: this process's; a worker of a supervisor counts
        every worker's instances and queued requests (its core overrides this)."""
        return self.describe_model(name, version)

    async def scale_model(self, name: str, version: str, instances: int) -> None:
        limit = self._limits.max_instances
        if not 1 <= instances <= limit:
            raise InvalidInput(f"instances must be between 1 and {limit} (max_model_instances), "
                               f"got {instances}")
        self._repo.resolve(name, version)
        async with self._control_lock(name):
            await self._scale(name, version, instances)

    async def _scale(self, name: str, version: str, instances: int) -> None:
        current = self._repo.resolve(name, version)  # again: an unload may have won the lock
        if current.batcher.instances == instances:
            return
        spec = current.spec.with_instances(instances)
        try:
            rebuilt = await self._repo.build(spec, current.model_dir, current.version, instances)
        except TimeoutError:
            raise ModelLoadFailed(f"scaling '{name}' to {instances} did not finish within "
                                  f"{self._limits.load_timeout_s:g} s") from None
        except Exception as exc:
            raise ModelLoadFailed(f"failed to scale '{name}' to {instances}: {exc}") from None
        old = self._repo.replace(rebuilt)
        if old is not None:
            await self._retire(old)

    def set_default_version(self, name: str, version: str) -> None:
        self._repo.set_default_version(name, version)

    async def set_default(self, name: str, version: str) -> None:
        """The default version as clients see it: set here; a worker of a supervisor sets it on
        every worker before it answers (its core overrides this)."""
        self.set_default_version(name, version)

    def model_labels(self, name: str, version: str = "") -> list[str]:
        if version:
            return list(self._repo.resolve(name, version).spec.labels)
        entry = self._repo.entry(name)
        return list(entry.spec.labels) if entry.spec is not None else []

    def load_failures(self) -> dict[str, str]:
        return {e.name: e.load_error for e in self._repo.entries() if e.load_error}

    # -- system shared memory ----------------------------------------------------------------

    async def register_shared_memory(self, name: str, key: str, offset: int,
                                     byte_size: int) -> None:
        """Register a region here; a worker of a supervisor registers it on every worker
        before it answers (its core overrides this)."""
        self.shared_memory.register(name, key, offset, byte_size)

    async def unregister_shared_memory(self, name: str = "") -> None:
        """Unregister ``name`` ("" = all); on every worker for a worker of a supervisor."""
        self.shared_memory.unregister(name)

    def shared_memory_status(self, name: str = "") -> list[RegionStatus]:
        return self.shared_memory.status(name)

    async def register_cuda_shared_memory(self, name: str, raw_handle: bytes, device_id: int,
                                          byte_size: int) -> None:
        """Open a CUDA IPC handle here, on a thread (the first one sets up a CUDA context); a
        worker of a supervisor opens it on every worker before it answers."""
        await asyncio.to_thread(self.shared_memory.register_cuda, name, raw_handle, device_id,
                                byte_size)

    async def unregister_cuda_shared_memory(self, name: str = "") -> None:
        """Unregister CUDA region ``name`` ("" = all), on a thread (closing a handle is a CUDA
        call); on every worker for a worker of a supervisor."""
        await asyncio.to_thread(self.shared_memory.unregister_cuda, name)

    # -- inference ---------------------------------------------------------------------------

    def refuse_if_full(self, name: str, version: str = "") -> None:
        """``QueueFull`` now (counted as a rejected request) when the version that would
        serve ``name``/``version`` has a full default-priority queue. Transports call it before
        reading and decoding a request: under overload a refusal then costs no body read,
        parse or decode thread, and answers in well under a millisecond of server time."""
        if self._draining:
            return  # infer() gives its own answer
        try:
            loaded = self._repo.resolve(name, version)
        except ServingError:
            return  # the request reports its own bad name or version
        if loaded.batcher.policy.levels == 1 and loaded.batcher.queue_full():
            exc = QueueFull()
            self._failed(loaded, exc.reason, time.perf_counter())
            raise exc

    async def infer(self, request: InferRequest,
                    loaded: LoadedVersion | None = None) -> InferResponse:
        """Run one request; ``loaded`` (from :meth:`resolve`) pins the version that runs it,
        else the request's name and version are resolved here."""
        if self._draining and _admitted_by.get() is not self:
            raise ServerNotReady("Server is not ready: shutting down")
        with self.admission():
            return await self._infer(request, loaded)

    async def _infer(self, request: InferRequest, loaded: LoadedVersion | None) -> InferResponse:
        start = time.perf_counter()
        if loaded is None:
            loaded = self._repo.resolve(request.model_name, request.model_version)
        name, version = loaded.name, loaded.version
        try:
            checked = check_request(loaded.spec.rules, request)
            inputs = checked.inputs
            if any(on_gpu(a) for a in inputs.values()) and not loaded.takes_device_inputs:
                inputs = await host_copies(inputs)
            result = await loaded.batcher.submit(
                inputs, checked.batch_size, priority=checked.priority,
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
            rid = request_id_var.get() or request.id
            raise BackendError(f"inference failed on model '{name}'; see the server log"
                               + (f" (request id {rid})" if rid else "")) from exc
        elapsed = time.perf_counter() - start
        loaded.stats.record_success(
            checked.batch_size, elapsed, result.queue_s, result.compute_input_s,
            result.compute_infer_s, result.compute_output_s,
        )
        self._metrics.request_succeeded(
            name, version, elapsed, result.queue_s, checked.batch_size,
            (result.compute_input_s, result.compute_infer_s, result.compute_output_s))
        compute_s = result.compute_input_s + result.compute_infer_s + result.compute_output_s
        tracing.record_span("queue", result.queue_s + compute_s, compute_s)
        return response

    def _failed(self, loaded: LoadedVersion, reason: FailureReason, start: float) -> None:
        elapsed = time.perf_counter() - start
        loaded.stats.record_failure(elapsed)
        self._metrics.request_failed(loaded.name, loaded.version, reason, elapsed)

    def _response(
        self, request: InferRequest, loaded: LoadedVersion, wanted: list[RequestedOutput],
        arrays: dict[str, np.ndarray],
    ) -> InferResponse:
        spec = loaded.spec
        types = spec.rules.outputs
        outputs: list[Tensor] = []
        for out in wanted:
            data = arrays[out.name]
            datatype = types[out.name]
            if out.class_count > 0:
                data = classify(data, out.class_count, list(spec.labels), spec.batched)
                datatype = "BYTES"
            outputs.append(Tensor(out.name, datatype, tuple(data.shape), data))
        return InferResponse(model_name=loaded.name, model_version=loaded.version,
                             outputs=outputs, id=request.id)
