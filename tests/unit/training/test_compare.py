"""``python -m training.compare --quick`` (the smoke run of ``make compare``): it writes
results.json and a report whose tables hold the numbers of that very run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from training.compare import experiments as ex
from training.compare.report import TITLES, mean_std, pct

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    out = tmp_path_factory.mktemp("compare")
    docs = out / "capsules.md"
    subprocess.run([sys.executable, "-m", "training.compare", "--quick", "--docs", str(docs)],
                   check=True, cwd=ROOT, timeout=600)
    img = out / "img" / "capsules"
    return json.loads((img / "results.json").read_text()), docs.read_text(), img


def _row(report: str, name: str, after: str) -> str:
    """The table row of model ``name`` in the first table after heading text ``after``."""
    section = report.split(after, 1)[1]
    return next(line for line in section.splitlines()
                if line.startswith(f"| {TITLES[name]} |"))


def test_quick_run_measures_every_model_and_writes_its_plots(quick_run) -> None:
    results, report, img = quick_run
    assert results["quick"] is True
    assert set(results["few_examples"]) == set(ex.MODELS)
    assert set(results["invariance"]) == set(results["pose_probe"]) == set(ex.MODELS)
    assert results["cpu_seconds"]["total"] > 0
    for png in ("few_examples.png", "invariance.png", "pose_traces.png", "picasso_examples.png",
                "reconstructions.png", "explanation_0.png"):
        assert (img / png).stat().st_size > 1000, png
        assert f"img/capsules/{png}" in report
    assert "--quick smoke run" in report


def test_report_tables_hold_the_numbers_the_run_wrote(quick_run) -> None:
    results, report, _ = quick_run
    for name, rows in results["few_examples"].items():
        cells = [mean_std(rows[k]) for k in results["plan"]["steps"]]
        assert _row(report, name, "## Few examples") == f"| {TITLES[name]} | {' | '.join(cells)} |"
        inv = results["invariance"][name]["rotation"]
        assert _row(report, name, "**rotation (degrees)**") == (
            f"| {TITLES[name]} | {' | '.join(pct(v) for v in inv.values())} |")
        probe = results["pose_probe"][name]
        assert f"| {probe['shift']['r2']:.3f} |" in _row(report, name, "## Equivariance")
        swap = results["picasso"][name]["swap diagonals"]
        assert f"{pct(swap['still_original'])} / {swap['confidence']:.2f}" in _row(
            report, name, "## The Picasso problem")


def test_verdicts_quote_the_run(quick_run) -> None:
    results, report, _ = quick_run
    few = results["few_examples"]["capsnet"]["1"]["mean"]
    verdict_line = next(line for line in report.splitlines() if line.startswith("| Learns from"))
    assert f"CapsNet {100 * few:.1f} %" in verdict_line
    assert "**not measured**" in report  # no bench sitting was given


def test_transforms_move_the_pixels() -> None:
    import torch

    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10, 10] = 1.0
    assert ex.shift(x, 3, 2)[0, 0, 12, 13] == 1.0
    assert torch.equal(ex.rearrange(ex.rearrange(x, (3, 2, 1, 0)), (3, 2, 1, 0)), x)
    assert ex.rearrange(x, (3, 2, 1, 0))[0, 0, 24, 24] == 1.0
    assert torch.allclose(ex.affine(x, 0.0, 1.0), x, atol=1e-6)
    assert ex.affine(x, 90.0)[0, 0, 10, 10] < 0.5  # the pixel moved


def _bench_json(path: Path, rates: dict[str, float]) -> Path:
    load = [{"server": "capserve", "model": m, "client": "hey", "endpoint": "/predictions",
             "concurrency": c, "duration_s": 8.0, "requests": 100, "errors": 0,
             "throughput_rps": r if c == 32 else r / 2, "p50_ms": 1.5 + c, "p90_ms": 3.0,
             "p99_ms": 4.0 + c, "mean_batch_size": 1.0 if c == 1 else 5.25,
             "server_cpu_us": 1000.0 * (i + 1), "note": ""}
            for i, (m, r) in enumerate(rates.items()) for c in (1, 32)]
    path.write_text(json.dumps({"kind": "lecture_speed", "started": "t0", "load": load,
                                "machine": {"logical_cores": 2}}))
    return path


def test_speed_table_and_verdict_come_from_the_bench_json(tmp_path: Path) -> None:
    from training.compare import report, verdict

    rates = {"lenet": 1000.0, "alexnet": 700.0, "vgg": 600.0, "googlenet": 500.0,
             "capsnet": 450.0}
    res = {"speed": report.load_speed(_bench_json(tmp_path / "b.json", rates))}
    lines = "\n".join(report.speed(res))
    assert "| CapsNet | 2.5 | 5.0 | 450 | 0.45 | 33.5 | 36.0 | 5.2 | 5.00 | 0 |" in lines
    assert "| LeNet-5 | 2.5 | 5.0 | 1000 | 1.00 |" in lines
    name, why = verdict.speed(res)
    # 0.45x LeNet, 0.9x the slowest CNN (googlenet): partly held
    assert name == "partly held" and "0.45x LeNet (1000)" in why and "googlenet (500)" in why
    rates["capsnet"] = 300.0
    res = {"speed": report.load_speed(_bench_json(tmp_path / "c.json", rates))}
    assert verdict.speed(res)[0] == "not held"


def test_a_lead_inside_the_seed_spread_is_not_a_held_claim() -> None:
    from training.compare import verdict

    def row(mean: float, std: float) -> dict[str, float]:
        return {"mean": mean, "std": std}

    few = {n: {"1": row(0.10, 0.0), "5": row(0.30, 0.01)} for n in verdict.CNNS}
    few["lenet"] = {"1": row(0.479, 0.007), "5": row(0.727, 0.02)}
    few["capsnet"] = {"1": row(0.482, 0.026), "5": row(0.729, 0.033)}
    assert verdict.few_examples({"few_examples": few})[0] == "partly held"
    few["capsnet"] = {"1": row(0.60, 0.01), "5": row(0.80, 0.01)}
    assert verdict.few_examples({"few_examples": few})[0] == "held"
