"""Prometheus endpoint (port 8002): ``GET /metrics`` renders the injected registry."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def create_metrics_app(exposition: Callable[[], bytes]) -> Starlette:
    """``exposition`` renders the registry (``Metrics.exposition``: large integral values such
    as GPU memory bytes are written without exponents, as perf_analyzer's parser needs)."""

    async def metrics(request: Request) -> Response:
        # Collectors read /proc and NVML; keep that off the event loop that serves requests.
        body = await asyncio.to_thread(exposition)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return Starlette(routes=[Route("/metrics", metrics, methods=["GET"])])
