"""The reproduction report: every recipe's embedded default over seeds, its claims' k/n, rendered as Markdown.

    python -m runner.reproduce [--recipes a,b] [--seeds 0,1,2,3,4] [--out REPRODUCTION.md]
                               [--sweeps-root DIR] [--extra OVERRIDE ...]
    python -m runner.reproduce --from-sweeps DIR [DIR ...] [--out REPRODUCTION.md]

Each recipe runs as one ``python -m runner -m +recipe=NAME seed=...`` multirun in a subprocess (one
intra-op thread), through the same sweep machinery as any sweep, into ``<sweeps-root>/<recipe>/``; the
report is rendered from the sweeps' ``aggregate.json``, so ``--from-sweeps`` rebuilds it without rerunning.
Rerunning with the same ``--sweeps-root`` resumes jobs that were interrupted (``run.resume=auto``).
By default the recipes are those whose YAML declares ``claims:``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from runner import PROJECT_ROOT, RECIPES_DIR
from runner.core.report import markdown_table
from runner.core.sweep import claims_table, metrics_table, provenance, stat_cell, summarize_sweep, sweep_dir_override


def recipes_with_claims() -> list[str]:
    """The recipes whose YAML declares a non-empty ``claims:`` block."""
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml") if (yaml.safe_load(p.read_text()) or {}).get("claims"))


FIXED = {"hardware.num_threads": "1", "run.progress": "false"}  # every reproduction job: one intra-op thread, quiet


def sweep_command(recipe: str, seeds: Sequence[int], sweep_dir: Path, extra: Sequence[str] = ()) -> list[str]:
    """The multirun command line of one recipe over ``seeds`` into ``sweep_dir``."""
    return [sys.executable, "-m", "runner", "-m", f"+recipe={recipe}", "seed=" + ",".join(map(str, seeds)),
            *(f"{k}={v}" for k, v in FIXED.items()), sweep_dir_override(sweep_dir), *extra]


def run_sweep(recipe: str, seeds: Sequence[int], sweep_dir: Path, extra: Sequence[str] = ()) -> int:
    """Run one recipe's sweep in a subprocess (output to ``<sweep_dir>.log``); make sure it is aggregated."""
    sweep_dir.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = sweep_dir.with_suffix(".log")
    t0 = time.time()
    with log.open("a") as f:
        rc = subprocess.run(sweep_command(recipe, seeds, sweep_dir, extra), cwd=PROJECT_ROOT, env=env, stdout=f,
                            stderr=subprocess.STDOUT).returncode
    if sweep_dir.exists() and (rc != 0 or not (sweep_dir / "aggregate.json").exists()):
        summarize_sweep(sweep_dir)  # a failed job stops Hydra before its callback: aggregate what finished
    print(f"{recipe}: exit {rc} after {time.time() - t0:.0f} s -> {sweep_dir}", flush=True)
    return rc


def load_aggregate(sweep_dir: Path) -> dict[str, Any]:
    path = Path(sweep_dir) / "aggregate.json"
    if not path.exists():
        summarize_sweep(sweep_dir)
    if not path.exists():
        raise FileNotFoundError(f"{sweep_dir} holds no finished jobs (no aggregate.json)")
    return json.loads(path.read_text())


def _short(prov: Mapping[str, Any]) -> str:
    commit = (prov.get("commit") or "unknown")[:10]
    return commit + (" (uncommitted changes)" if prov.get("dirty") else "")


def _claims_cell(group: Mapping[str, Any]) -> str:
    return ", ".join(f"{n} {c['holds']}/{c['n']}" for n, c in group["claims"].items()) or "none declared"


def _label(group: Mapping[str, Any]) -> tuple[str, str]:
    """The recipe of a group and its other overrides, as text."""
    overrides = {k: v for k, v in group["overrides"].items() if k not in FIXED}
    recipe = overrides.pop("recipe", "?")
    return recipe, " ".join(f"`{k}={v}`" for k, v in overrides.items())


def render(aggregates: Sequence[Mapping[str, Any]], command: str = "") -> str:
    """REPRODUCTION.md from sweep aggregates: an overview, then per recipe its claims and their metrics."""
    now = provenance()
    parts = ["# Reproduction\n",
             "Each recipe's embedded default run over seeds by `python -m runner.reproduce` (one intra-op thread a "
             "job). A claim is the direction of the paper's effect, declared in the recipe's `claims:` and judged "
             "by the runner on each job's results.json; *k/n* counts the seeds on which it holds. Metrics are "
             "mean ± sample sd over seeds, with min and max. Time per job is the run's own wall time (results.json "
             "`run.wall_seconds`, without process start-up). README numbers are copied from this file.\n",
             f"Rendered {now['date']} at commit {_short(now)}" + (f" by `{command}`" if command else "") + ".\n"]
    overview, sections = [], []
    for agg in aggregates:
        for g in agg["groups"]:
            recipe, extra = _label(g)
            wall = g["metrics"].get("run.wall_seconds")
            overview.append({"recipe": f"`{recipe}`" + (f" {extra}" if extra else ""),
                             "seeds": ", ".join(map(str, g["seeds"])), "claims (k/n)": _claims_cell(g),
                             "wall time / job": f"{wall['mean']:.0f} s" if wall and wall["mean"] is not None else "–"})
            head = f"## {recipe}\n"
            meta = [f"Seeds {', '.join(map(str, g['seeds']))}: {g['n_ok']}/{g['n']} jobs finished"
                    + (f" (failed: jobs {g['failed_jobs']})" if g["failed_jobs"] else ""),
                    f"run time per job {stat_cell(wall)} s" if wall else "",
                    f"commit {_short(agg)}, started {agg.get('date', '?')}, finished {agg.get('finished', '?')}",
                    f"overrides {extra}" if extra else "", f"sweep `{agg.get('sweep_dir', '?')}`"]
            body = claims_table(g)
            if g["claim_metrics"]:
                body += "\n" + metrics_table(g["claim_metrics"])
            sections.append(head + "; ".join(m for m in meta if m) + ".\n\n" + body)
    parts.append("## Overview\n" + markdown_table(overview, ["recipe", "seeds", "claims (k/n)", "wall time / job"]))
    return "\n".join(parts + sections)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m runner.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--recipes", help="comma-separated recipe names (default: every recipe declaring claims)")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 0,1,2,3,4)")
    p.add_argument("--out", default="REPRODUCTION.md", help="the report to write (default REPRODUCTION.md)")
    p.add_argument("--sweeps-root", help="where the sweeps go (default outputs/reproduce/<date>_<time>)")
    p.add_argument("--extra", nargs="+", default=[], metavar="OVERRIDE", help="overrides added to every recipe")
    p.add_argument("--from-sweeps", nargs="+", metavar="DIR", help="render from existing sweep folders, run nothing")
    args = p.parse_args(argv)
    command = "python -m runner.reproduce " + " ".join(argv if argv is not None else sys.argv[1:])

    if args.from_sweeps:
        dirs = [Path(d) for d in args.from_sweeps]
    else:
        known = {x.stem for x in RECIPES_DIR.glob("*.yaml")}
        recipes = args.recipes.split(",") if args.recipes else recipes_with_claims()
        unknown = [r for r in recipes if r not in known]
        if unknown:
            print(f"config error: unknown recipe '{unknown[0]}' (available: {', '.join(sorted(known))})",
                  file=sys.stderr)
            return 2
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            print(f"config error: --seeds must be comma-separated integers, got '{args.seeds}'", file=sys.stderr)
            return 2
        root = Path(args.sweeps_root or f"outputs/reproduce/{time.strftime('%Y-%m-%d_%H-%M-%S')}").absolute()
        dirs = []
        for recipe in recipes:
            run_sweep(recipe, seeds, root / recipe, args.extra)
            dirs.append(root / recipe)
    aggregates = []
    for d in dirs:
        try:
            aggregates.append(load_aggregate(d))
        except FileNotFoundError as e:
            print(f"skipped: {e}", file=sys.stderr)
    Path(args.out).write_text(render(aggregates, command))
    print(f"reproduction report -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
