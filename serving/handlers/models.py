"""The custom-handler models of a store, found and started with the TorchServe dialect."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from serving.archives.mar import ArchiveLimits
from serving.batching.policy import QueuePolicy
from serving.errors import ModelNotFound, ServingError, shown
from serving.handlers.archive import extract_handler_archive, read_plans, runs_own_handler
from serving.handlers.pool import Answer, HandlerModel, HandlerRequest, HandlerSpec

if TYPE_CHECKING:
    from serving.settings import Settings

log = logging.getLogger(__name__)
DEFAULT_QUEUE = 100  # TorchServe's job_queue_size


class HandlerModels:
    def __init__(self) -> None:
        self.models: dict[str, HandlerModel] = {}

    def __contains__(self, name: object) -> bool:
        return name in self.models

    async def predict(self, name: str, version: str, request: HandlerRequest) -> Answer:
        model = self.models[name]
        if version and version not in (model.version, model.version.split(".")[0]):
            raise ModelNotFound(f"Model version: {shown(version)} does not exist for model: "
                                f"{shown(name)}")
        return await model.predict(request)

    def close(self) -> None:
        for model in self.models.values():
            model.close()


def _spec(name: str, root: Path, handler: str, plan: dict[str, Any],
          settings: Settings) -> HandlerSpec:
    timeout = plan.get("response_timeout_s") or settings.handler_response_timeout_seconds
    return HandlerSpec(model_name=name, model_dir=root, handler=handler,
                       batch_size=int(plan.get("batch_size") or 1),
                       envelope=str(plan.get("envelope") or ""),
                       start_timeout_s=settings.handler_start_timeout_seconds,
                       response_timeout_s=float(timeout),
                       max_response_bytes=settings.max_handler_response_bytes)


def start_handler_models(store: Path, cache_dir: Path, settings: Settings) -> HandlerModels:
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
                             int(str(plan.get("max_batch_delay_ms") or 100)), queue)
        model.start()
        found.models[name] = model
        log.warning("model '%s': the archive's handler %s runs in %d handler process(es) "
                    "with the server's rights (--allow-archive-code)", name, manifest.handler,
                    len(model.processes))
    return found
