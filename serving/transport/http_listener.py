"""One uvicorn server driven from our own event loop, so signal handling and the drain stay ours.

With ``reuse_port`` the listening socket is made here with ``SO_REUSEPORT``: the worker
processes of one supervisor each listen on the same port and the kernel spreads new connections
over them (hashed per connection, so each keep-alive connection stays on one worker).
"""

from __future__ import annotations

import asyncio
import math
import socket
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp


@dataclass(frozen=True, slots=True)
class Listener:
    kind: str  # "HTTP", "gRPC", "metrics", "management"
    url: str


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket that other processes may bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class HttpListener:
    def __init__(self, kind: str, app: ASGIApp, host: str, port: int, grace_s: float,
                 reuse_port: bool = False, limit_concurrency: int | None = None) -> None:
        self.kind = kind
        self._reuse_port = reuse_port
        config = uvicorn.Config(
            app, host=host, port=port, http="httptools", loop="none", lifespan="off",
            log_config=None, access_log=False, timeout_graceful_shutdown=math.ceil(grace_s),
            proxy_headers=False,
            server_header=False,
            # Past this many open connections and tasks uvicorn answers 503 at once instead
            # of taking on more work than the process can hold.
            limit_concurrency=limit_concurrency, backlog=2048,
        )
        self.server = uvicorn.Server(config)
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> Listener:
        config = self.server.config
        if not config.loaded:
            config.load()
        self.server.lifespan = config.lifespan_class(config)
        sockets = [reuse_port_socket(config.host, config.port)] if self._reuse_port else None
        await self.server.startup(sockets=sockets)
        if not self.server.started:
            raise OSError(f"{self.kind} listener could not bind {config.host}:{config.port}")
        # main_loop keeps the Date header fresh; it returns once should_exit is set.
        self._ticker = asyncio.create_task(self.server.main_loop())
        sock = self.server.servers[0].sockets[0]
        host, port = sock.getsockname()[:2]
        return Listener(self.kind, f"http://{host}:{port}")

    async def stop(self) -> None:
        """Stop accepting, close idle connections, wait for in-flight requests (up to the grace)."""
        if self._ticker is None:
            return
        self.server.should_exit = True
        await self._ticker
        self._ticker = None
        await self.server.shutdown()
