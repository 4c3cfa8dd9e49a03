"""Peer forwarding on and off, in one sitting (``python -m bench.forwarding_ab``).

Two capserve servers with the default ``--workers auto`` run side by side on one store, one with
``--no-peer-forwarding``; perf_analyzer (one process, so one gRPC connection) drives each in
turn, A B B A per round, for every model and protocol asked. HTTP is the control: perf_analyzer
opens one connection per concurrent request there, so the kernel already spreads them and
forwarding (gRPC only) should change nothing. Prints items/s per side and the ratio on/off.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.perf_analyzer import ensure_perf_analyzer
from bench.servers import REPO_ROOT, Server, running, start_capserve
from bench.store import ensure_resnet18

CACHE = REPO_ROOT / "bench" / "results" / "cache"


def _store(work: Path, models: list[str]) -> Path:
    store = work / "model_store"
    store.mkdir()
    for model in models:
        source = (ensure_resnet18(CACHE, max_batch_size=32) if model == "resnet18"
                  else REPO_ROOT / "model_store") / model
        shutil.copytree(source, store / model)
    return store


def _items_s(binary: Path, cudart: Path, server: Server, protocol: str, model: str,
             batch: int, concurrency: int, seconds: float) -> float:
    url = server.grpc_target if protocol == "grpc" else server.http[len("http://"):]
    cmd = [str(binary), "-m", model, "-u", url, "-i", protocol, "-b", str(batch),
           "--concurrency-range", str(concurrency),
           "--measurement-interval", str(int(seconds * 1000)),
           "--stability-percentage", "100", "--max-trials", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "LD_LIBRARY_PATH": str(cudart)})
    found = re.findall(r"Throughput: ([\d.]+) infer/sec", proc.stdout)
    if proc.returncode != 0 or not found:
        raise RuntimeError(f"perf_analyzer exited {proc.returncode}: {proc.stdout[-1500:]}"
                           f"{proc.stderr[-500:]}")
    return float(found[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--cells", default="lenet:1:16,resnet18:8:4",
                        help="model:batch:concurrency, comma-separated")
    parser.add_argument("--protocols", default="grpc,http")
    args = parser.parse_args()
    cells = [(m, int(b), int(c)) for m, b, c in (x.split(":") for x in args.cells.split(","))]
    protocols = args.protocols.split(",")
    binary, cudart = ensure_perf_analyzer(CACHE)
    result: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        store = _store(work, sorted({m for m, _, _ in cells}))
        on = start_capserve(store, work, name="forwarding-on")
        with running(on):
            off = start_capserve(store, work, name="forwarding-off",
                                 extra_args=["--no-peer-forwarding"])
            with running(off):
                for model, batch, conc in cells:
                    for protocol in protocols:
                        rates: dict[str, list[float]] = {"on": [], "off": []}
                        for _ in range(args.rounds):
                            for side in ("on", "off", "off", "on"):
                                server = on if side == "on" else off
                                rates[side].append(_items_s(binary, cudart, server, protocol,
                                                            model, batch, conc, args.seconds))
                        key = f"{model}_b{batch}_c{conc}_{protocol}"
                        result[key] = {
                            "on_items_s": [round(r, 1) for r in rates["on"]],
                            "off_items_s": [round(r, 1) for r in rates["off"]],
                            "ratio_on_off": round(statistics.mean(rates["on"])
                                                  / statistics.mean(rates["off"]), 3)}
                        print(key, json.dumps(result[key]), flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
