"""``model_warmup`` from config.pbtxt: synthetic batches run on every instance before the
version turns READY.

Why: the first run of each batch shape pays one-off costs (cuDNN algorithm search, TorchScript
shape specialization, ONNX Runtime arena growth) that can take far longer than the run itself.
Without warm-up the first clients of a freshly loaded model eat those seconds. Triton's field
meanings hold: ``dims`` exclude the batch dimension, ``batch_size`` is prepended when the model
batches, ``count`` 0 means 1, and ``input_data_file`` names raw little-endian tensor bytes in
the model's ``warmup/`` folder.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from serving.backends import Backend
from serving.core.datatypes import triton_to_numpy
from serving.core.spec import ModelSpec, TensorSpec, WarmupInput

logger = logging.getLogger(__name__)

WarmupSample = tuple[str, int, dict[str, np.ndarray]]  # (name, count, inputs)


def warmup_samples(spec: ModelSpec, model_dir: Path) -> list[WarmupSample]:
    """Build every sample's inputs up front, so a bad sample fails the load with its name
    before any instance has run anything."""
    declared = {i.name: i for i in spec.inputs}
    mbs = spec.max_batch_size
    samples: list[WarmupSample] = []
    for index, warm in enumerate(spec.warmup):
        label = f"model_warmup '{warm.name or index}'"
        if mbs > 0 and not 1 <= warm.batch_size <= mbs:
            raise ValueError(f"{label}: batch_size {warm.batch_size} must be 1.."
                             f"{mbs} (max_batch_size)")
        if mbs == 0 and warm.batch_size > 1:
            raise ValueError(f"{label}: batch_size {warm.batch_size} but the model does not batch")
        given = dict(warm.inputs)
        missing = sorted(set(declared) - set(given))
        unknown = sorted(set(given) - set(declared))
        if missing or unknown:
            raise ValueError(f"{label}: inputs must be exactly the config inputs "
                             f"(missing {missing}, unknown {unknown})")
        rng = np.random.default_rng(index)
        inputs = {name: _tensor(label, name, sample, declared[name], mbs > 0,
                                warm.batch_size, model_dir, rng)
                  for name, sample in warm.inputs}
        samples.append((warm.name or str(index), max(1, warm.count), inputs))
    return samples


def _tensor(label: str, name: str, sample: WarmupInput, declared: TensorSpec, batching: bool,
            batch_size: int, model_dir: Path, rng: np.random.Generator) -> np.ndarray:
    datatype, expected = sample.datatype, declared.datatype
    if datatype != expected:
        raise ValueError(f"{label}: input '{name}' is {datatype} but the config declares {expected}")
    if datatype == "BYTES":
        raise ValueError(f"{label}: input '{name}': BYTES warm-up data is not supported")
    dims = list(sample.dims)
    if any(d < 0 for d in dims):
        raise ValueError(f"{label}: input '{name}' dims {dims} must all be fixed (>= 0)")
    shape = tuple(([batch_size] if batching else []) + dims)
    dtype = triton_to_numpy(datatype)
    if sample.source == "random":
        if dtype.kind == "f":
            return rng.standard_normal(shape).astype(dtype)
        if dtype.kind == "b":
            return rng.integers(0, 2, shape).astype(dtype)
        return rng.integers(0, 100, shape).astype(dtype)  # small: valid for most index inputs
    if sample.source == "file":
        return _from_file(label, name, sample.file, model_dir, shape, dtype, batching)
    return np.zeros(shape, dtype)  # zero_data, or nothing said (Triton's default too)


def _from_file(label: str, name: str, filename: str, model_dir: Path,
               shape: tuple[int, ...], dtype: np.dtype, batching: bool) -> np.ndarray:
    folder = (model_dir / "warmup").resolve()
    path = (folder / filename).resolve()
    if not path.is_relative_to(folder):
        raise ValueError(f"{label}: input '{name}' file {filename!r} is outside {folder}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{label}: input '{name}' file {filename!r}: {exc.strerror}") from None
    total = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) == total:
        return np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    per_sample = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    if batching and len(raw) == per_sample:  # one sample, repeated over the batch
        one = np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype).reshape(shape[1:])
        return np.broadcast_to(one, shape).copy()
    raise ValueError(f"{label}: input '{name}' file {filename!r} holds {len(raw)} bytes; "
                     f"shape {list(shape)} of {dtype} needs {total}")


def run_warmup(backend: Backend, samples: list[WarmupSample], outputs: list[str],
               model: str) -> None:
    """Run every sample ``count`` times on one instance; any failure fails the load."""
    for name, count, inputs in samples:
        start = time.perf_counter()
        for _ in range(count):
            try:
                backend.run(inputs, outputs)
            except Exception as exc:
                raise ValueError(f"model_warmup '{name}' failed on {backend.device}: {exc}") from exc
        logger.info("%s: warm-up '%s' x%d on %s took %.3f s", model, name, count,
                    backend.device, time.perf_counter() - start)
