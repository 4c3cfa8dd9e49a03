"""The lecture models served, in one short sitting (``python -m bench.lecture_speed``).

Starts one capserve on the default model store exactly as ``make serve`` does (no bench
rewrite of any config.pbtxt), checks that every model names the digit of one real 28x28 PNG,
then drives ``hey`` at each concurrency against ``/predictions/MODEL``: the same request body
for every model, so image decode, resize to the model's input side, dynamic batching and ONNX
Runtime are all inside the time and only the network differs. Writes one JSON whose ``load``
records have the bench schema (bench/schema.py LoadRun), which ``python -m training.compare
--report-only --speed FILE`` turns into the speed table of docs/capsules.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from bench import loadgen, machine, servers
from bench.schema import LoadRun

logger = logging.getLogger(__name__)

MODELS = ("lenet", "alexnet", "vgg", "googlenet", "capsnet")
DIGIT = servers.REPO_ROOT / "tests" / "data" / "images" / "digit7.png"
WARMUP_REQUESTS = 20  # the first runs of an ONNX Runtime session are slower than the rest


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _post(url: str, body: bytes) -> dict[str, Any]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        answer: dict[str, Any] = json.loads(resp.read())
        return answer


def warm_up(server: servers.Server, model: str, body: bytes) -> str:
    """Send a few requests one at a time; the top label of the answer (a sanity check)."""
    url = f"{server.http}/predictions/{model}"
    answer: dict[str, Any] = {}
    for _ in range(WARMUP_REQUESTS):
        answer = _post(url, body)
    if "class" in answer:  # a capsule model answers its class beside the capsule lengths
        return str(answer["class"])
    return str(max(answer, key=lambda k: float(answer[k]))) if answer else ""


def measure(server: servers.Server, model: str, concurrency: int, seconds: float,
            body: Path) -> LoadRun:
    """One hey run, with capserve's mean batch size and CPU time per request beside it."""
    before = servers.batch_counters(server, model)
    cpu_before = servers.tree_cpu_seconds(server.proc.pid)
    run = loadgen.run_hey(f"{server.http}/predictions/{model}", body, concurrency, seconds,
                          server.name, model)
    if run.requests:
        cpu = servers.tree_cpu_seconds(server.proc.pid) - cpu_before
        run.server_cpu_us = round(cpu * 1e6 / run.requests, 1)
    after = servers.batch_counters(server, model)
    if after[1] - before[1] > 0:
        run.mean_batch_size = round((after[0] - before[0]) / (after[1] - before[1]), 2)
    return run


def sitting(store: Path, models: list[str], concurrency: list[int], seconds: float,
            work: Path) -> dict[str, Any]:
    started, load_before = _now(), os.getloadavg()[0]
    body = DIGIT.read_bytes()
    server = servers.start_capserve(store, work)  # the server's defaults, as `make serve`
    runs: list[LoadRun] = []
    answers: dict[str, str] = {}
    with servers.running(server):
        for model in models:
            answers[model] = warm_up(server, model, body)
            for conc in concurrency:
                runs.append(measure(server, model, conc, seconds, DIGIT))
    return {
        "schema_version": 1, "kind": "lecture_speed", "started": started, "finished": _now(),
        "machine": {**machine.machine_info(), "load_average_1m_before": round(load_before, 2)},
        "settings": {"store": str(store), "models": models, "concurrency": concurrency,
                     "duration_s": seconds, "client": "hey", "body": str(DIGIT.relative_to(
                         servers.REPO_ROOT)), "server_args": "defaults (as make serve)"},
        "top_label": answers,
        "load": [dataclasses.asdict(r) for r in runs],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.lecture_speed", description=__doc__)
    p.add_argument("--store", type=Path, default=servers.REPO_ROOT / "model_store")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--concurrency", default="1,32")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per hey run")
    p.add_argument("--out", type=Path, default=servers.REPO_ROOT / "bench" / "results"
                   / "lecture-speed.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    missing = [m for m in models if not (args.store / m / "config.pbtxt").is_file()]
    if missing:
        print(f"lecture_speed: {', '.join(missing)} not in {args.store}; run `make store`",
              file=sys.stderr)
        return 2
    if not loadgen.available("hey"):
        print("lecture_speed: hey is not installed (make system-deps)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        result = sitting(args.store, models, [int(c) for c in args.concurrency.split(",")],
                         args.duration, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for run in result["load"]:
        print(f"{run['model']:10s} c={run['concurrency']:<3d} {run['throughput_rps']:8.1f} req/s "
              f"p50 {run['p50_ms']:6.1f} ms p99 {run['p99_ms']:6.1f} ms "
              f"batch {run['mean_batch_size']} errors {run['errors']}")
    print(f"top label of {DIGIT.name}: {result['top_label']}\nresults: {args.out}")
    return 1 if any(r["errors"] for r in result["load"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
