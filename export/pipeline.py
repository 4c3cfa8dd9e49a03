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


def export_checkpoint(checkpoint: Path, name: str, opts: ExportOptions) -> ExportResult:
    return export_source(load_source(checkpoint), name, opts)


def export_source(src: Source, name: str, opts: ExportOptions) -> ExportResult:
    start = time.perf_counter()
    check_name(name)
    fmts = opts.formats
    if opts.max_batch_size is not None and opts.max_batch_size < 1:
        raise InvalidInput("--max-batch-size must be >= 1")
    if opts.store.exists() and not opts.store.is_dir():
        raise InvalidInput(f"--store {opts.store} is not a folder")
    servable = "onnx" in fmts or "torchscript" in fmts
    decoder_model = name + DECODER_SUFFIX
    if "onnx" not in fmts:
        decoder_model += TORCHSCRIPT_SUFFIX
    models = served_models(src, name, decoder_model)
    if not servable:  # .mar only: the archive carries the main model alone
        models = [m for m in models if m.role == "main"]
    names = _store_names(models, fmts)
    version = resolve_version(opts.store, sorted(set(names.values())), opts.version) if names else 1
    result = ExportResult(name=name, version=version)
    staging = Staging.create(opts.store)
    try:
        mar_source: Path | None = None
        staged: list[tuple[str, str, ServedModel, ArtifactResult, dict[str, Any]]] = []
        for m in models:
            cases, notes = parity.build_cases(src, m, opts.batch_sizes)
            refs = parity.reference_outputs(formats.eager_runner(m.module), cases)
            for fmt in ("onnx", "torchscript"):
                store_name = names.get((m.name, fmt))
                need_ts_for_mar = fmt == "torchscript" and "mar" in fmts and m.role == "main"
                if store_name is None and not need_ts_for_mar:
                    continue
                if store_name is not None:
                    vdir = staging.model_dir(store_name) / str(version)
                else:
                    vdir = staging.root / "mar-work"
                vdir.mkdir(parents=True, exist_ok=True)
                extra: dict[str, Any] = {}
                art_result = _export_one(m, fmt, vdir, opts, cases, refs, notes, extra)
                result.artifacts.append(art_result)
                if need_ts_for_mar:
                    mar_source = vdir / "model.pt"
                if store_name is not None:
                    staged.append((store_name, fmt, m, art_result, extra))
        if not result.passed:
            raise ParityFailure(_failure_message(result), result)
        for store_name, fmt, m, art, extra in staged:
            mbs = opts.max_batch_size or default_max_batch(art.bytes)
            sched = Scheduling(mbs, opts.max_queue_delay_us, opts.instance_count)
            _write_model_files(staging.root / store_name, store_name, fmt, m, art, extra, sched,
                               src, version)
        if "mar" in fmts and mar_source is not None:
            t0 = time.perf_counter()
            main = models[0]
            mbs = opts.max_batch_size or default_max_batch(mar_source.stat().st_size)
            archive, tool = build_mar(name, mar_source, main.spec, mbs, staging.root)
            staging.archive_path(name)
            result.artifacts.append(ArtifactResult(f"{name}.mar", "mar", tool, "",
                                                   archive.stat().st_size, time.perf_counter() - t0,
                                                   None))
        result.written = staging.commit(version)
    except BaseException:
        staging.discard()
        raise
    result.seconds = time.perf_counter() - start
    return result


def _export_one(m: ServedModel, fmt: str, vdir: Path, opts: ExportOptions, cases: list[parity.Case],
                refs: list[Any], notes: list[str], extra: dict[str, Any]) -> ArtifactResult:
    t0 = time.perf_counter()
    pt2_gate: parity.GateResult | None = None
    if fmt == "onnx":
        program = formats.export_program(m) if "pt2" in opts.formats else None
        art = formats.export_onnx(m, vdir / "model.onnx", opts.opset, program)
        if program is not None:
            t1 = time.perf_counter()
            pt2 = formats.export_pt2(m, vdir / "model.pt2", program)
            pt2_gate = parity.run_gate(m, pt2, cases, refs, notes)
            extra["pt2"] = {"method": pt2.method, "bytes": pt2.path.stat().st_size,
                            "parity": pt2_gate.as_json()}
            logger.info("%s: pt2 saved and gated in %.1f s", m.name, time.perf_counter() - t1)
    else:
        art = formats.export_torchscript(m, vdir / "model.pt")
    gate = parity.run_gate(m, art, cases, refs, notes)
    return ArtifactResult(
        m.name if fmt == "onnx" else m.name + TORCHSCRIPT_SUFFIX, fmt, art.method, art.note,
        art.path.stat().st_size, time.perf_counter() - t0, gate, pt2_gate,
    )


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


def _write_model_files(mdir: Path, store_name: str, fmt: str, m: ServedModel, art: ArtifactResult,
                       extra: dict[str, Any], sched: Scheduling, src: Source, version: int) -> None:
    cfg = build_config(store_name, fmt, m.spec, sched)
    (mdir / "config.pbtxt").write_text(config_text(cfg))
    if m.spec.labels:
        (mdir / "labels.txt").write_text("".join(f"{label}\n" for label in m.spec.labels))
    assert art.gate is not None
    report = {
        "model": store_name, "version": version, "format": fmt, "platform": PLATFORMS[fmt],
        "artifact": "model.onnx" if fmt == "onnx" else "model.pt", "bytes": art.bytes,
        "method": art.method, "note": art.note, "export_seconds": round(art.seconds, 3),
        "max_batch_size": sched.max_batch_size,
        "source": {"checkpoint": str(src.path), "sha256": src.sha256, "arch": src.arch,
                   "task": src.task, "data": src.data, "role": m.role,
                   "metrics": src.checkpoint.get("metrics", {})},
        "parity": art.gate.as_json(), **extra,
        "versions": _versions(),
        "created": dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
    }
    (mdir / str(version) / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
