"""Two commits of capserve side by side, in one sitting (``python -m bench.ab_commits``).

A change on the hot path is judged by a ratio against the code before it, measured in the same
sitting: this machine is shared and its speed drifts by more than most changes move it. Each
commit is checked out in its own git worktree and served by this venv on the same model store
(lenet from the default store, resnet18 from random weights as the main bench builds it). The
runs interleave A B B A ... so a drift in machine load hits both sides alike; each run is one
``hey`` load of ``/predictions/MODEL`` (image decode, resize, dynamic batching, ONNX Runtime).
Prints (and with ``--out`` writes) one JSON object: every run, and per model the median req/s of each side and B/A.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

from bench import loadgen, servers, store

IMAGES = servers.REPO_ROOT / "tests" / "data" / "images"
BODIES = {"lenet": IMAGES / "digit7.png", "resnet18": IMAGES / "photo.png"}


def worktree(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(servers.REPO_ROOT), "worktree", "add", "--detach",
                    str(where), rev], check=True, capture_output=True)
    return where


def drop_worktree(where: Path) -> None:
    subprocess.run(["git", "-C", str(servers.REPO_ROOT), "worktree", "remove", "--force",
                    str(where)], check=False, capture_output=True)


def build_store(default_store: Path, cache: Path, work: Path) -> Path:
    """lenet and resnet18 side by side (links, nothing copied)."""
    out = work / "ab_store"
    out.mkdir()
    (out / "lenet").symlink_to((default_store / "lenet").resolve())
    resnet = store.ensure_resnet18(cache)
    (out / "resnet18").symlink_to((resnet / "resnet18").resolve())
    return out


def warm(server: servers.Server, model: str) -> None:
    body = BODIES[model].read_bytes()
    for _ in range(10):
        req = urllib.request.Request(f"{server.http}/predictions/{model}", data=body,
                                             headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()


def sitting(base: str, head: str, models: list[str], rounds: int, seconds: float,
            concurrency: int, work: Path) -> dict[str, Any]:
    trees = {"A": worktree(base, work / "A"), "B": worktree(head, work / "B")}
    ab_store = build_store(servers.REPO_ROOT / "model_store", servers.REPO_ROOT / ".venv" / "cache",
                           work)
    started: dict[str, servers.Server] = {}
    runs: list[dict[str, Any]] = []
    try:
        for side, tree in trees.items():
            started[side] = servers.start_capserve(ab_store, work, name=side, tree=tree)
            for model in models:
                warm(started[side], model)
        order = [("A", "B"), ("B", "A")]
        for r in range(rounds):
            for model in models:
                for side in order[r % 2]:
                    run = loadgen.run_hey(f"{started[side].http}/predictions/{model}",
                                          BODIES[model], concurrency, seconds, side, model)
                    runs.append({"side": side, "model": model, "round": r,
                                 "rps": run.throughput_rps, "p50_ms": run.p50_ms,
                                 "errors": run.errors, "load1": round(os.getloadavg()[0], 2)})
    finally:
        for server in started.values():
            server.stop()
        for tree in trees.values():
            drop_worktree(tree)
    summary: dict[str, Any] = {}
    for model in models:
        med = {side: statistics.median(x["rps"] for x in runs
                                       if x["side"] == side and x["model"] == model)
               for side in ("A", "B")}
        summary[model] = {"A_rps": round(med["A"], 1), "B_rps": round(med["B"], 1),
                          "B_over_A": round(med["B"] / med["A"], 3)}
    return {"A": base, "B": head, "concurrency": concurrency, "seconds": seconds,
            "runs": runs, "summary": summary}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD~1", help="commit A (default HEAD~1)")
    parser.add_argument("--head", default="HEAD", help="commit B (default HEAD)")
    parser.add_argument("--models", default="lenet,resnet18")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--out", type=Path, help="also write the JSON here (the first run's "
                        "resnet18 export prints its own table on stdout)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        result = sitting(args.base, args.head, args.models.split(","), args.rounds,
                         args.seconds, args.concurrency, Path(tmp))
    text = json.dumps(result, indent=1)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
