"""The custom-handler models of a store, found and started with the TorchServe dialect.

Every capserve worker process runs its own handler pool: ``minWorkers`` handler processes per
model in each capserve worker (the count is logged per worker at start; docs/torchserve.md
says why the pools are not shared through the supervisor).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.archives.mar import ArchiveLimits
from serving.batching.policy import QueuePolicy
from serving.errors import ModelNotFound, ServingError, shown
from serving.handlers.archive import extract_handler_archive, read_plans, runs_own_handler
from serving.handlers.pool import Answer, HandlerModel, HandlerRequest, HandlerSpec

if TYPE_CHECKING:
    from serving.core.metrics import Metrics
    from serving.settings import Settings

log = logging.getLogger(__name__)
DEFAULT_QUEUE = 100  # TorchServe's job_queue_size


class HandlerModels:
    def __init__(self) -> None:
        self.models: dict[str, HandlerModel] = {}

    def __contains__(self, name: object) -> bool:
        return name in self.models

    def names(self) -> list[str]:
        return sorted(self.models)

    def model(self, name: str, version: str = "") -> HandlerModel:
        """The model when ``version`` is empty, ``all`` or its own (``1.0`` or ``1``);
        ``ModelNotFound`` naming what does not exist otherwise."""
        model = self.models.get(name)
        if model is None:
            raise ModelNotFound(f"Model not found: {shown(name)}")
        if version and version != "all" and version not in (model.version,
                                                             model.version.split(".")[0]):
            raise ModelNotFound(f"Model version: {shown(version)} does not exist for model: "
                                f"{shown(name)}")
        return model

    def healthy(self) -> bool:
        """TorchServe's /ping: every model has a handler process up."""
        return all(m.ready() for m in self.models.values())

    async def predict(self, name: str, version: str, request: HandlerRequest) -> Answer:
        return await self.model(name, version).predict(request)

    def describe(self, name: str, version: str = "") -> list[dict[str, Any]]:
        return [describe_json(self.model(name, version))]

    def close(self) -> None:
        for model in self.models.values():
            model.close()


def describe_json(model: HandlerModel) -> dict[str, Any]:
    """TorchServe's ModelDescription of a custom-handler model (this capserve worker's
    handler processes)."""
    spec = model.spec
    pending = model.batcher.queued
    workers = [{"id": p.name, "startTime": _iso(p.started_at), "status": p.status,
                "memoryUsage": 0, "pid": p.pid or -1, "gpu": False, "gpuUsage": "N/A",
                "restarts": p.restarts} for p in model.processes]
    return {
        "modelName": spec.model_name, "modelVersion": model.version,
        "modelUrl": f"{spec.model_name}.mar", "runtime": "python", "platform": "python",
        "minWorkers": len(model.processes), "maxWorkers": len(model.processes),
        "batchSize": spec.batch_size, "maxBatchDelay": model.max_batch_delay_ms,
        "responseTimeout": spec.response_timeout_s, "loadedAtStartup": True,
        "isDefault": True, "ready": model.ready(), "handler": spec.handler,
        "envelope": spec.envelope, "workers": workers,
        "jobQueueStatus": {"remainingCapacity": max(model.max_queue_size - pending, 0),
                           "pendingRequests": pending, "maxQueueSize": model.max_queue_size},
    }


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(epoch)) if epoch else ""


def _spec(name: str, root: Path, handler: str, plan: dict[str, Any],
          settings: Settings) -> HandlerSpec:
    timeout = plan.get("response_timeout_s") or settings.handler_response_timeout_seconds
    return HandlerSpec(model_name=name, model_dir=root, handler=handler,
                       batch_size=int(plan.get("batch_size") or 1),
                       envelope=str(plan.get("envelope") or ""),
                       start_timeout_s=settings.handler_start_timeout_seconds,
                       response_timeout_s=float(timeout),
                       max_response_bytes=settings.max_handler_response_bytes)


def start_handler_models(store: Path, cache_dir: Path, settings: Settings,
                         metrics: Metrics | None = None) -> HandlerModels:
    """Every archive of ``store`` that runs its own handler, with its processes starting.
    Only with ``allow_archive_code``; an archive that cannot be read is logged and skipped."""
    found = HandlerModels()
    if not settings.allow_archive_code:
        return found
    limits = ArchiveLimits()
    plans = read_plans(store)
    for mar in sorted(store.glob("*.mar")):
        name = mar.stem
        if (store / name).is_dir():
            continue
        try:
            manifest = runs_own_handler(mar, limits)
            if manifest is None:
                continue
            root = extract_handler_archive(mar, cache_dir, name, limits)
        except ServingError as exc:
            log.error("archive %s is not served: %s", mar.name, exc)
            continue
        plan = dict(plans.get(name, {}))
        queue = QueuePolicy(max_queue_size=settings.default_max_queue_size or DEFAULT_QUEUE,
                            default_timeout_us=int(settings.default_queue_timeout_seconds * 1e6))
        model = HandlerModel(_spec(name, root, manifest.handler, plan, settings),
                             str(plan.get("version") or manifest.model_version),
                             int(str(plan.get("workers") or 1)),
                             int(str(plan.get("max_batch_delay_ms") or 100)), queue, metrics)
        model.start()
        found.models[name] = model
        where = (f" in capserve worker {settings.worker_id} (each capserve worker runs its "
                 "own; the total is this times --workers)" if settings.worker_id >= 0 else "")
        log.warning("model '%s': the archive's handler %s runs in %d handler process(es)%s "
                    "with the server's rights (--allow-archive-code)", name, manifest.handler,
                    len(model.processes), where)
    return found
