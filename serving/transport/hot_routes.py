"""A front for the HTTP app that sends the inference routes straight to their endpoints.

Starlette passes every request through its error and exception middleware and then tries each
route in turn. For the handful of routes that carry inference traffic, that walk cost about as
much as uvicorn's own HTTP handling (measured: a trivial endpoint answered 13-14k req/s through
the full app and 24k req/s this way). The hot routes are the app's own ``Route`` objects, so
path parameters, methods and handlers stay defined in one place; their handlers already turn
every exception into an error response. Anything else, including a hot path with the wrong
method (405), goes through the full app unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

# Inference routes of both dialects on port 8000.
HOT_PATHS = frozenset({
    "/v2/models/{model}/infer",
    "/v2/models/{model}/versions/{version}/infer",
    "/predictions/{model}",
    "/predictions/{model}/{version}",
})


class HotRoutes:
    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.hot = [r for r in routes if isinstance(r, Route) and r.path in HOT_PATHS]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for route in self.hot:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    scope["app"] = self.app
                    await route.handle(scope, receive, send)
                    return
        await self.app(scope, receive, send)
