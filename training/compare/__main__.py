"""``python -m training.compare [--quick]``: run the comparison, write results.json and the report.

The full run trains 5 models x 5 training-set sizes x 3 seeds on one CPU thread (about 30
CPU-minutes). ``--quick`` (the smoke test that ``make test`` runs) trains for a few steps on
1 and 5 digits per class and tests on 100 digits; its numbers mean nothing, only that every
table is produced from the run. Without ``--docs`` a quick run writes under build/.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from training import data as datasets
from training.compare import experiments as ex
from training.compare import report
from training.compare.interpret import explanation_images

QUICK_DIR = Path("build") / "compare-quick"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.compare", description=__doc__)
    p.add_argument("--quick", action="store_true", help="smoke-test sizes (about a minute)")
    p.add_argument("--docs", type=Path, default=None,
                   help="report path (default docs/capsules.md; --quick: build/compare-quick/)")
    p.add_argument("--img-dir", type=Path, default=None,
                   help="plots and results.json (default docs/img/capsules beside the report)")
    p.add_argument("--speed", type=Path, default=None,
                   help="a bench results JSON (python -m bench --out DIR) for the speed table")
    p.add_argument("--capsnet", type=Path, default=Path("checkpoints") / "capsnet.pt",
                   help="the served CapsNet checkpoint, for the explanation grids")
    p.add_argument("--seeds", type=int, default=None, help="override the number of seeds")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite the report from the results.json in --img-dir")
    return p.parse_args(argv)


def paths(args: argparse.Namespace) -> tuple[Path, Path]:
    if args.docs is None:
        docs = QUICK_DIR / "capsules.md" if args.quick else Path("docs") / "capsules.md"
    else:
        docs = args.docs
    img = args.img_dir or (docs.parent / "img" / "capsules")
    return docs, img


def measure(plan: ex.Plan, img_dir: Path, capsnet: Path) -> dict[str, Any]:
    """Every experiment, timed in CPU seconds of this process (one thread)."""
    cpu0, wall0 = time.process_time(), time.monotonic()
    ds = datasets.load("mnist5k")
    test_x, test_y = ds.test_x, ds.test_y
    if plan.test_limit is not None:  # a stratified slice: the test half is sorted by class
        idx = torch.arange(test_x.shape[0]).view(10, -1)[:, :plan.test_limit // 10].flatten()
        test_x, test_y = test_x[idx], test_y[idx]
    biggest, first = max(plan.per_class), plan.seeds[0]
    kept: dict[str, ex.Trained] = {}

    def keep(name: str, k: int, seed: int, model: ex.Trained) -> None:
        if k == biggest and seed == first:
            kept[name] = model

    cpu: dict[str, float] = {}
    t = time.process_time()
    few = ex.few_examples(plan, ds, test_x, test_y, keep)
    cpu["few_examples"] = time.process_time() - t
    t = time.process_time()
    inv = ex.invariance(kept, plan, test_x, test_y)
    cpu["invariance"] = time.process_time() - t
    t = time.process_time()
    pic = ex.picasso(kept, test_x, test_y)
    cpu["picasso"] = time.process_time() - t
    t = time.process_time()
    probe = ex.pose_probe(kept, plan, test_x, test_y)
    traces = {}
    if "capsnet" in kept:
        right = torch.nonzero(kept["capsnet"].scores(test_x).argmax(1) == test_y).flatten()
        right = right[:plan.probe_digits]
        traces = ex.pose_traces(kept["capsnet"], test_x[right], test_y[right], plan.probe_shifts)
    cpu["pose_probe"] = time.process_time() - t
    t = time.process_time()
    img_dir.mkdir(parents=True, exist_ok=True)
    explain = explanation_images(capsnet, img_dir)
    report.picasso_examples(test_x, plan.picasso_examples, img_dir / "picasso_examples.png")
    cpu["interpretability"] = time.process_time() - t
    params = {name: sum(p.numel() for p in m.module.parameters()) for name, m in kept.items()}
    return {
        "plan": plan.as_json(), "few_examples": few, "invariance": inv, "picasso": pic,
        "pose_probe": probe, "pose_traces": traces, "interpretability": explain,
        "parameters": params,
        "input_sides": {name: m.size for name, m in kept.items()},
        "test_digits": int(test_x.shape[0]),
        "cpu_seconds": {**cpu, "total": time.process_time() - cpu0},
        "wall_seconds": time.monotonic() - wall0,
        "platform": {"torch": torch.__version__, "python": platform.python_version(),
                     "machine": platform.machine(), "threads": torch.get_num_threads()},
    }


def served_checkpoints(folder: Path) -> dict[str, Any]:
    """The held-out accuracy each committed default checkpoint recorded when it was trained
    with its own full recipe: what the served models score, beside this run's equal budgets."""
    from training.checkpoint import load_checkpoint

    out: dict[str, Any] = {}
    for name in ex.MODELS:
        path = folder / f"{name}.pt"
        if path.is_file():
            ckpt = load_checkpoint(path)
            prov = ckpt.get("provenance", {})
            out[name] = {"checkpoint": str(path),
                         "test_accuracy": float(ckpt["metrics"]["test_accuracy"]),
                         "epochs": prov.get("epochs"), "augment": prov.get("augment")}
    return out


def run(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    docs, img = paths(args)
    results_path = img / "results.json"
    if args.report_only:
        results = json.loads(results_path.read_text())
    else:
        plan = ex.QUICK if args.quick else ex.FULL
        if args.seeds is not None:
            from dataclasses import replace

            plan = replace(plan, seeds=tuple(range(args.seeds)))
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            results = measure(plan, img, args.capsnet)
        finally:
            torch.set_num_threads(threads)
        results["quick"] = bool(args.quick)
        results_path.write_text(json.dumps(results, indent=1) + "\n")
    speed = report.load_speed(args.speed) if args.speed else results.get("speed")
    if speed is not None:
        results["speed"] = speed
    served = served_checkpoints(args.capsnet.parent)
    if served:
        results["default_checkpoints"] = served
    results_path.write_text(json.dumps(results, indent=1) + "\n")
    report.write(results, docs, img)
    print(f"report: {docs}\nresults: {results_path}\n"
          f"CPU time: {results['cpu_seconds']['total'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
