"""The three exporters and, for each, the loader the server itself would use.

* ONNX: ``torch.onnx.export(dynamo=True)`` (the torch.export-based exporter) with a dynamic batch
  axis, dynamic H/W for fully convolutional models, one self-contained file
  (``external_data=False``; every model of the zoo is far below the 2 GB protobuf limit), checked
  with ``onnx.checker`` and run back with ONNX Runtime.
* TorchScript: ``torch.jit.script`` for the project's own modules (it keeps any control flow),
  ``torch.jit.trace`` for torchvision networks, whose scripted forward returns training-time
  namedtuples (GoogLeNet/Inception) while eval-mode tracing gives the plain logits; none of
  them has data-dependent control flow in eval mode. A module that fails to script is traced and
  the report says so. PyTorch marks TorchScript deprecated and warns on every call; the warning
  is left visible on purpose.
* pt2: ``torch.export`` ExportedProgram, the forward-looking format (kept beside the ONNX file).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.export import Dim

from export.errors import ExportFailed
from export.source import ServedModel

logger = logging.getLogger(__name__)

Runner = Callable[[Tensor], list[np.ndarray]]
# Upper bound declared for the symbolic batch dimension; far above any max_batch_size we write.
MAX_EXPORT_BATCH = 1024


@dataclass
class Artifact:
    """An exported file, how it was produced and how to run it back."""

    fmt: str
    path: Path
    runner: Runner
    method: str  # how it was produced, for the report
    note: str = ""


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line[:limit]}{'...' if len(line) > limit else ''}"


def _dynamic_shapes(model: ServedModel) -> tuple[dict[int, Any]]:
    axes: dict[int, Any] = {0: Dim("batch", min=1, max=MAX_EXPORT_BATCH)}
    if model.fully_convolutional:
        axes.update({2: Dim.DYNAMIC, 3: Dim.DYNAMIC})
    return (axes,)


def export_program(model: ServedModel) -> torch.export.ExportedProgram:
    """torch.export with a batch-2 example (a batch of 1 would specialise the batch axis)."""
    try:
        return torch.export.export(model.module, (model.example,),
                                   dynamic_shapes=_dynamic_shapes(model), strict=False)
    except Exception as exc:
        raise ExportFailed(f"{model.name}: torch.export failed: {_first_line(exc)}") from exc


def export_onnx(model: ServedModel, path: Path, opset: int,
                program: torch.export.ExportedProgram | None = None) -> Artifact:
    import onnx  # the ONNX stack is imported only when ONNX is exported

    names = [t.name for t in model.spec.inputs]
    try:
        torch.onnx.export(
            program if program is not None else model.module, (model.example,), str(path),
            dynamo=True, opset_version=opset, input_names=names,
            output_names=model.spec.output_names,
            dynamic_shapes=None if program is not None else _dynamic_shapes(model),
            external_data=False, verbose=False, report=False,
        )
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportFailed(f"{model.name}: ONNX export failed: {_first_line(exc)}") from exc
    return Artifact("onnx", path, ort_runner(path, names[0]), f"torch.onnx.export dynamo opset {opset}")


def ort_runner(path: Path, input_name: str) -> Runner:
    """An ONNX Runtime session on CPU, loaded from the file the way the server loads it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # "could not constant fold CastLike" notices are harmless
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> list[np.ndarray]:
        return [np.asarray(o) for o in session.run(None, {input_name: x.numpy()})]

    return run


def _uses_torchvision(module: nn.Module) -> bool:
    return any(type(m).__module__.startswith("torchvision.") for m in module.modules())


def export_torchscript(model: ServedModel, path: Path) -> Artifact:
    method, note = "script", ""
    scripted: torch.jit.ScriptModule | None = None
    if _uses_torchvision(model.module):
        method = "trace"
        note = "torchvision network: eval-mode trace (no data-dependent control flow)"
    else:
        try:
            scripted = torch.jit.script(model.module)
        except Exception as exc:
            method = "trace"
            note = f"torch.jit.script failed ({_first_line(exc)}); traced instead"
            # A trace freezes control flow: say so loudly; the parity gate (batch 1 and 7, odd
            # sizes) is what then vouches for the traced graph.
            logger.warning("%s: %s", model.name, note)
    try:
        if scripted is None:
            with torch.no_grad():
                scripted = torch.jit.trace(model.module, (model.example,), check_trace=False)
        torch.jit.save(scripted, str(path))
    except Exception as exc:
        raise ExportFailed(f"{model.name}: TorchScript export failed: {_first_line(exc)}") from exc
    return Artifact("torchscript", path, torchscript_runner(path), f"torch.jit.{method}", note)


def _as_list(out: Any) -> list[np.ndarray]:
    if isinstance(out, Tensor):
        return [out.detach().numpy()]
    if isinstance(out, dict):
        return [v.detach().numpy() for v in out.values()]
    return [o.detach().numpy() for o in out]


def torchscript_runner(path: Path) -> Runner:
    loaded = torch.jit.load(str(path), map_location="cpu")
    loaded.eval()

    def run(x: Tensor) -> list[np.ndarray]:
        with torch.inference_mode():
            return _as_list(loaded(x))

    return run


def export_pt2(model: ServedModel, path: Path, program: torch.export.ExportedProgram) -> Artifact:
    try:
        torch.export.save(program, str(path))
    except Exception as exc:
        raise ExportFailed(f"{model.name}: saving the ExportedProgram failed: {_first_line(exc)}") from exc
    loaded = torch.export.load(str(path)).module()

    def run(x: Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            return _as_list(loaded(x))

    return Artifact("pt2", path, run, "torch.export.export + torch.export.save")


def eager_runner(module: nn.Module) -> Runner:
    def run(x: Tensor) -> list[np.ndarray]:
        with torch.no_grad():
            return _as_list(module(x))

    return run
