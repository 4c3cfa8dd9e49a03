"""The in-process ceiling: the store's own ONNX and TorchScript files run with no server.

Each run uses the thread count the server gives a single model instance, so the ratio
capserve / in-process is the serving overhead and nothing else.
"""

from __future__ import annotations

import io
import logging
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.images import ImageSpec, make_png
from bench.schema import CeilingRun, DecodeRun

logger = logging.getLogger(__name__)


def _time_loop(step: Callable[[], object], seconds: float, min_iters: int = 3) -> list[float]:
    for _ in range(2):  # warm-up: allocator, first-call setup, TorchScript's profiling runs
        step()
    laps: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(laps) < min_iters:
        t0 = time.perf_counter()
        step()
        laps.append(time.perf_counter() - t0)
    return laps


def _run(runtime: str, model: str, batch: int, threads: int, laps: list[float]) -> CeilingRun:
    total = sum(laps)
    return CeilingRun(runtime=runtime, model=model, batch=batch, threads=threads,
                      iterations=len(laps), items_per_s=batch * len(laps) / total,
                      p50_ms=statistics.median(laps) * 1e3)


def input_batch(spec: ImageSpec, batch: int, seed: int = 0) -> np.ndarray:
    channels = 1 if spec.mode == "L" else 3
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, channels, spec.height, spec.width), dtype=np.float32)


def onnxruntime_ceiling(model: str, path: Path, spec: ImageSpec, batches: list[int],
                        threads: int, seconds: float) -> list[CeilingRun]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    runs = []
    for batch in batches:
        feed = {input_name: input_batch(spec, batch)}
        laps = _time_loop(lambda feed=feed: session.run(None, feed), seconds)  # type: ignore[misc]
        runs.append(_run("onnxruntime", model, batch, threads, laps))
        logger.info("ceiling onnxruntime %s b=%d: %.0f items/s", model, batch,
                    runs[-1].items_per_s)
    return runs


def torchscript_ceiling(model: str, path: Path, spec: ImageSpec, batches: list[int],
                        threads: int, seconds: float) -> list[CeilingRun]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
        runs = []
        for batch in batches:
            tensor = torch.from_numpy(input_batch(spec, batch))

            def step(tensor: torch.Tensor = tensor) -> object:
                with torch.inference_mode():
                    return module(tensor)

            laps = _time_loop(step, seconds)
            runs.append(_run("torchscript", model, batch, threads, laps))
            logger.info("ceiling torchscript %s b=%d: %.0f items/s", model, batch,
                        runs[-1].items_per_s)
        return runs
    finally:
        torch.set_num_threads(previous)


def decode_rate(name: str, spec: ImageSpec, seconds: float) -> DecodeRun:
    """PNG decode to a numpy array, the first step of every `/predictions` request."""
    from PIL import Image

    payload = make_png(spec)

    def step() -> object:
        with Image.open(io.BytesIO(payload)) as img:
            return np.asarray(img.convert(spec.mode))

    laps = _time_loop(step, seconds, min_iters=20)
    return DecodeRun(image=name, width=spec.width, height=spec.height, mode=spec.mode,
                     png_bytes=len(payload), decodes_per_s=len(laps) / sum(laps))
