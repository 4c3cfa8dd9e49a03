"""``python -m bench.reliability``: run the sections, then JSON and docs/reliability.md."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.reliability import options as opts_mod
from bench.reliability import report
from bench.reliability.sections import SECTIONS, Section

logger = logging.getLogger(__name__)


def run_sections(opts: opts_mod.Options) -> list[Section]:
    out = []
    for name in opts.sections:
        if name not in SECTIONS:
            raise SystemExit(f"unknown section {name!r}; choose from {list(SECTIONS)}")
        started = time.monotonic()
        logger.info("section %s ...", name)
        try:
            section = SECTIONS[name](opts)
        except Exception as exc:  # one broken section must not lose the others' figures
            logger.exception("section %s failed", name)
            section = Section(name, error=f"{type(exc).__name__}: {exc}\n"
                                          f"{traceback.format_exc()[-1500:]}")
        section.figures["section_seconds"] = round(time.monotonic() - started, 1)
        for t in section.targets:
            flag = "MET " if t.met else "MISS" if t.met is False else "--  "
            print(f"{flag} {section.name}: {t.name}: {t.measured} ({t.threshold})", flush=True)
        if section.skipped:
            print(f"SKIP {section.name}: {section.skipped}", flush=True)
        out.append(section)
    return out


def main(argv: list[str] | None = None) -> int:
    args = opts_mod.parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if not (args.store / "lenet" / "config.pbtxt").is_file():
        print(f"reliability: model store {args.store} has no lenet; run `make store` first",
              file=sys.stderr)
        return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="capserve-rel-"))
    opts = opts_mod.from_args(args, work)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    t0 = time.monotonic()
    try:
        sections = run_sections(opts)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    doc = report.results(sections, opts, started, time.monotonic() - t0)
    opts.out.mkdir(parents=True, exist_ok=True)
    stamp = started.replace(":", "").replace("-", "")[:15]
    json_path = opts.out / f"reliability-{'quick-' if opts.quick else ''}{stamp}.json"
    json_path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    if opts.docs is not None:
        opts.docs.parent.mkdir(parents=True, exist_ok=True)
        opts.docs.write_text(report.render(doc, json_path))
    print(f"results: {json_path}" + (f"; report: {opts.docs}" if opts.docs else ""))
    missed = [t for s in sections for t in s.targets if t.met is False]
    return 1 if missed or any(s.error for s in sections) else 0
