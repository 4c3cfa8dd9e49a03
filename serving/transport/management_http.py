"""TorchServe's management API on its own loopback port (8081).

List (paginated), describe, scale (``min_worker``/``max_worker`` -> executor count), set-default,
unregister, and register of a model or ``.mar`` already inside the model store (a remote or
escaping ``url`` is refused with 400 and never fetched). Register/unregister also need
``--enable-model-control``. With ``--api-token-file`` every call needs ``Authorization: Bearer``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.errors import InvalidInput, PermissionDenied, Unauthenticated
from serving.transport.auth import HostCheck, is_loopback, parse_allowed_hosts
from serving.transport.torchserve_common import guard, model_version, torchserve_error

if TYPE_CHECKING:
    from serving.archives.store import ModelStoreAccess
    from serving.core.service import InferenceService, ModelDescription
    from serving.handlers.models import HandlerModels
    from serving.settings import Settings

log = logging.getLogger(__name__)
MAX_LIMIT = 1000


def _int_param(request: Request, key: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(key)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{key} must be an integer, got '{raw}'") from None
    if not low <= value <= high:
        raise InvalidInput(f"{key} must be between {low} and {high}, got {value}")
    return value


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


class ManagementHandlers:
    def __init__(self, ops: ManagementOps) -> None:
        self.ops = ops

    async def list_models(self, request: Request) -> Response:
        return JSONResponse(self.ops.list_models(
            _int_param(request, "limit", 100, 1, MAX_LIMIT),
            _int_param(request, "next_page_token", 0, 0, 1 << 30)))

    async def describe(self, request: Request) -> Response:
        return JSONResponse(await self.ops.describe(request.path_params["model"],
                                              request.path_params.get("version", "")))

    async def register(self, request: Request) -> Response:
        q = request.query_params
        return JSONResponse(await self.ops.register(
            q.get("url", ""), q.get("model_name", ""),
            _int_param(request, "initial_workers", 0, 0, 64)))

    async def scale(self, request: Request) -> Response:
        return JSONResponse(await self.ops.scale(
            request.path_params["model"], request.path_params.get("version", ""),
            _int_param(request, "min_worker", 0, 0, 64),
            _int_param(request, "max_worker", 0, 0, 64)))

    async def unregister(self, request: Request) -> Response:
        return JSONResponse(await self.ops.unregister(request.path_params["model"],
                                                      request.path_params.get("version", "")))

    async def set_default(self, request: Request) -> Response:
        return JSONResponse(await self.ops.set_default(request.path_params["model"],
                                                 request.path_params["version"]))

    async def description(self, request: Request) -> Response:
        paths = ["GET /models", "POST /models?url=", "GET /models/{name}[/{version}|/all]",
                 "PUT /models/{name}[/{version}]?min_worker=&max_worker=",
                 "DELETE /models/{name}[/{version}]", "PUT /models/{name}/{version}/set-default"]
        return JSONResponse({"openapi": "3.0.1",
                             "info": {"title": "capserve TorchServe-compatible management API",
                                      "version": self.ops.service.server_metadata().version},
                             "paths": {p: {} for p in paths}})


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


class _TokenAuth:
    """ASGI middleware: every request needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                       for k, v in scope.get("headers", [])}
            try:
                check_token(headers.get("authorization"), self.token)
            except Unauthenticated as exc:
                await torchserve_error(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _HostGuard:
    """ASGI middleware: the Host check of ``serving.transport.auth`` (DNS rebinding)."""

    def __init__(self, app: Any, check: HostCheck) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            host = next((v.decode("latin-1") for k, v in scope.get("headers", [])
                         if k.lower() == b"host"), None)
            try:
                self.check.check(host, scope.get("server"))
            except PermissionDenied as exc:
                log.warning("management request refused: %s", exc)
                await torchserve_error(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_management_app(service: InferenceService, settings: Settings,
                          store: ModelStoreAccess,
                          handler_models: HandlerModels | None = None) -> Starlette:
    h = ManagementHandlers(ManagementOps(service, settings, store, handler_models))
    routes = [
        Route("/", guard(h.description), methods=["OPTIONS"]),
        Route("/api-description", guard(h.description), methods=["GET"]),
        Route("/models", guard(h.list_models), methods=["GET"]),
        Route("/models", guard(h.register), methods=["POST"]),
        Route("/models/{model}", guard(h.describe), methods=["GET"]),
        Route("/models/{model}", guard(h.scale), methods=["PUT"]),
        Route("/models/{model}", guard(h.unregister), methods=["DELETE"]),
        Route("/models/{model}/{version}/set-default", guard(h.set_default), methods=["PUT"]),
        Route("/models/{model}/{version}", guard(h.describe), methods=["GET"]),
        Route("/models/{model}/{version}", guard(h.scale), methods=["PUT"]),
        Route("/models/{model}/{version}", guard(h.unregister), methods=["DELETE"]),
    ]
    app = Starlette(routes=routes)
    token = settings.api_token()  # ValueError for a token file readable by others
    if token:
        app.add_middleware(_TokenAuth, token=token)
    # Added last, so it runs first: a rebinding page never learns whether a token is needed.
    app.add_middleware(_HostGuard, check=HostCheck(parse_allowed_hosts(
        settings.management_allowed_hosts)))
    if not token and not is_loopback(settings.management_host):
        log.warning("the management API listens on %s:%d WITHOUT an API token: anyone who can "
                    "reach it can scale models and read the store layout; set --api-token-file "
                    "or bind it to 127.0.0.1", settings.management_host, settings.management_port)
    return app
