"""The lecture's wishlist for capsules, judged from the numbers of one run.

Each rule is stated in the report next to its verdict, so a reader can check it against the
tables below it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CNNS = ("lenet", "alexnet", "vgg", "googlenet")


def _best_cnn(values: dict[str, float]) -> tuple[str, float]:
    name = max((n for n in values if n in CNNS), key=lambda n: values[n])
    return name, values[name]


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def few_examples(res: dict[str, Any]) -> tuple[str, str]:
    few = res["few_examples"]
    small = [k for k in few["capsnet"] if int(k) <= 5]
    wins = []
    parts = []
    for k in small:
        means = {n: r[k]["mean"] for n, r in few.items()}
        best, value = _best_cnn(means)
        wins.append(means["capsnet"] > value)
        parts.append(f"k={k}: CapsNet {_pct(means['capsnet'])} vs best CNN {best} {_pct(value)}")
    verdict = "held" if all(wins) else "partly held" if any(wins) else "not held"
    return verdict, ("; ".join(parts) + ". Rule: held if CapsNet has the best mean accuracy at "
                     "every size of at most 5 digits per class, partly if at some.")


def accuracy(res: dict[str, Any]) -> tuple[str, str]:
    few = res["few_examples"]
    k = max(few["capsnet"], key=int)
    caps = few["capsnet"][k]
    best, _ = _best_cnn({n: r[k]["mean"] for n, r in few.items()})
    cnn = few[best][k]
    spread = max(caps["std"], cnn["std"], 0.002)
    gap = caps["mean"] - cnn["mean"]
    verdict = "held" if gap > spread else "partly held" if gap > -spread else "not held"
    return verdict, (f"k={k}: CapsNet {_pct(caps['mean'])} ± {_pct(caps['std'])} vs best CNN "
                     f"{best} {_pct(cnn['mean'])} ± {_pct(cnn['std'])}. Rule: held if CapsNet "
                     "leads by more than the larger spread (at least 0.2 points), partly if "
                     "within it.")


def robustness(res: dict[str, Any]) -> tuple[str, str]:
    inv = res["invariance"]

    def moved(name: str) -> float:
        vals = [v for kind in ("shift", "rotation") for key, v in inv[name][kind].items()
                if float(key) != 0]
        return float(np.mean(vals)) if vals else float("nan")

    scores = {n: moved(n) for n in inv}
    best, value = _best_cnn(scores)
    verdict = ("held" if scores["capsnet"] > value + 0.01 else
               "partly held" if scores["capsnet"] > value - 0.01 else "not held")
    return verdict, (f"mean accuracy over the non-zero shifts and rotations: CapsNet "
                     f"{_pct(scores['capsnet'])} vs best CNN {best} {_pct(value)}. Rule: held "
                     "if CapsNet is more than 1 point better, partly if within 1 point.")


def equivariance(res: dict[str, Any]) -> tuple[str, str]:
    probe = res["pose_probe"]
    parts, wins = [], []
    for kind in ("shift", "rotation"):
        r2 = {n: p[kind]["r2"] for n, p in probe.items()}
        best, value = _best_cnn(r2)
        wins.append(r2["capsnet"] > value + 0.02)
        parts.append(f"{kind} R² CapsNet {r2['capsnet']:.3f} vs best CNN {best} {value:.3f}")
    held = sum(wins)
    verdict = "held" if held == 2 else "partly held" if held == 1 else "not held"
    return verdict, ("; ".join(parts) + ". Rule: held if the capsule pose predicts both the "
                     "shift and the angle better (R² > 0.02 higher) than every CNN's features, "
                     "partly if one of them.")


def picasso(res: dict[str, Any]) -> tuple[str, str]:
    pic = res["picasso"]

    def fooled(name: str) -> float:
        return float(np.mean([v["still_original"] for k, v in pic[name].items()
                              if k != "original"]))

    rates = {n: fooled(n) for n in pic}
    lowest_cnn = min(rates[n] for n in rates if n in CNNS)
    verdict = ("held" if rates["capsnet"] < lowest_cnn - 0.05 else
               "partly held" if rates["capsnet"] < lowest_cnn else "not held")
    return verdict, (f"rearranged digits still given their original class: CapsNet "
                     f"{_pct(rates['capsnet'])}, CNNs " +
                     ", ".join(f"{n} {_pct(rates[n])}" for n in rates if n in CNNS) +
                     ". Rule: held if CapsNet is fooled 5 points less often than every CNN, "
                     "partly if less often at all.")


def interpretability(res: dict[str, Any]) -> tuple[str, str]:
    it = res["interpretability"]
    changes = np.array([g["dimension_change"] for g in it["grids"]])  # digits x dims
    strong = int((changes.max(0) > 0.02).sum())
    return "partly held", (
        f"the decoder rebuilds held-out digits from the 16-D pose (pixel MSE "
        f"{it['reconstruction_mse']:.4f}); sweeping one pose dimension over [-0.25, 0.25] "
        f"changes the reconstruction by a mean {changes.mean():.3f} per pixel (largest "
        f"{changes.max():.3f}), and {strong} of {changes.shape[1]} dimensions move it by more "
        "than 0.02 for some digit. What a dimension means is read off the grids by eye and is "
        "not named by the model: partly held, always (there is no numeric rule).")


def speed(res: dict[str, Any]) -> tuple[str, str]:
    sp = (res.get("speed") or {}).get("models") or {}
    if "capsnet" not in sp or not any(n in sp for n in ("lenet", "alexnet", "vgg", "googlenet")):
        return "not measured", "no bench sitting given (`--speed`)."
    c32 = {n: r.get("c32", {}).get("throughput_rps", float("nan")) for n, r in sp.items()}
    c1 = {n: r.get("c1", {}).get("p50_ms", float("nan")) for n, r in sp.items()}
    cnn = [n for n in sp if n in CNNS]
    fastest = max(cnn, key=lambda n: c32[n])
    ratio = c32["capsnet"] / c32[fastest]
    verdict = "held" if ratio >= 0.8 else "partly held" if ratio >= 0.4 else "not held"
    return verdict, (f"c=32: CapsNet {c32['capsnet']:.0f} req/s vs {fastest} "
                     f"{c32[fastest]:.0f} req/s ({ratio:.2f}x); c=1 p50 CapsNet "
                     f"{c1['capsnet']:.1f} ms vs {fastest} {c1[fastest]:.1f} ms. Rule: held at "
                     "0.8x the fastest CNN's served throughput or more, partly from 0.4x.")


RULES = (("Equivariance (pose follows position and angle)", equivariance),
         ("Learns from very few examples (k <= 5 per class)", few_examples),
         ("Beats CNNs in accuracy (400 per class)", accuracy),
         ("Robust to shifts and rotations it never saw", robustness),
         ("Not fooled by rearranged parts (Picasso)", picasso),
         ("Interpretable pose", interpretability),
         ('"Runs blazingly fast" (served)', speed))


def verdicts(res: dict[str, Any]) -> list[str]:
    rows = []
    for label, rule in RULES:
        verdict, why = rule(res)
        rows.append(f"| {label} | **{verdict}** | {why} |")
    return ["## Verdict on the lecture's wishlist", "",
            "| claim | verdict | numbers and rule |", "|---|---|---|", *rows, ""]
