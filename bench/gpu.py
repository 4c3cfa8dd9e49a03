"""GPU variant (``bench/gpu.sh`` or ``python -m bench --gpu``): ResNet-50 and VGG-16 on one
NVIDIA GPU, batch 1-64, fp32 and fp16, in-process vs through capserve.

Made to run from the repository with a bare ``python3`` holding torch (CUDA), numpy, grpcio
and protobuf, with no network and nothing installed. Which capserve path is measured depends on
what imports there, and each row says which:

- ``capserve core``: ``InferenceService.infer`` -> dynamic batcher -> TorchScript CUDA backend,
  the server's whole path below the transports (needs only ``serving.core``);
- ``capserve gRPC``: the same plus the v2 gRPC transport (``ModelInfer``, raw tensors) on a
  loopback port, when ``serving.transport.grpc_service`` imports; the client shares the process.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
PATH_DEVICE = "in-process, input on GPU"
PATH_HOST = "in-process, numpy in/out"
PATH_CORE = "capserve core"
PATH_GRPC = "capserve gRPC"


@dataclass
class GpuRun:
    model: str
    dtype: str
    path: str
    batch: int
    concurrency: int
    requests: int
    errors: int
    items_per_s: float
    p50_ms: float
    mean_batch_size: float | None = None


def _time_steps(step: Any, seconds: float, sync: Any) -> list[float]:
    for _ in range(5):
        step()
    sync()
    laps: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(laps) < 5:
        t0 = time.perf_counter()
        step()
        sync()
        laps.append(time.perf_counter() - t0)
    return laps


def in_process(module: Any, model: str, dtype: str, batches: list[int],
               seconds: float, device: str = "cuda") -> list[GpuRun]:
    import torch

    tdtype = torch.float16 if dtype == "fp16" else torch.float32
    runs = []
    for batch in batches:
        x_dev = torch.randn(batch, 3, 224, 224, device=device, dtype=tdtype)
        x_host = x_dev.cpu().numpy()

        def dev_step(x: Any = x_dev) -> Any:
            with torch.inference_mode():
                return module(x)

        def host_step(x: np.ndarray = x_host) -> Any:
            with torch.inference_mode():
                return module(torch.from_numpy(x).to(device)).cpu().numpy()

        for path, step in ((PATH_DEVICE, dev_step), (PATH_HOST, host_step)):
            sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
            laps = _time_steps(step, seconds, sync)
            runs.append(GpuRun(model, dtype, path, batch, 1, len(laps), 0,
                               batch * len(laps) / sum(laps), statistics.median(laps) * 1e3))
    return runs


async def _drive(call: Any, concurrency: int, seconds: float) -> tuple[list[float], int, float]:
    try:
        for _ in range(3):  # warm at the point's concurrency: pinned buffers, connection
            await asyncio.gather(*(call() for _ in range(concurrency)))
    except Exception as exc:  # the row shows the failure instead of losing the sitting
        logger.error("warm-up request failed: %s", exc)
        return [], 1, 1.0
    lat: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                await call()
            except Exception as exc:  # every failure is counted and reported in the table
                errors += 1
                logger.warning("request failed: %s", exc)
                continue
            lat.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return lat, errors, time.perf_counter() - start


def _batch_mean(registry: Any, model: str, before: tuple[float, float]) -> tuple[float | None,
                                                                                  tuple[float, float]]:
    labels = {"model": model, "version": "1"}
    total = registry.get_sample_value("capserve_batch_size_sum", labels) or 0.0
    count = registry.get_sample_value("capserve_batch_size_count", labels) or 0.0
    mean = (total - before[0]) / (count - before[1]) if count > before[1] else None
    return (round(mean, 2) if mean is not None else None), (total, count)


async def through_capserve(store: Path, models: list[tuple[str, str, str]], batches: list[int],
                           concurrency: list[int], seconds: float,
                           skipped: list[dict[str, str]], device: str = "cuda",
                           loads: dict[str, float] | None = None) -> list[GpuRun]:
    """models: (served name, arch, dtype). ``loads`` receives each model's load seconds
    (warm-up included)."""
    from prometheus_client import CollectorRegistry

    from serving.core.metrics import Metrics
    from serving.core.repository import ModelRepository
    from serving.core.service import InferenceService
    from serving.core.types import InferRequest, Tensor
    from serving.store import read_model_spec

    registry = CollectorRegistry()
    repository = ModelRepository(store, reader=read_model_spec, device=device)
    service = InferenceService(repository,
                               Metrics(registry, process=False, gpu=False),
                               server_version="bench")
    await service.start()
    for name, _, _ in models:
        seconds_taken = round(repository.resolve(name).load_seconds, 2)
        logger.info("%s loaded in %.2f s (warm-up included)", name, seconds_taken)
        if loads is not None:
            loads[name] = seconds_taken
    grpc_server: Any = None
    stub: Any = None
    pb: Any = None
    try:
        import grpc

        from serving.generated import grpc_service_pb2
        from serving.generated import grpc_service_pb2_grpc as pb_grpc
        from serving.transport.auth import ModelControlGate
        from serving.transport.grpc_service import create_grpc_server

        pb = grpc_service_pb2
        limit = 256 * 2**20
        made = create_grpc_server(service, ModelControlGate(False, None), limit)
        server = made[0] if isinstance(made, tuple) else made  # (server, begin_shutdown)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        grpc_server = server
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", limit),
                                          ("grpc.max_receive_message_length", limit)])
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
    except Exception as exc:  # ImportError, or generated code newer than grpcio here
        skipped.append({"part": "capserve gRPC path",
                        "reason": f"not usable here: {type(exc).__name__}: {exc}"[:300]})
    runs: list[GpuRun] = []
    counters: dict[str, tuple[float, float]] = {}
    try:
        for name, arch, dtype in models:
            datatype = "FP16" if dtype == "fp16" else "FP32"
            for batch in batches:
                arr = np.random.default_rng(0).standard_normal(
                    (batch, 3, 224, 224)).astype(np.float16 if dtype == "fp16" else np.float32)

                async def core_call(arr: np.ndarray = arr, name: str = name,
                                    datatype: str = datatype) -> None:
                    await service.infer(InferRequest(model_name=name, inputs=[
                        Tensor("input", datatype, arr.shape, arr)]))

                calls: list[tuple[str, int, Any]] = [(PATH_CORE, c, core_call) for c in concurrency]
                if stub is not None and pb is not None:
                    request = pb.ModelInferRequest(
                        model_name=name, inputs=[pb.ModelInferRequest.InferInputTensor(
                            name="input", datatype=datatype, shape=list(arr.shape))],
                        raw_input_contents=[arr.tobytes()])

                    async def grpc_call(request: Any = request) -> None:
                        await stub.ModelInfer(request, timeout=60)

                    calls.append((PATH_GRPC, max(concurrency), grpc_call))
                for path, conc, call in calls:
                    _, counters[name] = _batch_mean(registry, name, counters.get(name, (0, 0)))
                    lat, errors, wall = await _drive(call, conc, seconds)
                    mean, counters[name] = _batch_mean(registry, name, counters[name])
                    runs.append(GpuRun(arch, dtype, path, batch, conc, len(lat) + errors, errors,
                                       batch * len(lat) / wall,
                                       statistics.median(lat) * 1e3 if lat else float("nan"),
                                       mean))
                    logger.info("%s %s %s b=%d c=%d: %.0f items/s", arch, dtype, path, batch,
                                conc, runs[-1].items_per_s)
    finally:
        if grpc_server is not None:
            await grpc_server.stop(1)
        await service.close()
    return runs


def _options(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/gpu.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="resnet50,vgg16")
    p.add_argument("--batches", default="1,2,4,8,16,32,64")
    p.add_argument("--dtypes", default="fp32,fp16")
    p.add_argument("--concurrency", default="1,4",
                   help="concurrent callers through capserve (gRPC uses the largest)")
    p.add_argument("--seconds", type=float, default=1.0, help="seconds per point")
    p.add_argument("--delay-us", type=int, default=1000, help="capserve max queue delay")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="stop starting new models after this many seconds (fits 10 minutes)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    p.add_argument("--img-dir", type=Path, default=ROOT / "docs" / "img" / "bench")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="serve without model_warmup (first runs of each batch shape are timed)")
    p.add_argument("--device", default="cuda", help="cuda (default); cpu only to try the script")
    p.add_argument("--render", type=Path, default=None,
                   help="only re-render the GPU section of --docs from this results JSON")
    return p.parse_args(argv)


def _machine() -> dict[str, Any]:
    import torch

    from bench.machine import machine_info

    info = machine_info()
    info.update({"torch": torch.__version__, "cuda": str(torch.version.cuda),
                 "cudnn": str(torch.backends.cudnn.version())})
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update({"gpu": props.name,
                     "gpu_memory_gib": round(props.total_memory / 2**30, 1)})
    try:
        import onnxruntime as ort

        info["onnxruntime"] = f"{ort.__version__} ({','.join(ort.get_available_providers())})"
    except ImportError:
        info["onnxruntime"] = "absent"
    return info


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.sh: torch sees no CUDA GPU")
    torch.backends.cudnn.benchmark = True  # fixed shapes per point: let cuDNN pick kernels
    started = time.monotonic()
    batches = [int(b) for b in args.batches.split(",")]
    concurrency = [int(c) for c in args.concurrency.split(",")]
    skipped: list[dict[str, str]] = []
    runs: list[GpuRun] = []
    result: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": _machine(), "settings": vars(args) | {"out": str(args.out),
                                                          "docs": str(args.docs),
                                                          "img_dir": str(args.img_dir),
                                                          "render": None},
    }
    from bench.gpu_models import write_onnx, write_torchscript

    ort_cuda = "CUDAExecutionProvider" in result["machine"]["onnxruntime"]
    if not ort_cuda:
        skipped.append({"part": "ONNX Runtime CUDA", "reason":
                        "onnxruntime here has no CUDAExecutionProvider (CPU build)"})
    # Every batch size the batcher can form from these request batches and concurrencies.
    top = max(batches)
    warm = tuple(sorted({b * k for b in batches for k in range(1, max(concurrency) + 1)
                         if b * k <= top})) if args.warmup else ()
    loads: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="capserve-gpu-") as tmp:
        for arch in args.models.split(","):
            if time.monotonic() - started > args.budget_s:
                skipped.append({"part": arch, "reason": "time budget spent"})
                continue
            served: list[tuple[str, str, str]] = []
            store = Path(tmp) / arch
            for dtype in args.dtypes.split(","):
                name, module = write_torchscript(store, arch, dtype, top, args.delay_us,
                                                 args.device, warm)
                runs += in_process(module, arch, dtype, batches, args.seconds, args.device)
                del module
                served.append((name, arch, dtype))
                if ort_cuda:
                    try:
                        served.append((write_onnx(store, arch, dtype, top, args.delay_us,
                                                  warm), arch, f"{dtype} onnx"))
                    except Exception as exc:  # export trouble must not cost the other rows
                        skipped.append({"part": f"ONNX export {arch} {dtype}",
                                        "reason": str(exc)[:300]})
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            try:
                runs += asyncio.run(through_capserve(store, served, batches, concurrency,
                                                     args.seconds, skipped, args.device, loads))
            except Exception as exc:  # e.g. generated protobuf code newer than protobuf here
                logger.exception("capserve path for %s failed", arch)
                skipped.append({"part": f"capserve {arch}",
                                "reason": f"{type(exc).__name__}: {exc}"[:300]})
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    result["runs"] = [dataclasses.asdict(r) for r in runs]
    result["warmup_batches"] = list(warm)
    result["load_seconds"] = loads
    result["skipped"] = skipped
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = _options(argv)
    from bench.gpu_report import render_section, write_plot
    from bench.report import replace_gpu_section

    if args.render is not None:
        result = json.loads(args.render.read_text())
        json_path = args.render
    else:
        result = run(args)
        stamp = result["started"].replace(":", "").replace("-", "")[:15]
        args.out.mkdir(parents=True, exist_ok=True)
        json_path = args.out / f"gpu-{stamp}.json"
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    plots = write_plot(result, args.img_dir)
    section = render_section(result, json_path, args.docs.parent, plots)
    replace_gpu_section(args.docs, section)
    print(section)
    errors = sum(r["errors"] for r in result["runs"])
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
