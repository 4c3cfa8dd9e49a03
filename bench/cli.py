"""``python -m bench``: one sitting, then JSON, docs/benchmarks.md and plots."""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from bench import options as opts_mod
from bench.plots import write_plots
from bench.report import existing_gpu_section, render
from bench.schema import Results, load_results
from bench.sitting import run_sitting
from bench.targets import ratios_and_targets


def _write_report(results: Results, json_path: Path, opts: opts_mod.Options) -> None:
    plots = write_plots(results, opts.img_dir)
    if opts.docs is not None:
        opts.docs.parent.mkdir(parents=True, exist_ok=True)
        opts.docs.write_text(render(results, json_path, opts.docs, plots,
                                    existing_gpu_section(opts.docs)))


def main(argv: list[str] | None = None) -> int:
    args = opts_mod.parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.gpu:
        from bench.gpu import main as gpu_main

        return gpu_main([])
    opts = opts_mod.from_args(args)
    if args.render is not None:
        results = load_results(args.render)
        results.ratios, results.targets = ratios_and_targets(results)
        _write_report(results, args.render, opts)
        return 0
    if not opts.store.is_dir():
        print(f"bench: model store {opts.store} does not exist; run `make store` first",
              file=sys.stderr)
        return 2
    results = run_sitting(opts)
    stamp = results.started.replace(":", "").replace("-", "")[:15]
    json_path = opts.out / f"results-{stamp}.json"
    results.write(json_path)
    shutil.copyfile(json_path, opts.out / "latest.json")
    _write_report(results, json_path, opts)
    for t in results.targets:
        print(f"{'MET ' if t['met'] else 'MISS' if t['met'] is False else '--  '} "
              f"{t['target']}: {t['measured']} ({t['threshold']}) {t['detail']}")
    for s in results.skipped:
        print(f"SKIPPED {s.part}: {s.reason[:200]}")
    print(f"results: {json_path}" + (f"; report: {opts.docs}" if opts.docs else ""))
    return 1 if results.total_errors() else 0
