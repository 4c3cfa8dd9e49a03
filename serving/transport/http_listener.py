"""One uvicorn server driven from our own event loop, so signal handling and the drain stay ours.

With ``reuse_port`` the listening socket is made here with ``SO_REUSEPORT``: the worker
processes of one supervisor each listen on the same port and the kernel spreads new connections
over them (hashed per connection, so each keep-alive connection stays on one worker).
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
from dataclasses import dataclass

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.errors import ServerNotReady
from serving.transport.errors import classify


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


class AnswerCutRequests:
    """ASGI wrapper: a request still running when the shutdown grace period ends is answered
    503 (the server stopped, not a bug) instead of uvicorn's plain-text 500.

    uvicorn ends such requests by cancelling their tasks; nothing else cancels an ASGI task
    (a client that goes away is seen through ``receive``, see ``disconnect.py``).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if started:  # part of an answer is out: nothing better than closing it
                raise
            await _send_error(send, str(scope.get("path", "")), ServerNotReady(
                "Server is not ready: it shut down before this request finished (the "
                "shutdown grace period ended)"))


async def _send_error(send: Send, path: str, exc: Exception) -> None:
    mapping, message = classify(exc)
    # The v2 routes answer {"error": ...}; the TorchServe ones (and management) their own form.
    doc: dict[str, object] = ({"error": message} if path.startswith("/v2") else
                              {"code": mapping.http_status, "type": mapping.torchserve_type,
                               "message": message})
    body = json.dumps(doc).encode()
    await send({"type": "http.response.start", "status": mapping.http_status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class HttpListener:
    def __init__(self, kind: str, app: ASGIApp, host: str, port: int, grace_s: float,
                 reuse_port: bool = False, limit_concurrency: int | None = None) -> None:
        self.kind = kind
        self._reuse_port = reuse_port
        config = uvicorn.Config(
            AnswerCutRequests(app), host=host, port=port, http="httptools", loop="none", lifespan="off",
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
