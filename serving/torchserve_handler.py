"""TorchServe handler for the project's ``.mar`` archives, for users still running TorchServe.

TorchServe (0.12) imports the archive's ``capserve_handler.py`` shim, which delegates to
:class:`CapserveHandler`. It reuses ``serving.tasks`` pre- and post-processing, so TorchServe
and capserve give the same answers for the same archive. Only torch, numpy and Pillow are
imported here (TorchServe's worker has no use for the server's grpc/starlette stack).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from serving.archives.mar import NOT_PARAMETERS, TASK_FILE, labels_from_index
from serving.errors import PayloadTooLarge, ServingError
from serving.tasks.images import Prepared, prepare
from serving.tasks.kinds import Task, TaskResult, task_of
from serving.tasks.options import TaskOptions
from serving.tasks.spec import TaskSpec

log = logging.getLogger(__name__)
DEFAULT_MAX_PIXELS = 25_000_000  # the server's max_image_pixels default


def task_parameters(task: Mapping[str, Any]) -> dict[str, str]:
    """The config.pbtxt ``parameters`` part of ``capserve_task.json`` (all values strings)."""
    return {k: str(v) for k, v in task.items() if k not in NOT_PARAMETERS}


def read_labels(model_dir: Path) -> list[str]:
    """``index_to_name.json`` (TorchServe's ``{"0": "label"}``) as a list, or []."""
    path = model_dir / "index_to_name.json"
    return labels_from_index(json.loads(path.read_text())) if path.is_file() else []


def _payload(row: Mapping[str, Any]) -> bytes:
    value = row.get("data", row.get("body"))
    if value is None:
        fields = ", ".join(sorted(str(k) for k in row)) or "none"
        raise _BadRow(f"no image: send it as the body or as multipart field 'data' "
                      f"(fields received: {fields})")
    if isinstance(value, str):  # KServe v1 / JSON clients send base64 text
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _BadRow("field 'data' is text but not valid base64") from None
    if isinstance(value, dict) and isinstance(value.get("b64"), str):
        return base64.b64decode(value["b64"])
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise _BadRow(f"field 'data' has unsupported type {type(value).__name__}")


_OPTION_KEYS = ("topk", "top_k", "format", "poses", "reconstruction", "probabilities")


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes | bytearray) else str(value)


def _options(row: Mapping[str, Any], headers: Mapping[str, Any]) -> TaskOptions:
    """Options from multipart fields (``-F topk=3``) or request headers; ``Accept`` as well."""
    lowered = {str(k).lower(): v for k, v in headers.items()}
    query = {k: _text(lowered[k]) for k in _OPTION_KEYS if k in lowered}
    query.update({str(k): _text(v) for k, v in row.items() if k in _OPTION_KEYS})
    return TaskOptions.parse(query, _text(lowered.get("accept", "")))


def _headers(context: Any, idx: int) -> Mapping[str, Any]:
    try:
        return context.get_all_request_header(idx) or {}
    except (AttributeError, IndexError, KeyError, TypeError):
        return {}


class _BadRow(Exception):
    pass


class CapserveHandler:
    """TorchServe handler API: ``initialize(context)``, then ``handle(batch, context)``."""

    def __init__(self) -> None:
        self.initialized = False
        self.spec: TaskSpec | None = None
        self.task: Task | None = None
        self.labels: list[str] = []
        self.output_names: list[str] = []
        self.model: Any = None
        self.device: Any = None
        self.max_pixels = DEFAULT_MAX_PIXELS

    def initialize(self, context: Any) -> None:
        import torch

        props = context.system_properties
        model_dir = Path(props.get("model_dir", "."))
        task = json.loads((model_dir / TASK_FILE).read_text())
        name = getattr(context, "model_name", None) or task.get("name", "model")
        self.spec = TaskSpec.from_parameters(name, task_parameters(task))
        self.task = task_of(self.spec)
        self.output_names = [o["name"] for o in task.get("outputs", [])]
        self.labels = read_labels(model_dir)
        gpu = props.get("gpu_id")
        use_cuda = torch.cuda.is_available() and gpu is not None
        self.device = torch.device(f"cuda:{gpu}" if use_cuda else "cpu")
        serialized = context.manifest["model"].get("serializedFile", "model.pt")
        self.model = torch.jit.load(str(model_dir / serialized), map_location=self.device)
        self.model.eval()
        self.max_pixels = int(os.environ.get("CAPSERVE_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS))
        self.initialized = True
        log.info("capserve handler ready: %s (%s) on %s", name, self.spec.task, self.device)

    def _forward(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        import torch

        with torch.inference_mode():
            out = self.model(torch.from_numpy(batch).to(self.device))
        if isinstance(out, dict):
            values = [out[k] for k in self.output_names] if self.output_names else list(
                out.values())
        elif isinstance(out, list | tuple):
            values = list(out)
        else:
            values = [out]
        names = self.output_names or [f"output{i}" for i in range(len(values))]
        return {n: v.detach().float().cpu().numpy() for n, v in zip(names, values, strict=False)}

    def handle(self, data: list[Mapping[str, Any]], context: Any) -> list[Any]:
        """One answer per request of the batch; a bad image fails only its own request."""
        if not self.initialized or self.spec is None or self.task is None:
            self.initialize(context)
        assert self.spec is not None and self.task is not None
        answers: list[Any] = [None] * len(data)
        ready: list[tuple[int, Prepared, TaskOptions]] = []
        for idx, row in enumerate(data):
            try:
                options = _options(row, _headers(context, idx))
                ready.append((idx, prepare(self.spec, _payload(row), self.max_pixels), options))
            except (ServingError, _BadRow) as exc:
                answers[idx] = self._error(context, idx, exc)
        # Same-size inputs run as one batch (fully convolutional models may differ in size).
        groups: dict[tuple[int, ...], list[tuple[int, Prepared, TaskOptions]]] = {}
        for item in ready:
            groups.setdefault(item[1].tensor.shape, []).append(item)
        for items in groups.values():
            outputs = self._forward(np.stack([p.tensor for _, p, _ in items]))
            for row_i, (idx, prepared, options) in enumerate(items):
                try:
                    wanted = self.task.wanted(self.spec.model, list(outputs), options)
                    mine = {k: outputs[k][row_i] for k in wanted}
                    result = self.task.render(self.spec, self.labels, prepared, mine, options)
                except ServingError as exc:
                    answers[idx] = self._error(context, idx, exc)
                    continue
                answers[idx] = self._reply(context, idx, result)
        return answers

    @staticmethod
    def _reply(context: Any, idx: int, result: TaskResult) -> bytes:
        if hasattr(context, "set_response_content_type"):
            context.set_response_content_type(idx, result.content_type)
        return result.body

    @staticmethod
    def _error(context: Any, idx: int, exc: Exception) -> bytes:
        status = 413 if isinstance(exc, PayloadTooLarge) else 400
        if hasattr(context, "set_response_status"):
            context.set_response_status(status, str(exc), idx)
        return json.dumps({"code": status, "type": type(exc).__name__,
                           "message": str(exc)}).encode()
