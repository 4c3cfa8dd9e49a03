"""The JSON document of a run and its rendering as docs/reliability.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from bench.reliability.options import Options
from bench.reliability.sections import Section
from bench.servers import REPO_ROOT


def results(sections: list[Section], opts: Options, started: str, seconds: float) -> dict[str, Any]:
    return {
        "started": started, "seconds": round(seconds, 1), "quick": opts.quick, "seed": opts.seed,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "options": {"corpus_size": opts.corpus_size, "concurrency": opts.concurrency,
                    "request_timeout_s": opts.request_timeout,
                    "overload_seconds": opts.overload_seconds, "soak_seconds": opts.soak_seconds,
                    "memory_mb": opts.memory_mb, "rss_kill_mb": opts.rss_kill_mb},
        "sections": [s.to_json() for s in sections],
    }


def _flag(met: bool | None) -> str:
    return "met" if met else "**missed**" if met is False else "-"


def _cell(text: object, limit: int = 220) -> str:
    s = str(text).replace("|", "\\|").replace("\n", " ")
    return s if len(s) <= limit else s[:limit] + "..."


def _corpus_details(fig: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    kinds = fig.get("kinds", {})
    failing = [(k, v) for k, v in kinds.items() if v.get("example_failure")]
    lines += ["", f"Surfaces: {', '.join(fig.get('surfaces', []))}; {len(kinds)} request kinds; "
              f"{fig.get('by_design_5xx', 0)} answers were 501/503 (unsupported extension, "
              f"unavailable: by design), {fig.get('closed_without_answer', 0)} connections closed "
              f"without an answer, {fig.get('timeouts', 0)} timed out; p50 "
              f"{fig.get('p50_answer_ms', float('nan')):.1f} ms.", ""]
    lines += ["### Request kinds that got a 5xx", ""]
    if not failing:
        lines += ["None.", ""]
    else:
        lines += ["| kind | answers | example request | answer |", "|---|---|---|---|"]
        for kind, v in failing:
            statuses = ", ".join(f"{s}: {n}" for s, n in sorted(v["statuses"].items()))
            lines.append(f"| `{_cell(kind, 80)}` | {statuses} | `{_cell(v['example_failure'])}` "
                         f"| `{_cell(v['failure_answer'], 160)}` |")
        lines.append("")
    hanging = [(k, v) for k, v in kinds.items() if v.get("example_timeout")]
    if hanging:
        lines += ["### Request kinds left without an answer (per-request timeout)", "",
                  "| kind | answers | example request |", "|---|---|---|"]
        for kind, v in hanging:
            statuses = ", ".join(f"{s}: {n}" for s, n in sorted(v["statuses"].items()))
            lines.append(f"| `{_cell(kind, 80)}` | {statuses} | `{_cell(v['example_timeout'])}` |")
        lines.append("")
    for crash in fig.get("crashes", []):
        lines += [f"- crash: exit {crash['exit_code']}, killed for memory: "
                  f"{crash['killed_for_memory']}, in flight: {', '.join(crash['in_flight'])}"]
    return lines


def render(doc: dict[str, Any], json_path: Path) -> str:
    try:
        shown = json_path.resolve().relative_to(REPO_ROOT)
    except ValueError:
        shown = json_path
    mode = "quick mode (tiny counts: development figures, not the targets' run)" \
        if doc["quick"] else "full run"
    lines = [
        "# Reliability: hostile input, overload, shutdown and soak",
        "",
        "Written by `make reliability` (`python -m bench.reliability`); do not edit by hand.",
        f"Run {doc['started']}, {mode}, {doc['seconds']:.0f} s, seed {doc['seed']}, "
        f"{doc['machine']['cpus']} CPUs; raw figures in `{shown}`.",
        "",
        "Every server is started by the harness on free loopback ports from the default model "
        "store (`model_store/`, or a temporary copy of one of its models), under an "
        f"address-space limit of {doc['options']['memory_mb']} MB per process and killed "
        f"(counted as a crash) when the RSS of its process tree grows by more than "
        f"{doc['options']['rss_kill_mb']} MB over its size when ready.",
        "",
        "## Summary",
        "",
        "| section | target | threshold | measured | |",
        "|---|---|---|---|---|",
    ]
    for s in doc["sections"]:
        if s["skipped"] or s["error"]:
            why = s["skipped"] or "failed to run: " + s["error"].splitlines()[0]
            lines.append(f"| {s['name']} | - | - | {_cell(why)} | not run |")
        for t in s["targets"]:
            lines.append(f"| {s['name']} | {_cell(t['target'])} | {_cell(t['threshold'])} | "
                         f"{_cell(t['measured'])} | {_flag(t['met'])} |")
    for s in doc["sections"]:
        lines += ["", f"## {s['name']}", ""]
        if s["skipped"]:
            lines.append(f"Not run: {s['skipped']}.")
            continue
        if s["error"]:
            lines += ["Failed to run:", "", "```", s["error"], "```"]
            continue
        fig = s["figures"]
        if "kinds" in fig:
            lines += _corpus_details(fig)
        else:
            shown_fig = {k: v for k, v in fig.items() if k != "samples"}
            lines += [f"- {k}: `{_cell(v, 300)}`" for k, v in shown_fig.items()]
    return "\n".join(lines) + "\n"
