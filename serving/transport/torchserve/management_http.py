"""TorchServe's management API on its own loopback port (8081), over HTTP.

The routes of ``management`` (the operations both management APIs share), the bearer token
(``--api-token-file``: every call needs ``Authorization: Bearer``) and the Host check.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.errors import InvalidInput, PermissionDenied, Unauthenticated
from serving.transport.auth import HostCheck, is_loopback, parse_allowed_hosts
from serving.transport.torchserve.common import guard, torchserve_error
from serving.transport.torchserve.management import MAX_LIMIT, ManagementOps, check_token

if TYPE_CHECKING:
    from serving.archives.store import ModelStoreAccess
    from serving.core.service import InferenceService
    from serving.handlers.models import HandlerModels
    from serving.settings import Settings

log = logging.getLogger(__name__)


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
