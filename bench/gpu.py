"""GPU variant (``bench/gpu.sh`` or ``python -m bench --gpu``): ResNet-50 and VGG-16 on one
NVIDIA GPU, batch 1-64, fp32 and fp16, in-process vs through capserve.

Made to run from the repository with a bare ``python3`` holding torch (CUDA), numpy, grpcio
and protobuf, with no network and nothing installed. Which capserve path is measured depends on
what imports there, and each row says which:

- ``capserve core``: ``InferenceService.infer`` -> dynamic batcher -> TorchScript CUDA backend,
  the server's whole path below the transports (needs only ``serving.core``);
- the wire columns, when ``serving.transport.grpc_service`` imports: the same plus the v2 gRPC
  transport on a loopback port, driven by a client in *another process*, so the server's
  process holds only the server (its GIL is not shared with the client):
  ``capserve gRPC`` (raw tensors), ``capserve system shm`` (``--shared-memory system``) and
  ``capserve CUDA shm`` (``--shared-memory cuda``, on a GPU, where it works), all by
  perf_analyzer. perf_analyzer is never downloaded here (no network on a lent machine): it is
  taken from ``--perf-analyzer``, ``PATH`` or the caches the CPU benches fill. Without it the
  plain gRPC column comes from a Python gRPC client in a subprocess and the two shared-memory
  columns are listed as not measured. Wire rows carry MiB/s (input + output tensor bytes).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
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
PATH_SYSTEM_SHM = "capserve system shm"
PATH_CUDA_SHM = "capserve CUDA shm"
# Shared-memory registration sits behind the model-control gate; the bench's server sets it.
TOKEN = "capserve-gpu-bench-token-0123456789"
CLASSES = 1000  # every bench model answers logits [batch, 1000]
PA_CACHES = (  # where bench/perf_analyzer.py and tests/integration/test_perf_analyzer.py put it
    (ROOT / ".venv" / "cache" / "perf_analyzer" / "perf_analyzer",
     ROOT / ".venv" / "cache" / "perf_analyzer_libs"),
    (ROOT / "bench" / "results" / "cache" / "pa" / "tritonclient-2.41.0.data" / "data" / "bin"
     / "perf_analyzer", ROOT / "bench" / "results" / "cache" / "cudart" / "nvidia"
     / "cuda_runtime" / "lib"),
)


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
    client: str = "in-process"
    mib_per_s: float | None = None  # wire rows: input + output tensor bytes per second


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


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    env: dict[str, str]


def find_perf_analyzer(explicit: Path | None) -> tuple[PerfAnalyzer | None, str]:
    """perf_analyzer and the environment it runs in, or None and why. Downloads nothing."""
    found: list[tuple[Path, Path | None]] = []
    if explicit is not None and str(explicit) == "none":
        return None, "--perf-analyzer none"
    if explicit is not None:
        found.append((explicit, explicit.parent))
    on_path = shutil.which("perf_analyzer")
    if on_path:
        found.append((Path(on_path), None))
    found += [(binary, libs) for binary, libs in PA_CACHES]
    for binary, libs in found:
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            continue
        env = dict(os.environ)
        if libs is not None and libs.is_dir():  # the 2.41.0 binary links libcudart.so.12
            env["LD_LIBRARY_PATH"] = f"{libs}:{env.get('LD_LIBRARY_PATH', '')}".rstrip(":")
        ldd = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=env)
        missing = [line.split()[0] for line in ldd.stdout.splitlines() if "not found" in line]
        if missing:
            return None, f"{binary} needs {', '.join(missing)}"
        return PerfAnalyzer(binary, env), ""
    return None, ("perf_analyzer not found (--perf-analyzer, PATH, or the caches of "
                  "bench/perf_analyzer.py and tests/integration/test_perf_analyzer.py)")


async def perf_analyzer_point(pa: PerfAnalyzer, url: str, model: str, batch: int,
                              concurrency: int, seconds: float, shm: str, output_bytes: int,
                              work: Path) -> tuple[float, float, int, str]:
    """(items/s, p50 ms, requests, "") of one perf_analyzer run's last window, or
    (0, nan, 0, why) when it failed. Awaited as a subprocess, so this process's event loop
    keeps serving meanwhile."""
    out_csv = work / f"pa-{model}-b{batch}-c{concurrency}-{shm}.csv"
    cmd = [str(pa.binary), "-m", model, "-u", url, "-i", "grpc", "-b", str(batch),
           "--concurrency-range", f"{concurrency}:{concurrency}",
           # Windows of a request count, not of time: a slow point (CPU, big batch) must
           # still complete requests in every window.
           "--measurement-mode", "count_windows",
           "--measurement-request-count", str(max(2 * concurrency, int(seconds * 50))),
           # The bench wants each point's rate, not perf_analyzer's stability verdict: any
           # three windows pass, and the answer is their average.
           "--stability-percentage", "10000", "--max-trials", "3", "-f", str(out_csv),
           "-H", f"authorization:Bearer {TOKEN}"]
    if shm != "none":
        cmd += ["--shared-memory", shm, "--output-shared-memory-size", str(output_bytes)]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, env=pa.env)
    try:
        raw, _ = await asyncio.wait_for(proc.communicate(), timeout=seconds * 12 + 120)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return 0.0, float("nan"), 0, "perf_analyzer timed out"
    text = raw.decode(errors="replace")
    if proc.returncode != 0 or not out_csv.exists():
        return 0.0, float("nan"), 0, f"perf_analyzer exited {proc.returncode}: {text[-600:]}"
    import csv

    rows = list(csv.DictReader(out_csv.read_text().splitlines()))
    if not rows:
        return 0.0, float("nan"), 0, "perf_analyzer wrote an empty CSV"
    counts = re.findall(r"Request count:\s*(\d+)", text)
    return (float(rows[-1]["Inferences/Second"]), float(rows[-1]["p50 latency"]) / 1e3,
            int(counts[-1]) if counts else 0, "")


def _wire_client_main(spec: dict[str, Any]) -> None:
    """The fallback client (``python -m bench.gpu --wire-client JSON``): raw v2 gRPC from
    ``concurrency`` threads for ``seconds``; prints {"lat": [...], "errors": n, "wall": s}."""
    import grpc

    from serving.generated import grpc_service_pb2 as pb
    from serving.generated import grpc_service_pb2_grpc as pb_grpc

    limit = 256 * 2**20
    channel = grpc.insecure_channel(spec["url"], options=[
        ("grpc.max_send_message_length", limit), ("grpc.max_receive_message_length", limit)])
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    dtype = np.float16 if spec["datatype"] == "FP16" else np.float32
    arr = np.random.default_rng(0).standard_normal(spec["shape"]).astype(dtype)
    request = pb.ModelInferRequest(model_name=spec["model"], inputs=[
        pb.ModelInferRequest.InferInputTensor(name="input", datatype=spec["datatype"],
                                              shape=list(arr.shape))],
        raw_input_contents=[arr.tobytes()])
    for _ in range(3):
        stub.ModelInfer(request, timeout=60)
    lat: list[float] = []
    errors = 0
    lock = threading.Lock()
    deadline = time.perf_counter() + spec["seconds"]

    def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                stub.ModelInfer(request, timeout=60)
            except grpc.RpcError:
                with lock:
                    errors += 1
                continue
            with lock:
                lat.append(time.perf_counter() - t0)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(spec["concurrency"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({"lat": lat, "errors": errors, "wall": time.perf_counter() - start}))


async def python_client_point(url: str, model: str, datatype: str, shape: tuple[int, ...],
                              concurrency: int, seconds: float) -> tuple[list[float], int, float]:
    """(latencies, errors, wall) of the fallback client, run in a subprocess."""
    spec = {"url": url, "model": model, "datatype": datatype, "shape": list(shape),
            "concurrency": concurrency, "seconds": seconds}
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}".rstrip(":")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.gpu", "--wire-client", json.dumps(spec), cwd=str(ROOT),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=seconds * 10 + 120)
    if proc.returncode != 0:
        logger.error("wire client failed: %s", err.decode(errors="replace")[-1500:])
        return [], 1, 1.0
    doc = json.loads(out.decode().strip().splitlines()[-1])
    return list(doc["lat"]), int(doc["errors"]), float(doc["wall"])


async def _start_grpc(service: Any, skipped: list[dict[str, str]]) -> tuple[Any, str | None]:
    """The v2 gRPC transport on a loopback port (shared-memory registration on, with a
    token), or (None, None) when it cannot run here."""
    try:
        from serving.transport.auth import ModelControlGate
        from serving.transport.grpc_service import create_grpc_server

        made = create_grpc_server(service, ModelControlGate(True, TOKEN), 256 * 2**20)
        server = made[0] if isinstance(made, tuple) else made  # (server, begin_shutdown)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        return server, f"127.0.0.1:{port}"
    except Exception as exc:  # ImportError, or generated code newer than grpcio here
        skipped.append({"part": "capserve wire paths",
                        "reason": f"not usable here: {type(exc).__name__}: {exc}"[:300]})
        return None, None


@dataclass
class Wire:
    """How the wire columns are driven in this sitting."""

    url: str
    pa: PerfAnalyzer | None
    cuda: bool  # try --shared-memory cuda
    work: Path


def _wire_modes(wire: Wire) -> list[tuple[str, str]]:
    modes = [(PATH_GRPC, "none")]
    if wire.pa is not None:
        modes.append((PATH_SYSTEM_SHM, "system"))
        if wire.cuda:
            modes.append((PATH_CUDA_SHM, "cuda"))
    return modes


async def _wire_point(wire: Wire, path: str, shm: str, name: str, datatype: str,
                      shape: tuple[int, ...], concurrency: int, seconds: float,
                      skipped: list[dict[str, str]]) -> tuple[int, int, float, float] | None:
    """(requests, errors, items/s, p50 ms) of one wire point; None when a CUDA-shm run did
    not work (noted in ``skipped``: it is measured only where it works)."""
    batch = shape[0]
    if wire.pa is None:
        lat, errors, wall = await python_client_point(wire.url, name, datatype, shape,
                                                      concurrency, seconds)
        return (len(lat) + errors, errors, batch * len(lat) / wall,
                statistics.median(lat) * 1e3 if lat else float("nan"))
    items, p50, requests, why = await perf_analyzer_point(wire.pa, wire.url, name, batch, concurrency,
                                                seconds, shm, batch * CLASSES * 4, wire.work)
    if why and shm == "cuda":
        skipped.append({"part": f"{path} {name} b={batch}", "reason": why[:300]})
        return None
    if why:
        logger.error("%s %s b=%d: %s", path, name, batch, why)
        return 1, 1, 0.0, float("nan")
    return requests, 0, items, p50


async def through_capserve(store: Path, models: list[tuple[str, str, str]], batches: list[int],
                           concurrency: list[int], seconds: float,
                           skipped: list[dict[str, str]], device: str = "cuda",
                           loads: dict[str, float] | None = None,
                           perf_analyzer: Path | None = None,
                           wire_batches: list[int] | None = None) -> list[GpuRun]:
    """models: (served name, arch, dtype). ``loads`` receives each model's load seconds
    (warm-up included). The wire columns run at ``wire_batches`` (default: ``batches``)."""
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
    grpc_server, url = await _start_grpc(service, skipped)
    wire: Wire | None = None
    if url is not None:
        pa, why = find_perf_analyzer(perf_analyzer)
        if pa is None:
            skipped.append({"part": f"{PATH_SYSTEM_SHM} and {PATH_CUDA_SHM}", "reason":
                            f"{why}; {PATH_GRPC} used a Python gRPC client in another process"})
        wire = Wire(url, pa, device.startswith("cuda"), Path(tempfile.mkdtemp(prefix="pa-")))
    runs: list[GpuRun] = []
    counters: dict[str, tuple[float, float]] = {}
    try:
        for name, arch, dtype in models:
            datatype = "FP16" if dtype.startswith("fp16") else "FP32"
            for batch in batches:
                arr = np.random.default_rng(0).standard_normal(
                    (batch, 3, 224, 224)).astype(np.float16 if datatype == "FP16" else np.float32)

                async def core_call(arr: np.ndarray = arr, name: str = name,
                                    datatype: str = datatype) -> None:
                    await service.infer(InferRequest(model_name=name, inputs=[
                        Tensor("input", datatype, arr.shape, arr)]))

                for conc in concurrency:
                    _, counters[name] = _batch_mean(registry, name, counters.get(name, (0, 0)))
                    lat, errors, wall = await _drive(core_call, conc, seconds)
                    mean, counters[name] = _batch_mean(registry, name, counters[name])
                    runs.append(GpuRun(arch, dtype, PATH_CORE, batch, conc, len(lat) + errors,
                                       errors, batch * len(lat) / wall,
                                       statistics.median(lat) * 1e3 if lat else float("nan"),
                                       mean))
                    logger.info("%s %s %s b=%d c=%d: %.0f items/s", arch, dtype, PATH_CORE,
                                batch, conc, runs[-1].items_per_s)
                if wire is None or batch not in (wire_batches or batches):
                    continue
                item_bytes = arr.nbytes // batch + CLASSES * arr.itemsize
                for path, shm in _wire_modes(wire):
                    conc = max(concurrency)
                    _, counters[name] = _batch_mean(registry, name, counters.get(name, (0, 0)))
                    point = await _wire_point(wire, path, shm, name, datatype, arr.shape, conc,
                                              seconds, skipped)
                    mean, counters[name] = _batch_mean(registry, name, counters[name])
                    if point is None:
                        continue
                    requests, errors, items, p50 = point
                    runs.append(GpuRun(arch, dtype, path, batch, conc, requests, errors, items,
                                       p50, mean, "perf_analyzer" if wire.pa else
                                       "python gRPC client", round(items * item_bytes / 2**20,
                                                                   1)))
                    logger.info("%s %s %s b=%d c=%d (%s): %.0f items/s, %.0f MiB/s", arch,
                                dtype, path, batch, conc, runs[-1].client, items,
                                runs[-1].mib_per_s)
    finally:
        if grpc_server is not None:
            await grpc_server.stop(1)
        await service.close()
        if wire is not None:
            shutil.rmtree(wire.work, ignore_errors=True)
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
    p.add_argument("--perf-analyzer", type=Path, default=None,
                   help="perf_analyzer binary for the wire columns (libcudart.so.12 beside it "
                        "or on LD_LIBRARY_PATH); default: PATH, then the benches' caches; "
                        "'none': the Python gRPC client only")
    p.add_argument("--wire-batches", default="",
                   help="request batches of the wire columns (default: every --batches)")
    p.add_argument("--wire-client", default=None, help=argparse.SUPPRESS)
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
                                                          "render": None,
                                                          "perf_analyzer": str(args.perf_analyzer)
                                                          if args.perf_analyzer else None},
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
                runs += asyncio.run(through_capserve(
                    store, served, batches, concurrency, args.seconds, skipped, args.device,
                    loads, args.perf_analyzer,
                    [int(b) for b in args.wire_batches.split(",") if b] or None))
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
    if args.wire_client is not None:  # the fallback wire client, in its own process
        _wire_client_main(json.loads(args.wire_client))
        return 0
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
