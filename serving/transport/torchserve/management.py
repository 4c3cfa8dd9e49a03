"""TorchServe's management operations, protocol-neutral: the HTTP (``management_http``) and
gRPC (``management_grpc``) management APIs call them with the same checks and messages.

List (paginated), describe, scale (``min_worker``/``max_worker`` -> executor count), set-default,
unregister, and register of a model or ``.mar`` already inside the model store (a remote or
escaping ``url`` is refused with 400 and never fetched). Register/unregister also need
``--enable-model-control``. Custom-handler models are listed and described; their worker count
and presence come from ``config.properties`` at start.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import TYPE_CHECKING, Any

from serving.errors import InvalidInput, PermissionDenied, Unauthenticated
from serving.transport.torchserve.common import model_version

if TYPE_CHECKING:
    from serving.archives.store import ModelStoreAccess
    from serving.core.service import InferenceService, ModelDescription
    from serving.handlers.models import HandlerModels
    from serving.settings import Settings

MAX_LIMIT = 1000


def describe_json(d: ModelDescription) -> dict[str, Any]:
    """TorchServe's ModelDescription fields, plus capserve's (platform, ready, load time)."""
    capacity = max(d.max_queue_size - d.pending_requests, 0) if d.max_queue_size else -1
    return {
        "modelName": d.name, "modelVersion": d.version, "modelUrl": d.model_dir,
        "runtime": d.platform, "platform": d.platform,
        "minWorkers": d.instances, "maxWorkers": d.instances,
        "batchSize": d.max_batch_size, "maxBatchDelay": d.max_queue_delay_us / 1000.0,
        "maxQueueDelayMicroseconds": d.max_queue_delay_us,
        "loadedAtStartup": d.loaded_at > 0, "isDefault": d.is_default, "ready": d.ready,
        "loadedAt": d.loaded_at, "loadSeconds": round(d.load_seconds, 6),
        "workers": [{"id": str(i), "status": "READY" if d.ready else "UNLOADED", "gpu": False}
                    for i in range(d.instances if d.ready else 0)],
        "jobQueueStatus": {"remainingCapacity": capacity, "pendingRequests": d.pending_requests,
                           "maxQueueSize": d.max_queue_size},
    }


class ManagementOps:
    """The management operations, shared by the HTTP and gRPC management APIs."""

    def __init__(self, service: InferenceService, settings: Settings,
                 store: ModelStoreAccess, handler_models: HandlerModels | None = None) -> None:
        self.service = service
        self.store = store
        self.model_control = bool(settings.enable_model_control)
        self.handler_models = handler_models  # archives run by their own handler

    def _custom(self, name: str) -> bool:
        return self.handler_models is not None and name in self.handler_models

    def _fixed(self, name: str, what: str) -> None:
        """Custom-handler models are set by the config at start; refuse changing them."""
        if self._custom(name):
            raise InvalidInput(f"model '{name}' runs its own handler: {what} is set by "
                               "config.properties at start and cannot change at runtime")

    def _url(self, name: str) -> str:
        if self._custom(name):
            return f"{name}.mar"
        return self.service.describe_model(name)[0].model_dir

    def _control(self) -> None:
        if not self.model_control:
            raise PermissionDenied("registering and unregistering models is disabled; start "
                                   "the server with --enable-model-control")

    def list_models(self, limit: int, token: int) -> dict[str, Any]:
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        names = sorted({*self.service.model_names(),
                        *(self.handler_models.names() if self.handler_models else ())})
        if token < 0 or token > len(names):
            raise InvalidInput(f"next_page_token {token} is out of range")
        body: dict[str, Any] = {"models": [
            {"modelName": n, "modelUrl": self._url(n)} for n in names[token:token + limit]]}
        if token + limit < len(names):
            body["nextPageToken"] = str(token + limit)
        return body

    async def describe(self, name: str, version: str) -> list[dict[str, Any]]:
        version = model_version(version)
        if self.handler_models is not None and name in self.handler_models:
            return self.handler_models.describe(name, version)
        descriptions = await self.service.gather_descriptions(
            name, "" if version == "all" else version)
        return [describe_json(d) for d in descriptions]

    async def register(self, url: str, model_name: str, initial_workers: int) -> dict[str, Any]:
        self._control()
        if not 0 <= initial_workers <= 64:
            raise InvalidInput(f"initial_workers must be between 0 and 64, got {initial_workers}")
        # Hashing and extracting an archive can take seconds: keep it off the serving loop.
        name = await asyncio.to_thread(self.store.register, url, model_name)
        await self.service.load_model(name)
        if initial_workers:
            await self.service.scale_model(name, "", initial_workers)
        versions = [d.version for d in self.service.describe_model(name)]
        return {"status": f'Model "{name}" Version: {",".join(versions)} registered with '
                          f"{initial_workers or 'its configured'} initial workers"}

    async def scale(self, name: str, version: str, low: int, high: int) -> dict[str, Any]:
        if low < 0 or high < 0 or low > 64 or high > 64:
            raise InvalidInput("min_worker and max_worker must be between 0 and 64")
        if low and high and low > high:
            raise InvalidInput(f"min_worker {low} is larger than max_worker {high}")
        self._fixed(name, "its worker count (minWorkers)")
        # capserve runs a fixed executor count: TorchServe starts min_worker workers.
        instances = low or high
        if not instances:
            raise InvalidInput("give min_worker or max_worker (>= 1)")
        await self.service.scale_model(name, model_version(version), instances)
        return {"status": f"Workers scaled to {instances} for model: {name}"}

    async def unregister(self, name: str, version: str) -> dict[str, Any]:
        self._control()
        self._fixed(name, "whether it is served")
        version = model_version(version)
        described = self.service.describe_model(name, version)  # 404 for unknown
        if version and len(self.service.describe_model(name)) > len(described):
            # Versions load and unload together (the model's version policy picks them).
            raise InvalidInput(f"model '{name}' serves several versions; unregister the model "
                               f"(DELETE /models/{name}) or change its version_policy")
        await self.service.unload_model(name)
        return {"status": f'Model "{name}" unregistered'}

    async def set_default(self, name: str, version: str) -> dict[str, Any]:
        self._fixed(name, "its default version")
        version = model_version(version)
        await self.service.set_default(name, version)
        return {"status": f'Default version successfully updated for model "{name}" to '
                          f'"{version}"'}


def check_token(authorization: str | None, token: str | None) -> None:
    """Raise ``Unauthenticated`` unless ``authorization`` is ``Bearer <token>`` (when set)."""
    if not token:
        return
    scheme, _, credential = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not credential:
        raise Unauthenticated("management API requires 'Authorization: Bearer <token>'")
    # Constant-time comparison: the token must not leak through response timing.
    if not hmac.compare_digest(credential.strip().encode(), token.encode()):
        raise Unauthenticated("invalid API token")
