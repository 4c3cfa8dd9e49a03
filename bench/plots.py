"""PNG plots of a sitting: throughput vs concurrency, and latency percentiles."""

from __future__ import annotations

import logging
from pathlib import Path

from bench.schema import Results

logger = logging.getLogger(__name__)


def _pyplot():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    return plt


def _series_key(server: str, client: str, endpoint: str) -> str:
    return f"{server} · {client} · {endpoint}"


def plot_throughput(results: Results, model: str, path: Path) -> Path | None:
    runs = [r for r in results.load if r.model == model]
    if not runs:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    keys = sorted({_series_key(r.server, r.client, r.endpoint) for r in runs})
    for key in keys:
        pts = sorted((r.concurrency, r.throughput_rps) for r in runs
                     if _series_key(r.server, r.client, r.endpoint) == key)
        style = "-" if key.startswith("capserve") else "--"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=key)
    styles = iter([":", "-.", (0, (1, 4)), (0, (5, 5))] * 4)
    for ceil in results.ceiling:
        if ceil.model == model and ceil.runtime == "onnxruntime":
            ax.axhline(ceil.items_per_s, color="grey", linewidth=0.9, linestyle=next(styles),
                       label=f"in-process ONNX Runtime, batch {ceil.batch}")
    ax.set_xscale("log", base=2)
    ticks = sorted({r.concurrency for r in runs})
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.set_yscale("log")
    ax.set_xlabel("client concurrency")
    ax.set_ylabel("requests / s (ceiling: items / s)")
    ax.set_title(f"{model}: throughput vs concurrency")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_latency(results: Results, model: str, path: Path) -> Path | None:
    runs = sorted((r for r in results.load if r.model == model and r.client in ("hey", "wrk")),
                  key=lambda r: (r.concurrency, r.server, r.client))
    if not runs:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    labels = [f"{r.server}\n{r.client} c={r.concurrency}" for r in runs]
    xs = range(len(runs))
    width = 0.27
    for i, (name, attr) in enumerate((("p50", "p50_ms"), ("p90", "p90_ms"), ("p99", "p99_ms"))):
        ax.bar([x + (i - 1) * width for x in xs], [getattr(r, attr) for r in runs], width,
               label=name)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms")
    ax.set_title(f"{model}: /predictions latency percentiles")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(results: Results, img_dir: Path) -> list[Path]:
    written = []
    for model in dict.fromkeys(r.model for r in results.load):
        for fn, stem in ((plot_throughput, "throughput"), (plot_latency, "latency")):
            path = fn(results, model, img_dir / f"{stem}-{model}.png")
            if path is not None:
                written.append(path)
    return written
