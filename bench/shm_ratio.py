"""System shared memory vs in-process ONNX Runtime, in one sitting (``python -m bench.shm_ratio``).

Measures resnet18 items/s three ways: ONNX Runtime in this process at batch 32 (the ceiling),
perf_analyzer (another process) at batch 8 and concurrency 4 with ``--shared-memory system``,
and the same without shared memory (v2 gRPC raw tensors, HTTP binary data); prints one JSON
object with the rates and the ratios to the ceiling. The model is the bench's random-weight
ResNet-18. The ceiling is measured again around every served run (the server idle) and each
ratio is to the mean of the ceilings just before and after it: on a shared machine the rate
of the same session drifts by more than the differences this bench looks for.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.perf_analyzer import ensure_perf_analyzer
from bench.servers import REPO_ROOT, running, start_capserve
from bench.store import ensure_resnet18

CACHE = REPO_ROOT / "bench" / "results" / "cache"
TOKEN = "capserve-bench-shm-token-0123456789"


def ort_ceiling(model: Path, batch: int, seconds: float, threads: int) -> Callable[[], float]:
    """A function measuring ONNX Runtime's items/s in this process (one session for all)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((batch, 3, 224, 224), dtype=np.float32)
    name = session.get_inputs()[0].name
    session.run(None, {name: x})  # warm-up

    def rate() -> float:
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run(None, {name: x})
            done += batch
        return done / (time.perf_counter() - start)

    return rate


def pa_rate(binary: Path, cudart: Path, url: str, protocol: str, shm: bool,
            seconds: float) -> float:
    cmd = [str(binary), "-m", "resnet18", "-u", url, "-i", protocol, "-b", "8",
           "--concurrency-range", "4", "--measurement-interval", str(int(seconds * 1000)),
           "--stability-percentage", "100", "--max-trials", "5",
           "-H", f"authorization:Bearer {TOKEN}"]
    if shm:
        cmd += ["--shared-memory", "system", "--output-shared-memory-size", str(8 * 1000 * 4)]
    env = {**os.environ, "LD_LIBRARY_PATH": f"{cudart}:{os.environ.get('LD_LIBRARY_PATH', '')}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    out = proc.stdout + proc.stderr
    found = re.findall(r"[Tt]hroughput: ([\d.]+) infer/sec", out)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"perf_analyzer exited {proc.returncode}: {out[-1500:]}")
    return float(found[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    store = ensure_resnet18(CACHE, max_batch_size=32)
    binary, cudart = ensure_perf_analyzer(CACHE)
    result: dict[str, float | str | list[float]] = {"model": "resnet18",
                                                     "cpus": os.cpu_count() or 0}
    ceiling = ort_ceiling(store / "resnet18" / "1" / "model.onnx", 32, args.seconds,
                          args.threads)
    ceilings = [ceiling()]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        token = work / "token"
        token.write_text(TOKEN + "\n")
        token.chmod(0o600)
        server = start_capserve(store, work, extra_args=[
            "--enable-model-control", "--api-token-file", str(token)])
        with running(server):
            for protocol in ("grpc", "http"):
                url = server.grpc_target if protocol == "grpc" else server.http[len("http://"):]
                for shm in (True, False):
                    key = f"pa_{protocol}_{'shm' if shm else 'wire'}_b8_c4"
                    served = pa_rate(binary, cudart, url, protocol, shm, args.seconds)
                    ceilings.append(ceiling())
                    around = (ceilings[-2] + ceilings[-1]) / 2
                    result[key + "_items_s"] = round(served, 2)
                    result[key + "_ratio"] = round(served / around, 3)
    result["ort_batch32_items_s"] = [round(c, 2) for c in ceilings]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
