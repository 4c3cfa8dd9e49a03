"""The TorchServe dialect of one server, built once and wired by ``serving.server``.

``build_torchserve`` materialises the store's ``.mar`` archives (so they load with the rest),
starts the custom-handler models, and makes the inference routes, the management app, the
KServe front of custom-handler models and the gRPC services. Nothing here binds a port.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from grpc import aio
from starlette.applications import Starlette
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from serving.archives.mar import ArchiveLimits
from serving.archives.materialize import materialize_archives
from serving.archives.store import ModelStoreAccess
from serving.core.validation import TensorLimits
from serving.handlers.http import KServeFront
from serving.handlers.models import HandlerModels, start_handler_models
from serving.tasks.pipelines import Pipelines
from serving.transport.auth import is_loopback
from serving.transport.torchserve.inference_grpc import add_inference_service
from serving.transport.torchserve.inference_http import torchserve_routes
from serving.transport.torchserve.management_grpc import add_management_service
from serving.transport.torchserve.management_http import create_management_app

if TYPE_CHECKING:
    from serving.core.metrics import Metrics
    from serving.core.service import InferenceService
    from serving.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class TorchServeDialect:
    """Everything of the TorchServe dialect for one server."""

    pipelines: Pipelines
    store: ModelStoreAccess
    routes: list[BaseRoute]
    management_app: Starlette
    archive_models: list[str]
    cache_dir: Path
    settings: Settings
    handler_models: HandlerModels
    owns_cache_dir: bool = True

    def http_front(self, app: ASGIApp) -> ASGIApp:
        """The HTTP app with the KServe v2 routes of custom-handler models in front."""
        if not self.handler_models.models:
            return app
        return KServeFront(app, self.handler_models, int(self.settings.max_request_bytes),
                           TensorLimits.from_settings(self.settings))

    def add_grpc_services(self, server: aio.Server) -> None:
        """InferenceAPIsService, and ManagementAPIsService where it may be offered."""
        service = self.pipelines.service
        add_inference_service(server, service, self.pipelines, self.handler_models)
        # The management service shares the inference gRPC port, which may face the network
        # (--host); without a token it is only offered while that port stays on loopback.
        host = self.settings.host
        if is_loopback(host) or self.settings.api_token_file is not None:
            add_management_service(server, service, self.settings, self.store,
                                   self.handler_models)
        else:
            log.warning("TorchServe gRPC management service is off: --host %s is not loopback "
                        "and no --api-token-file is set", host)

    def close(self) -> None:
        self.pipelines.close()
        self.handler_models.close()
        if self.owns_cache_dir:
            shutil.rmtree(self.cache_dir, ignore_errors=True)


def build_torchserve(service: InferenceService, settings: Settings,
                     add_model_dir: Callable[[str, Path], None],
                     metrics: Metrics | None = None) -> TorchServeDialect:
    """The TorchServe dialect for one server; call before ``service.start()`` so the store's
    ``.mar`` archives (materialised here, in a private temporary folder) load with the rest."""
    # Under a supervisor the archives are already materialised in its folder (made once, never
    # raced by the workers); this process only reads them and must not remove the folder.
    shared = settings.archive_cache_dir
    cache_dir = shared if shared is not None else Path(tempfile.mkdtemp(prefix="capserve-mar-"))
    limits = ArchiveLimits()
    archives = []
    store_path = Path(settings.model_store)
    for name, model_dir in materialize_archives(store_path, cache_dir, limits,
                                                settings.allow_archive_code):
        add_model_dir(name, model_dir)
        archives.append(name)
    handler_models = start_handler_models(store_path, cache_dir, settings, metrics)
    pipelines = Pipelines(service, settings)
    store = ModelStoreAccess(store_path, cache_dir, limits=limits,
                             allow_archive_code=settings.allow_archive_code,
                             add_model_dir=add_model_dir)
    return TorchServeDialect(
        pipelines=pipelines, store=store,
        routes=torchserve_routes(service, pipelines, settings, handler_models),
        management_app=create_management_app(service, settings, store, handler_models),
        archive_models=archives, cache_dir=cache_dir, settings=settings,
        handler_models=handler_models, owns_cache_dir=shared is None)
