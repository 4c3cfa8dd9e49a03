"""Command line of ``python -m bench.reliability`` and the options every section reads."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from bench.servers import REPO_ROOT


@dataclass
class Options:
    store: Path
    work: Path
    out: Path
    docs: Path | None
    seed: int
    sections: list[str]
    quick: bool
    corpus_size: int
    concurrency: int
    request_timeout: float
    capacity_seconds: float
    overload_seconds: float
    overload_batch: int
    overload_timeout: float
    max_connections: int
    hang_after: float
    sigterm_load_seconds: float
    swap_seconds: float
    soak_seconds: float
    worker_seconds: float
    memory_mb: int
    rss_kill_mb: int
    load_model: str = "lenet"
    overload_model: str = "capsnet"


ALL = ["corpus", "overload", "sigterm", "swap", "stuck", "soak", "workers"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.reliability", description=(
        "Hostile input, overload, shutdown and soak runs against real capserve servers "
        "(loopback, free ports); writes docs/reliability.md and bench/results/reliability-*.json."))
    p.add_argument("--store", type=Path, default=REPO_ROOT / "model_store")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (a temp dir)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    p.add_argument("--docs", type=Path, default=REPO_ROOT / "docs" / "reliability.md",
                   help="report to write ('-' for none)")
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--sections", default=",".join(ALL), help=f"comma list of {ALL}")
    p.add_argument("--quick", action="store_true",
                   help="every section with tiny counts (under 2 minutes), for developing")
    p.add_argument("--corpus-size", type=int, default=None, help="(10,000; quick 600)")
    p.add_argument("--concurrency", type=int, default=4, help="corpus requests in flight")
    p.add_argument("--request-timeout", type=float, default=10.0)
    p.add_argument("--overload-seconds", type=float, default=None, help="(60; quick 5)")
    p.add_argument("--overload-model", default="capsnet",
                   help="model driven at 10x its capacity: a slow one keeps 10x within the "
                        "reach of one Python client on a small machine")
    p.add_argument("--overload-batch", type=int, default=32, help="items per overload request")
    p.add_argument("--soak-seconds", type=float, default=None, help="(600; quick 15)")
    p.add_argument("--memory-mb", type=int, default=12288,
                   help="address-space limit of each server (its allocations fail past it)")
    p.add_argument("--rss-kill-mb", type=int, default=3072,
                   help="a server whose process tree grows by more than this RSS over its size "
                        "when ready is killed (counted as a crash)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def from_args(args: argparse.Namespace, work: Path) -> Options:
    quick = bool(args.quick)

    def pick(value: float | None, full: float, small: float) -> float:
        return value if value is not None else (small if quick else full)

    return Options(
        store=args.store.resolve(), work=work, out=args.out,
        docs=None if str(args.docs) == "-" else args.docs, seed=args.seed,
        sections=[s.strip() for s in args.sections.split(",") if s.strip()], quick=quick,
        corpus_size=int(pick(args.corpus_size, 10_000, 600)), concurrency=args.concurrency,
        request_timeout=args.request_timeout, capacity_seconds=2.0 if quick else 5.0,
        overload_seconds=pick(args.overload_seconds, 60.0, 5.0),
        overload_batch=args.overload_batch, overload_timeout=30.0, max_connections=1000,
        hang_after=10.0 if not quick else 5.0, sigterm_load_seconds=2.0 if quick else 4.0,
        swap_seconds=3.0 if quick else 8.0, soak_seconds=pick(args.soak_seconds, 600.0, 15.0),
        worker_seconds=3.0 if quick else 8.0, memory_mb=args.memory_mb,
        rss_kill_mb=args.rss_kill_mb, overload_model=args.overload_model)
