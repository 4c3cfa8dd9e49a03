"""Logging setup: plain text or one JSON object per line, with the current request id.

The request id lives in a ContextVar so every log line written while a request is handled
carries it, whichever module logs. JSON lines are built with ``json.dumps`` so any message,
quotes included, stays valid JSON.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from contextvars import ContextVar

request_id_var: ContextVar[str] = ContextVar("capserve_request_id", default="")
# The span context of the request being handled when tracing is on (serving/tracing.py), kept
# beside the request id so the batcher can hand both on without importing the tracing SDK.
trace_context_var: ContextVar[object | None] = ContextVar("capserve_trace", default=None)


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]


class _RequestIdFilter(logging.Filter):
    def __init__(self, process: str = "") -> None:
        super().__init__()
        self._process = process

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.process_role = self._process
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", "")
        if request_id:
            doc["request_id"] = request_id
        role = getattr(record, "process_role", "")
        if role:
            doc["process"] = role
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        role = getattr(record, "process_role", "")
        if role:
            line = f"[{role}] {line}"
        request_id = getattr(record, "request_id", "")
        return f"{line} [request {request_id}]" if request_id else line


def configure_logging(log_format: str = "text", level: str | int = "INFO",
                      process: str = "") -> None:
    """Route every logger (ours, uvicorn's, grpc's) to stderr in the chosen format; ``process``
    names the supervisor or worker on every line when several processes share one log."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter(process))
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    # uvicorn installs its own handlers only when given a log config; we pass none, so its
    # loggers propagate here. Access logs per request are too costly on the hot path.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
