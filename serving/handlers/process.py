"""One handler process: ``python -m serving.handlers.process`` (started by ``pool``).

TorchServe's own model loader (the ``ts`` package, installed with the ``torchserve`` extra)
imports the archive's handler from its extracted folder and calls ``initialize(context)``,
so a ``BaseHandler`` subclass, a module-level ``handle`` function and ``module:function``
entry points load exactly as on TorchServe. Each batch arrives in TorchServe's request format
and goes to the entry point; the answers go back per request with the content type and status
the handler set, or one error for the whole batch with TorchServe's code and message.

Frames on the socket (``multiprocessing.connection``): the server sends a JSON header and one
frame per parameter value; the process answers with a JSON header and one frame per answer.
Nothing is unpickled on either side.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

log = logging.getLogger("capserve.handler")
FD_ENV = "CAPSERVE_HANDLER_FD"
SPEC_ENV = "CAPSERVE_HANDLER_SPEC"


def _value(content_type: str, raw: bytes) -> Any:
    """What TorchServe hands a handler: JSON parsed, text decoded, anything else as bytes."""
    try:
        if content_type == "application/json":
            return json.loads(raw.decode("utf-8"))
        if content_type.startswith("text"):
            return raw.decode("utf-8")
    except ValueError:
        pass
    return raw


def _encode(value: Any) -> bytes:
    """TorchServe's serialisation of one answer: bytes as they are, text as UTF-8, anything
    else as indented JSON."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value, indent=2).encode("utf-8")


def _batch(conn: Connection, header: dict[str, Any]) -> list[dict[str, Any]]:
    batch = []
    for req in header["requests"]:
        params = [{"name": p["name"], "contentType": p["content_type"],
                   "value": _value(p["content_type"], conn.recv_bytes())}
                  for p in req["parameters"]]
        batch.append({"requestId": req["id"].encode(), "parameters": params,
                      "headers": [{"name": k.encode(), "value": v.encode()}
                                  for k, v in req["headers"]]})
    return batch


class _Headers(dict[str, Any]):
    """Request headers looked up without regard to case: HTTP names are case-insensitive, and
    capserve's HTTP server hands them over in lower case whatever the client sent."""

    def get(self, key: str, default: Any = None) -> Any:
        return super().get(key.lower(), default) if isinstance(key, str) else default

    def __getitem__(self, key: str) -> Any:
        return super().__getitem__(key.lower())


def _error(conn: Connection, code: int, message: str) -> None:
    conn.send_bytes(json.dumps({"error": {"code": code, "message": message}}).encode())


def _run(service: Any, conn: Connection, header: dict[str, Any]) -> None:
    from ts.service import PredictionException, Service

    batch = _batch(conn, header)
    headers, input_batch, req_ids = Service.retrieve_data_for_inference(batch)
    for processor in headers:
        processor._request_header = _Headers(
            {str(k).lower(): v for k, v in processor._request_header.items()})
    ctx = service.context
    ctx.request_ids = req_ids
    ctx.request_processor = headers
    ctx.metrics.request_ids = req_ids
    try:
        ret = service._entry_point(input_batch, ctx)
    except MemoryError:
        log.exception("out of memory in the handler")
        return _error(conn, 507, "Out of resources")
    except PredictionException as exc:
        log.exception("prediction error in the handler")
        return _error(conn, exc.error_code, exc.message)
    except Exception as exc:  # the handler's own failure fails its batch only
        cuda = "CUDA" in str(exc)
        log.warning("the handler raised", exc_info=True)
        return _error(conn, 507 if cuda else 503, "Out of resources" if cuda
                      else "Prediction failed")
    if not isinstance(ret, list):
        return _error(conn, 503, "Invalid model predict output")
    if len(ret) != len(input_batch):
        return _error(conn, 503, "number of batch response mismatched")
    try:
        bodies = [_encode(value) for value in ret]
    except TypeError:
        log.warning("the handler's answer cannot be serialised", exc_info=True)
        return _error(conn, 503, "Unsupported model output data type.")
    answers = []
    for idx in range(len(ret)):
        status, _phrase = ctx.get_response_status(idx)
        answers.append({"content_type": ctx.get_response_content_type(idx) or "",
                        "status": int(status or 200),
                        "headers": {str(k): str(v) for k, v in
                                    ctx.get_response_headers(idx).items()}})
    conn.send_bytes(json.dumps({"answers": answers}).encode())
    for body in bodies:
        conn.send_bytes(body)


def _load(spec: dict[str, Any]) -> Any:
    import ts
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from ts.model_loader import TsModelLoader

    model_dir = spec["model_dir"]
    os.chdir(model_dir)
    sys.path.insert(0, model_dir)
    metrics = MetricsCacheYamlImpl(str(Path(ts.__file__).parent / "configs" / "metrics.yaml"))
    metrics.initialize_cache()
    metrics.model_name = spec["model_name"]
    return TsModelLoader().load(spec["model_name"], model_dir, spec["handler"], None,
                                int(spec["batch_size"]), spec.get("envelope") or None, True,
                                metrics)


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s handler %(levelname)s %(message)s")
    sock = socket.socket(fileno=int(os.environ[FD_ENV]))
    conn = Connection(sock.detach())
    spec = json.loads(os.environ[SPEC_ENV])
    try:
        service = _load(spec)
    except Exception as exc:
        log.exception("handler %s of model %s failed to load", spec["handler"],
                      spec["model_name"])
        conn.send_bytes(json.dumps({"ready": False,
                                    "error": f"{type(exc).__name__}: {exc}"}).encode())
        return 1
    service.set_cl_socket(None)
    conn.send_bytes(json.dumps({"ready": True}).encode())
    while True:
        try:
            header = json.loads(conn.recv_bytes())
        except EOFError:
            return 0  # the server closed its end: stop
        _run(service, conn, header)


if __name__ == "__main__":
    sys.exit(main())
