"""The sitting's settings, from the command line (``python -m bench --help``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

from bench.servers import REPO_ROOT

CLIENTS = ("hey", "wrk", "perf_analyzer", "grpc")


@dataclass
class Options:
    store: Path = REPO_ROOT / "model_store"
    models: list[str] = field(default_factory=lambda: ["lenet", "resnet18"])
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])
    duration_s: float = 10.0
    batches: list[int] = field(default_factory=lambda: [1, 8, 32])
    ceiling_s: float = 3.0
    clients: list[str] = field(default_factory=lambda: ["hey", "perf_analyzer", "grpc"])
    torchserve: bool = True
    profile: bool = True
    profile_s: float = 15.0
    capserve_max_batch: int = 16
    torchserve_batch: int = 8
    max_delay_ms: int = 5
    smoke: bool = False
    workers_sweep: bool = True  # lenet on --workers 1 too, beside the default auto
    out: Path = REPO_ROOT / "bench" / "results"
    docs: Path | None = REPO_ROOT / "docs" / "benchmarks.md"
    img_dir: Path = REPO_ROOT / "docs" / "img" / "bench"
    cache: Path = REPO_ROOT / ".venv" / "cache"

    @property
    def work(self) -> Path:
        return self.out / "work"


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _clients(text: str) -> list[str]:
    names = _names(text)
    unknown = sorted(set(names) - set(CLIENTS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown client(s) {', '.join(unknown)}; choose from {', '.join(CLIENTS)}")
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="capserve vs TorchServe 0.12 vs the in-process ceiling, same machine, "
                    "same models, same clients; writes docs/benchmarks.md, plots and JSON.")
    p.add_argument("--store", type=Path, default=Options.store,
                   help="default model store (make store); default: %(default)s")
    p.add_argument("--models", type=_names, default=["lenet", "resnet18"],
                   help="models to load-test (resnet18 is exported from random weights once)")
    p.add_argument("--concurrency", type=_ints, default=[1, 8, 32],
                   help="client concurrencies (default 1,8,32)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds per load run (default 10)")
    p.add_argument("--batches", type=_ints, default=[1, 8, 32],
                   help="in-process ceiling batch sizes (default 1,8,32)")
    p.add_argument("--ceiling-seconds", type=float, default=3.0,
                   help="seconds per in-process ceiling point (default 3)")
    p.add_argument("--clients", type=_clients, default=["hey", "perf_analyzer", "grpc"],
                   help=f"load generators among {','.join(CLIENTS)} (default hey,perf_analyzer,grpc)")
    p.add_argument("--skip-torchserve", action="store_true", help="do not start TorchServe")
    p.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    p.add_argument("--no-workers-sweep", action="store_true",
                   help="skip the lenet runs on --workers 1 (compared with --workers auto)")
    p.add_argument("--profile-seconds", type=float, default=15.0)
    p.add_argument("--capserve-max-batch", type=int, default=16,
                   help="capserve max_batch_size for the benchmarked models (default 16)")
    p.add_argument("--torchserve-batch", type=int, default=8,
                   help="TorchServe batchSize (default 8)")
    p.add_argument("--max-delay-ms", type=int, default=5,
                   help="max batching delay for both servers, ms (default 5)")
    p.add_argument("--smoke", action="store_true",
                   help="a few seconds: lenet, concurrency 2, hey + gRPC, no TorchServe, "
                        "no profile; writes the report into --out only")
    p.add_argument("--out", type=Path, default=Options.out,
                   help="results folder (JSON, profile, work files); default: %(default)s")
    p.add_argument("--docs", type=Path, default=Options.docs,
                   help="markdown report to write (default docs/benchmarks.md)")
    p.add_argument("--img-dir", type=Path, default=Options.img_dir)
    p.add_argument("--cache", type=Path, default=Options.cache,
                   help="download cache for the perf_analyzer wheels (default .venv/cache)")
    p.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON",
                   help="only rewrite --docs and the plots from an earlier results JSON")
    p.add_argument("--gpu", action="store_true",
                   help="run the GPU variant instead (same as bench/gpu.sh)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def from_args(args: argparse.Namespace) -> Options:
    opts = Options(
        store=args.store, models=args.models, concurrency=args.concurrency,
        duration_s=args.duration, batches=args.batches, ceiling_s=args.ceiling_seconds,
        clients=args.clients, torchserve=not args.skip_torchserve,
        profile=not args.no_profile, profile_s=args.profile_seconds,
        capserve_max_batch=args.capserve_max_batch, torchserve_batch=args.torchserve_batch,
        max_delay_ms=args.max_delay_ms, smoke=args.smoke, out=args.out, docs=args.docs,
        img_dir=args.img_dir, cache=args.cache, workers_sweep=not args.no_workers_sweep,
    )
    if opts.smoke:
        opts.models = ["lenet"]
        opts.concurrency = [2]
        opts.duration_s = 2.0
        opts.batches = [1, 2]
        opts.ceiling_s = 0.3
        opts.clients = [c for c in opts.clients if c in ("hey", "grpc")] or ["hey", "grpc"]
        opts.torchserve = False
        opts.profile = False
        opts.docs = opts.out / "benchmarks.md"
        opts.img_dir = opts.out / "img"
    return opts
