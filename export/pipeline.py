"""One checkpoint -> gated artifacts -> a new version in the model store.

Order of work: load and rebuild the checkpoint; export every requested format of every served
model into a staging folder; run the parity gate on each artifact; only if all passed, write
config.pbtxt / labels.txt / export_report.json and the ``.mar``, and move it all into the store.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from export import formats, parity
from export.errors import InvalidInput, ParityFailure
from export.mar import build_mar
from export.model_config import PLATFORMS, Scheduling, build_config, config_text, default_max_batch
from export.source import ServedModel, Source, load_source, served_models
from export.spec import check_name
from export.store import Staging, resolve_version

logger = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "pt2", "mar")
DEFAULT_FORMATS = ("onnx", "torchscript")
TORCHSCRIPT_SUFFIX = "_torchscript"
DECODER_SUFFIX = "_decoder"
DEFAULT_OPSET = 18


@dataclass
class ExportOptions:
    store: Path
    formats: tuple[str, ...] = DEFAULT_FORMATS
    version: str = "next"
    max_batch_size: int | None = None  # None: 32, or 16 for artifacts over 10 MB
    opset: int = DEFAULT_OPSET
    batch_sizes: tuple[int, ...] = parity.BATCH_SIZES
    max_queue_delay_us: int = 2000
    instance_count: int = 1


@dataclass
class ArtifactResult:
    model: str  # store model name (or NAME.mar)
    fmt: str
    method: str
    note: str
    bytes: int
    seconds: float
    gate: parity.GateResult | None
    pt2_gate: parity.GateResult | None = None


@dataclass
class ExportResult:
    name: str
    version: int
    artifacts: list[ArtifactResult] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(g.passed for a in self.artifacts for g in (a.gate, a.pt2_gate) if g is not None)


def parse_formats(text: str) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    unknown = [f for f in wanted if f not in FORMATS]
    if unknown or not wanted:
        raise InvalidInput(f"unknown format(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    if "pt2" in wanted and "onnx" not in wanted:
        raise InvalidInput("pt2 is stored in the ONNX model's version directory: add onnx to --formats")
    return wanted


def _store_names(models: list[ServedModel], fmts: tuple[str, ...]) -> dict[tuple[str, str], str]:
    """(served model, format) -> store model name, for the formats that become store models."""
    out: dict[tuple[str, str], str] = {}
    for m in models:
        if m.role == "decoder":  # one decoder, in the first servable format requested
            fmt = "onnx" if "onnx" in fmts else "torchscript"
            out[(m.name, fmt)] = m.name if fmt == "onnx" else m.name + TORCHSCRIPT_SUFFIX
            continue
        if "onnx" in fmts:
            out[(m.name, "onnx")] = m.name
        if "torchscript" in fmts:
            out[(m.name, "torchscript")] = m.name + TORCHSCRIPT_SUFFIX
    return out


@dataclass(frozen=True)
class ParityInputs:
    """The gate's inputs for one served model: the cases and the eager model's outputs on them."""

    cases: list[parity.Case]
    refs: list[Any]
    notes: list[str]

    def gate(self, m: ServedModel, art: formats.Artifact) -> parity.GateResult:
        return parity.run_gate(m, art, self.cases, self.refs, self.notes)


@dataclass(frozen=True)
class Exported:
    """What exporting one served model to one format yields."""

    model: ServedModel
    fmt: str
    store_name: str | None  # None: only the source of the .mar, never a store model
    path: Path  # the artifact file, in its staged version folder
    result: ArtifactResult
    report_extra: Mapping[str, Any]  # export_report.json keys beyond the gate (the pt2 file)


def export_checkpoint(checkpoint: Path, name: str, opts: ExportOptions) -> ExportResult:
    return export_source(load_source(checkpoint), name, opts)


def export_source(src: Source, name: str, opts: ExportOptions) -> ExportResult:
    start = time.perf_counter()
    _check_options(name, opts)
    models = _models_to_export(src, name, opts.formats)
    names = _store_names(models, opts.formats)
    version = resolve_version(opts.store, sorted(set(names.values())), opts.version) if names else 1
    result = ExportResult(name=name, version=version)
    staging = Staging.create(opts.store)
    try:
        exported = [e for m in models
                    for e in _export_model(src, m, names, staging, version, opts)]
        result.artifacts.extend(e.result for e in exported)
        if not result.passed:
            raise ParityFailure(_failure_message(result), result)
        for e in exported:
            if e.store_name is not None:
                _write_model_files(staging.root / e.store_name, e, opts, src, version)
        mar_sources = [e.path for e in exported if _feeds_mar(e.model, e.fmt, opts.formats)]
        if mar_sources:
            result.artifacts.append(_export_mar(name, models[0], mar_sources[-1], opts, staging))
        result.written = staging.commit(version)
    except BaseException:
        staging.discard()
        raise
    result.seconds = time.perf_counter() - start
    return result


def _check_options(name: str, opts: ExportOptions) -> None:
    check_name(name)
    if opts.max_batch_size is not None and opts.max_batch_size < 1:
        raise InvalidInput("--max-batch-size must be >= 1")
    if opts.store.exists() and not opts.store.is_dir():
        raise InvalidInput(f"--store {opts.store} is not a folder")


def _models_to_export(src: Source, name: str, fmts: tuple[str, ...]) -> list[ServedModel]:
    decoder_model = name + DECODER_SUFFIX
    if "onnx" not in fmts:
        decoder_model += TORCHSCRIPT_SUFFIX
    models = served_models(src, name, decoder_model)
    if "onnx" not in fmts and "torchscript" not in fmts:  # .mar only: the main model alone
        models = [m for m in models if m.role == "main"]
    return models


def _feeds_mar(m: ServedModel, fmt: str, fmts: tuple[str, ...]) -> bool:
    """The .mar carries the main model's TorchScript file."""
    return fmt == "torchscript" and "mar" in fmts and m.role == "main"


def _export_model(src: Source, m: ServedModel, names: dict[tuple[str, str], str],
                  staging: Staging, version: int, opts: ExportOptions) -> list[Exported]:
    """Every format of one served model that the store or the .mar needs, each gated."""
    cases, notes = parity.build_cases(src, m, opts.batch_sizes)
    inputs = ParityInputs(cases, parity.reference_outputs(formats.eager_runner(m.module), cases),
                          notes)
    out: list[Exported] = []
    for fmt in ("onnx", "torchscript"):
        store_name = names.get((m.name, fmt))
        if store_name is None and not _feeds_mar(m, fmt, opts.formats):
            continue
        if store_name is not None:
            vdir = staging.model_dir(store_name) / str(version)
        else:
            vdir = staging.root / "mar-work"
        vdir.mkdir(parents=True, exist_ok=True)
        out.append(_export_one(m, fmt, store_name, vdir, opts, inputs))
    return out


def _export_one(m: ServedModel, fmt: str, store_name: str | None, vdir: Path,
                opts: ExportOptions, inputs: ParityInputs) -> Exported:
    t0 = time.perf_counter()
    pt2_gate: parity.GateResult | None = None
    report_extra: dict[str, Any] = {}
    if fmt == "onnx":
        program = formats.export_program(m) if "pt2" in opts.formats else None
        art = formats.export_onnx(m, vdir / "model.onnx", opts.opset, program)
        if program is not None:
            t1 = time.perf_counter()
            pt2 = formats.export_pt2(m, vdir / "model.pt2", program)
            pt2_gate = inputs.gate(m, pt2)
            report_extra["pt2"] = {"method": pt2.method, "bytes": pt2.path.stat().st_size,
                                   "parity": pt2_gate.as_json()}
            logger.info("%s: pt2 saved and gated in %.1f s", m.name, time.perf_counter() - t1)
    else:
        art = formats.export_torchscript(m, vdir / "model.pt")
    gate = inputs.gate(m, art)
    result = ArtifactResult(
        m.name if fmt == "onnx" else m.name + TORCHSCRIPT_SUFFIX, fmt, art.method, art.note,
        art.path.stat().st_size, time.perf_counter() - t0, gate, pt2_gate,
    )
    return Exported(m, fmt, store_name, art.path, result, report_extra)


def _export_mar(name: str, main: ServedModel, model_pt: Path, opts: ExportOptions,
                staging: Staging) -> ArtifactResult:
    t0 = time.perf_counter()
    mbs = opts.max_batch_size or default_max_batch(model_pt.stat().st_size)
    archive, tool = build_mar(name, model_pt, main.spec, mbs, staging.root)
    staging.archive_path(name)  # registers the archive for the commit
    return ArtifactResult(f"{name}.mar", "mar", tool, "", archive.stat().st_size,
                          time.perf_counter() - t0, None)


def _failure_message(result: ExportResult) -> str:
    lines = []
    for a in result.artifacts:
        for fmt, gate in ((a.fmt, a.gate), ("pt2", a.pt2_gate)):
            if gate is not None and not gate.passed:
                fails = gate.failures()
                more = f" (+{len(fails) - 3} more)" if len(fails) > 3 else ""
                lines.append(f"{a.model} [{fmt}] failed the parity gate: {'; '.join(fails[:3])}{more}")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import onnxscript

    return {"torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxscript": onnxscript.__version__}


def _write_model_files(mdir: Path, e: Exported, opts: ExportOptions, src: Source,
                       version: int) -> None:
    art, spec, gate = e.result, e.model.spec, e.result.gate
    assert e.store_name is not None and gate is not None  # store models are always gated
    sched = Scheduling(opts.max_batch_size or default_max_batch(art.bytes), opts.max_queue_delay_us,
                       opts.instance_count)
    cfg = build_config(e.store_name, e.fmt, spec, sched)
    (mdir / "config.pbtxt").write_text(config_text(cfg))
    if spec.labels:
        (mdir / "labels.txt").write_text("".join(f"{label}\n" for label in spec.labels))
    report = {
        "model": e.store_name, "version": version, "format": e.fmt, "platform": PLATFORMS[e.fmt],
        "artifact": e.path.name, "bytes": art.bytes,
        "method": art.method, "note": art.note, "export_seconds": round(art.seconds, 3),
        "max_batch_size": sched.max_batch_size,
        "source": {"checkpoint": str(src.path), "sha256": src.sha256, "arch": src.arch,
                   "task": src.task, "data": src.data, "role": e.model.role,
                   "metrics": src.checkpoint.get("metrics", {})},
        "parity": gate.as_json(), **e.report_extra,
        "versions": _versions(),
        "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }
    (mdir / str(version) / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
