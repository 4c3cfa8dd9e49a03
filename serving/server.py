"""Wiring of the whole server: core service, HTTP/gRPC/metrics listeners, graceful lifecycle.

``build_server(settings)`` creates everything and binds nothing; ``await start()`` opens the
listeners first (so liveness answers while models load) and then loads the store;
``await stop()`` drains: readiness false at once, listeners stop taking new connections and
calls, queued and in-flight work finishes within the grace period, then the backends close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import tracing
from serving.core.limits import ServiceLimits
from serving.core.metrics import Metrics
from serving.core.repository import ModelRepository
from serving.core.service import InferenceService
from serving.core.validation import TensorLimits
from serving.settings import Settings
from serving.store import read_model_spec
from serving.transport.auth import ModelControlGate, parse_allowed_hosts
from serving.transport.grpc_peers import PeerForwarder, peer_socket
from serving.transport.grpc_service import create_grpc_server
from serving.transport.http_app import create_http_app
from serving.transport.http_listener import HttpListener, Listener
from serving.transport.metrics_http import create_metrics_app
from serving.transport.torchserve.dialect import TorchServeDialect, build_torchserve
from serving.workers.board import LoadBoard, board_path

logger = logging.getLogger(__name__)

SERVER_VERSION = "0.1.0"


class Server:
    def __init__(
        self,
        settings: Settings,
        service: InferenceService,
        registry: CollectorRegistry,
        torchserve: TorchServeDialect,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.registry = registry
        self.listeners: list[Listener] = []
        gate = ModelControlGate(settings.enable_model_control, settings.api_token(),
                                allowed_hosts=parse_allowed_hosts(settings.management_allowed_hosts))
        if settings.enable_model_control and settings.api_token_file is None:
            # `python -m serving` refuses this; an embedding caller gets the warning.
            logger.warning("model control is enabled without --api-token-file: anyone who can "
                           "reach the server can load and unload models")
        grace = settings.shutdown_grace_seconds
        # A worker of a supervisor shares its ports with the other workers and leaves /metrics
        # to the supervisor, which adds up every worker's exposition.
        worker = settings.worker_id >= 0
        self.exposition: Callable[[], bytes] = (
            metrics.exposition if metrics is not None else lambda: generate_latest(registry))
        # The TorchServe routes join the v2 routes; its custom-handler models' v2 routes go
        # in front of them (a name either dialect serves answers the same on both).
        http_app: ASGIApp = Admission(torchserve.http_front(
            create_http_app(service, settings, torchserve.routes, gate=gate)), service, metrics)
        if worker:
            http_app = WorkerHeader(http_app, settings.worker_id)
        concurrency = settings.http_max_concurrency
        self._http = HttpListener("HTTP", http_app, settings.host, settings.http_port, grace,
                                  reuse_port=worker, limit_concurrency=concurrency)
        self._metrics = None if worker else HttpListener(
            "metrics", create_metrics_app(self.exposition), settings.host, settings.metrics_port,
            grace,
        )
        self._management = HttpListener(
            "management", Admission(torchserve.management_app, None, metrics),
            settings.management_host, settings.management_port, grace, reuse_port=worker,
            limit_concurrency=concurrency)
        # Workers of one supervisor share a load board; with forwarding on, each also serves
        # gRPC on a Unix socket of the run folder, where the others send what it should run.
        self.board = LoadBoard.attach(board_path(settings.peer_dir)) if (
            worker and settings.peer_dir) else None
        self._peers = PeerForwarder(
            self.board, settings.worker_id, settings.peer_dir, settings.grpc_max_message_bytes,
        ) if self.board is not None and settings.peer_forwarding else None
        self._grpc, self._grpc_begin_shutdown = create_grpc_server(
            service, gate, settings.grpc_max_message_bytes, reuse_port=worker,
            stream_max_inflight=settings.grpc_stream_max_inflight,
            limits=TensorLimits.from_settings(settings), peers=self._peers,
            worker=settings.worker_id,
        )
        torchserve.add_grpc_services(self._grpc)
        self._grpc_started = False
        self._stopping = False
        self._torchserve = torchserve

    async def start(self) -> None:
        """Bind every listener, then load the model store (liveness answers meanwhile)."""
        await self.open_listeners()
        await self.load_models()

    async def open_listeners(self) -> None:
        s = self.settings
        address = f"{s.host}:{s.grpc_port}"
        port = self._grpc.add_insecure_port(address)
        if self._peers is not None:
            self._grpc.add_insecure_port(f"unix:{peer_socket(s.peer_dir, s.worker_id)}")
        await self._grpc.start()
        self._grpc_started = True
        grpc_host = s.host if ":" not in s.host else f"[{s.host}]"
        self.listeners = [await self._http.start(), Listener("gRPC", f"{grpc_host}:{port}")]
        if self._metrics is not None:
            self.listeners.append(await self._metrics.start())
        self.listeners.append(await self._management.start())

    async def load_models(self) -> None:
        """Load every model of the store; failures are logged per model and the rest serve."""
        await self.service.start()
        failures = self.service.load_failures()
        for name, message in sorted(failures.items()):
            logger.error("model %s failed to load: %s", name, message)

    def _inflight(self) -> int:
        """Requests inside the core now (the gauge the core keeps for the whole server)."""
        return int(self.registry.get_sample_value("capserve_inflight_requests") or 0)

    async def stop(self) -> None:
        """Graceful drain within ``shutdown_grace_seconds``; safe to call more than once."""
        if self._stopping:
            return
        self._stopping = True
        grace = self.settings.shutdown_grace_seconds
        self.service.begin_drain()
        logger.info("draining: readiness is false, %d requests in flight (grace %.0f s)",
                    self._inflight(), grace)
        stops = [self._http.stop(), self.service.drain(grace)]
        if self._grpc_started:
            self._grpc_begin_shutdown()
            stops.append(self._grpc.stop(grace))
        stops.append(self._management.stop())
        try:
            results = await asyncio.wait_for(asyncio.gather(*stops, return_exceptions=True), grace + 5)
            for result in results:
                if isinstance(result, BaseException):
                    logger.error("error while draining", exc_info=result)
        except TimeoutError:
            logger.error("drain did not finish within the grace period; closing anyway")
        logger.info("drained: %d requests still in flight", self._inflight())
        await self.service.close()
        if self._peers is not None:
            await self._peers.close()
        try:
            self._torchserve.close()
        except Exception:
            logger.exception("error while closing the TorchServe dialect")
        tracing.shutdown()  # flush the spans of the drained requests
        # Metrics last: a scraper can watch the drain until the very end.
        if self._metrics is not None:
            with contextlib.suppress(Exception):
                await self._metrics.stop()
        logger.info("stopped")


class Admission:
    """Marks each HTTP request as accepted when it arrives, so a drain that begins while its
    body uploads or its image decodes lets it finish (only later arrivals are refused), and
    counts its answer's status class (TorchServe's Requests2XX/4XX/5XX). It wraps the whole app
    because the hot inference routes skip Starlette's middleware."""

    def __init__(self, app: ASGIApp, service: InferenceService | None,
                 metrics: Metrics | None) -> None:
        self._app, self._service, self._metrics = app, service, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        metrics = self._metrics
        if metrics is not None:
            inner = send

            async def send(message: Message) -> None:
                if message["type"] == "http.response.start":
                    metrics.http_response(int(message["status"]))
                await inner(message)

        if self._service is None:
            await self._app(scope, receive, send)
            return
        with self._service.admission():
            await self._app(scope, receive, send)


class WorkerHeader:
    """Names the worker process that answered in a ``capserve-worker`` response header, so an
    operator (and the tests) can see how connections spread over the workers."""

    def __init__(self, app: ASGIApp, worker_id: int) -> None:
        self._app = app
        self._header = (b"capserve-worker", str(worker_id).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def tagged(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), self._header]
            await send(message)

        await self._app(scope, receive, tagged)


def build_server(
    settings: Settings, service_class: type[InferenceService] = InferenceService,
) -> Server:
    """Create the registry, metrics, repository, core service and the transports (binds nothing)."""
    if not tracing.active():
        tracing.configure()  # before the routes are built: they are wrapped only when it is on
    registry = CollectorRegistry()
    # The machine's gauges (CPU, memory, GPUs) come once from the supervisor, not per worker.
    machine = settings.worker_id < 0
    metrics = Metrics(registry, gpu=machine, host=machine)
    repository = ModelRepository(settings.model_store, reader=read_model_spec,
                                 device=settings.device,
                                 limits=ServiceLimits.from_settings(settings))
    service = service_class(repository, metrics, server_version=SERVER_VERSION)
    # Built before the store loads: it materialises the store's ``.mar`` archives into model
    # directories that the repository then loads with the rest.
    torchserve = build_torchserve(service, settings, repository.add_model_dir, metrics)
    return Server(settings, service, registry, torchserve, metrics=metrics)
