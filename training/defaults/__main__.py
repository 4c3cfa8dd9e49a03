"""``python -m training.defaults --out checkpoints``: train the default models, check their
quality gates, print a summary table and write docs/models.md. Exit status 1 if a gate fails."""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from training.checkpoint import load_checkpoint
from training.defaults import DEFAULT_MODELS, copy_curves, names, train_timed
from training.defaults.report import write_report


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.defaults", description=__doc__)
    p.add_argument("--out", default="checkpoints", help="checkpoint folder")
    p.add_argument("--docs", default="docs", help="where models.md and img/models/ go")
    p.add_argument("--only", nargs="*", default=None, help=f"subset of: {', '.join(names())}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="two batches per phase, no report")
    p.add_argument("--jobs", type=int, default=1,
                   help="train this many models at once, one process and one thread each "
                        "(the weights do not depend on it; progress bars interleave)")
    p.add_argument("--report-only", action="store_true",
                   help="skip training: check the gates of the checkpoints in --out, write the report")
    return p.parse_args(argv)


def run(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    unknown = sorted(set(args.only or []) - set(names()))
    if unknown:
        print(f"error: unknown default model(s) {unknown}; choose from: {', '.join(names())}",
              file=sys.stderr)
        return 2
    out = Path(args.out)
    chosen = [m for m in DEFAULT_MODELS if args.only is None or m.name in args.only]
    results = {}
    if args.report_only:
        for model in chosen:
            ckpt = load_checkpoint(out / f"{model.name}.pt")
            results[model.name] = (ckpt, float(ckpt["provenance"].get("train_seconds", 0.0)))
    elif args.jobs > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            futures = {m.name: pool.submit(train_timed, m, out, args.seed, args.dry_run) for m in chosen}
            results = {name: f.result() for name, f in futures.items()}
    else:
        results = {m.name: train_timed(m, out, args.seed, args.dry_run) for m in chosen}

    print("\nmodel         gate                              value    result   time")
    failed = []
    for model in chosen:
        ckpt, seconds = results[model.name]
        value = ckpt["metrics"].get(model.gate_metric, float("nan"))
        ok = model.passed(ckpt["metrics"])
        if not ok:
            failed.append(model.name)
        op = ">=" if model.higher_is_better else "<="
        gate = f"{model.gate_metric} {op} {model.gate}"
        print(f"{model.name:13s} {gate:33s} {value:8.4f} {'PASS' if ok else 'FAIL':8s} {seconds:6.0f} s")
    if not args.dry_run and args.only is None:
        write_report(DEFAULT_MODELS, out, Path(args.docs))
        copy_curves(out, Path(args.docs) / "img" / "models")
        print(f"\nreport: {Path(args.docs) / 'models.md'}")
    if failed:
        print(f"quality gate FAILED for: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
