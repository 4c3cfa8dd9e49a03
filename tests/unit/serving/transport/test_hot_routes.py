"""The inference routes answer with their path parameters, query and body intact; everything
else, and the wrong method on a hot path, still gets the full app's answers (its 404/405
handlers, its other routes)."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from serving.transport.hot_routes import HotRoutes


async def _echo(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"params": request.path_params, "bytes": len(body),
                         "method": request.method, "query": dict(request.query_params),
                         "header": request.headers.get("x-trace", "")})


async def _health(request: Request) -> Response:
    return PlainTextResponse("ok")


async def _not_found(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": f"app says {exc.status_code}"}, status_code=exc.status_code)


def _calls(*calls: tuple[str, str]) -> list[httpx.Response]:
    routes = [Route("/predictions/{model}", _echo, methods=["POST", "PUT"]),
              Route("/predictions/{model}/{version}", _echo, methods=["POST", "PUT"]),
              Route("/v2/models/{model}/infer", _echo, methods=["POST"]),
              Route("/v2/health/live", _health, methods=["GET"])]
    app = HotRoutes(Starlette(routes=routes, exception_handlers={HTTPException: _not_found}),
                    routes)
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://t") as client:
            return [await client.request(method, url, content=b"abc", headers={"x-trace": "t1"})
                    for method, url in calls]

    return asyncio.run(main())


def test_inference_routes_get_their_path_parameters_query_and_body() -> None:
    one, two, v2 = _calls(("POST", "/predictions/lenet?topk=2"), ("PUT", "/predictions/lenet/2"),
                          ("POST", "/v2/models/unet/infer"))
    assert one.status_code == 200
    assert one.json() == {"params": {"model": "lenet"}, "bytes": 3, "method": "POST",
                          "query": {"topk": "2"}, "header": "t1"}
    assert two.json()["params"] == {"model": "lenet", "version": "2"}
    assert two.json()["method"] == "PUT"
    assert v2.json()["params"] == {"model": "unet"}


def test_other_requests_keep_the_full_app() -> None:
    live, wrong_method, missing, too_deep = _calls(
        ("GET", "/v2/health/live"), ("GET", "/predictions/lenet"), ("POST", "/nothing"),
        ("POST", "/predictions/a/b/c"))
    assert live.text == "ok"
    assert (wrong_method.status_code, wrong_method.json()) == (405, {"error": "app says 405"})
    assert (missing.status_code, missing.json()) == (404, {"error": "app says 404"})
    assert too_deep.status_code == 404
