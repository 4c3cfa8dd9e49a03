"""One loaded model version: its backend instances, its batcher and its statistics."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving.backends import Backend, BackendSpec, create_backend
from serving.batching import BatchObserver, Clock, DynamicBatcher, policy_from_config
from serving.core.limits import ServiceLimits
from serving.core.spec import ModelSpec
from serving.core.stats import StatsRecorder
from serving.core.validation import RequestRules
from serving.core.warmup import run_warmup, warmup_samples

logger = logging.getLogger(__name__)

# (model name, version) -> the version's statistics and what its batcher reports to. Statistics
# are owned by the caller so they survive a reload or a change of instance count.
ObserverFactory = Callable[[str, str], tuple[StatsRecorder, BatchObserver | None]]


@dataclass(eq=False)
class LoadedVersion:
    """The handle a request gets when it resolves its model version: the version's spec and
    its executor (the batcher), resolved once so they always belong together."""

    name: str
    version: str
    spec: ModelSpec
    model_dir: Path
    backends: list[Backend]
    batcher: DynamicBatcher
    stats: StatsRecorder
    loaded_at: float  # epoch seconds
    load_seconds: float

    @property
    def rules(self) -> RequestRules:
        return self.spec.rules

    @property
    def device(self) -> str:
        return self.backends[0].device if self.backends else "cpu"

    @property
    def takes_device_inputs(self) -> bool:
        """Whether every instance reads GPU-resident inputs where they lie."""
        return bool(self.backends) and all(b.takes_device_inputs for b in self.backends)

    async def close(self, timeout_s: float | None = None) -> None:
        """Stop the batcher (running work gets at most ``timeout_s``), then the backends.

        Backends with a call still running on an abandoned thread are left to the garbage
        collector: closing a session under a running call is what would crash."""
        await self.batcher.close(timeout_s)
        if self.batcher.busy_threads:
            logger.error("%s/%s: %d instance threads are still running; their backends are not "
                         "closed", self.name, self.version, self.batcher.busy_threads)
            return
        for backend in self.backends:
            try:
                backend.close()
            except Exception:
                logger.exception("closing a backend of %s/%s failed", self.name, self.version)


def _check_names(spec: ModelSpec, backend: Backend) -> None:
    """The config's tensors must exist in the model file, or every request would fail later."""
    for kind, declared, actual in (
        ("input", [i.name for i in spec.inputs], backend.input_names),
        ("output", [o.name for o in spec.outputs], backend.output_names),
    ):
        unknown = [n for n in declared if n not in actual]
        if unknown:
            raise ValueError(f"config {kind}s {unknown} are not in the model (it has {actual})")


def _runner(backend: Backend, outputs: list[str]) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return backend.run(inputs, outputs)

    return run


def build_version(
    model: ModelSpec,
    model_dir: Path,
    version: str,
    *,
    device: str,
    instances: int,
    clock: Clock | None,
    observer_factory: ObserverFactory | None,
    limits: ServiceLimits | None = None,
) -> LoadedVersion:
    """Create ``instances`` backends and the batcher (blocking: call it from a worker thread)."""
    limits = limits or ServiceLimits()
    if not 1 <= instances <= limits.max_instances:
        raise ValueError(f"instance count {instances} is outside [1, {limits.max_instances}] "
                         "(max_model_instances)")
    start = time.perf_counter()
    spec = BackendSpec(config=model.backend, version_dir=model_dir / version, device=device,
                       instances=instances)
    samples = warmup_samples(model, model_dir)  # a bad sample fails before any model loads
    outputs = [o.name for o in model.outputs]
    backends: list[Backend] = []
    try:
        for _ in range(instances):
            backend = create_backend(spec)
            backends.append(backend)
            _check_names(model, backend)
            run_warmup(backend, samples, outputs, f"{model.name}/{version}")
    except BaseException:
        for b in backends:
            b.close()
        raise
    if observer_factory is not None:
        stats, observer = observer_factory(model.name, version)
    else:
        stats, observer = StatsRecorder(model.name, version), None
    batcher = DynamicBatcher(
        [_runner(b, outputs) for b in backends],
        policy_from_config(model.batching, instances=instances, defaults=limits.queue),
        clock=clock,
        observer=observer,
        name=f"{model.name}/{version}",
        inline_below_s=spec.inline_run_threshold_s(
            on_cuda=any(b.device.startswith("cuda") for b in backends)),
        execution_timeout_s=limits.execution_timeout_s,
    )
    return LoadedVersion(
        name=model.name, version=version, spec=model, model_dir=model_dir,
        backends=backends, batcher=batcher, stats=stats, loaded_at=time.time(),
        load_seconds=time.perf_counter() - start,
    )
