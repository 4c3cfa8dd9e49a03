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
