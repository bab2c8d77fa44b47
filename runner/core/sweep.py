"""Sweeps: one folder for every job of a ``-m`` multirun, a table of the jobs and an aggregate over seeds.

``SweepSummary`` (a Hydra callback registered in ``conf/config.yaml``) writes, in the sweep folder:
``summary.csv`` and ``summary.md`` (one row per job: overrides, status, scalar results) and
``aggregate.json`` (jobs grouped by their overrides other than ``seed``; per group, each claim's k/n and
mean ± sd, min and max of every scalar result, the claims' metrics first; the commit as the sweep
started). ``summary.md`` gets the same aggregate as tables. Jobs that wrote no ``results.json`` are
listed as ``failed`` and count in n.

Cluster launchers (submitit local/Slurm, joblib) compose each job again in another process, where a
time-stamped sweep directory would resolve anew; ``pin_sweep_dir`` resolves it once in the launching
process and passes it down as a concrete ``hydra.sweep.dir`` override.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner.core.report import flatten, fmt_value, markdown_table, write_json

PROVENANCE_FILE = "provenance.json"  # commit, dirty flag and date as the sweep started
GROUP_EXCLUDES = ("seed",)  # overrides that do not split jobs into groups: what a group aggregates over


@dataclass
class Job:
    """One job folder of a sweep: its number, its overrides and its results (None if it wrote none)."""

    num: int
    overrides: dict[str, str]
    results: dict[str, Any] | None

    @property
    def group(self) -> tuple[tuple[str, str], ...]:
        return tuple((k, v) for k, v in self.overrides.items() if k not in GROUP_EXCLUDES)


def read_jobs(sweep_dir: Path | str) -> list[Job]:
    """Every numbered job folder of ``sweep_dir``, in job order."""
    out = []
    dirs = (p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.isdigit())
    for job in sorted(dirs, key=lambda p: int(p.name)):
        overrides: dict[str, str] = {}
        path = job / ".hydra" / "overrides.yaml"
        if path.exists():
            for o in OmegaConf.load(path):
                key, _, value = str(o).partition("=")
                overrides[key.lstrip("+~")] = value
        results = job / "results.json"
        out.append(Job(int(job.name), overrides, json.loads(results.read_text()) if results.exists() else None))
    return out


def _scalars(results: Mapping[str, Any]) -> dict[str, float]:
    """Numeric scalar results (bools excluded), without run provenance except ``run.wall_seconds``."""
    out = {}
    for k, v in flatten(results).items():
        if k.startswith(("claims.", "claims_info.")) or (k.startswith("run.") and k != "run.wall_seconds"):
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = float(v)
        elif v in ("inf", "-inf"):
            out[k] = float(v)
    return out


def describe(values: Sequence[float]) -> dict[str, Any]:
    """n, mean, sample sd (None for n < 2), min and max of finite values; ``n_inf`` counts infinite ones."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"n": 0, "mean": None, "sd": None, "min": None, "max": None, "n_inf": len(values)}
    return {"n": len(finite), "mean": statistics.fmean(finite),
            "sd": statistics.stdev(finite) if len(finite) > 1 else None,
            "min": min(finite), "max": max(finite), "n_inf": len(values) - len(finite)}


def _aggregate_group(jobs: list[Job]) -> dict[str, Any]:
    ok = [j for j in jobs if j.results is not None]
    claims: dict[str, dict[str, Any]] = {}
    for job in ok:
        for name, c in job.results.get("claims_info", {}).items():
            entry = claims.setdefault(name, {"expression": c["expression"], "holds": 0, "n": len(jobs),
                                             "jobs_holding": [], "reads": {}})
            if c["holds"]:
                entry["holds"] += 1
                entry["jobs_holding"].append(job.num)
            for path, v in c["values"].items():  # a true/false value counts as 1/0: its mean is the fraction true
                entry["reads"].setdefault(path, [])
                if isinstance(v, (int, float)) or v in ("inf", "-inf"):
                    entry["reads"][path].append(float(v))
    claim_metrics: dict[str, dict[str, Any]] = {}
    for entry in claims.values():
        for path, vals in entry["reads"].items():
            claim_metrics.setdefault(path, describe(vals))
        entry["reads"] = list(entry["reads"])
    scalars = [_scalars(j.results) for j in ok]
    keys = list(dict.fromkeys(k for s in scalars for k in s))
    metrics = {k: describe([s[k] for s in scalars if k in s]) for k in keys}
    seeds = [j.results.get("run", {}).get("seed") if j.results else j.overrides.get("seed") for j in jobs]
    seeds = [int(s) if isinstance(s, str) and s.lstrip("-").isdigit() else s for s in seeds]
    return {"overrides": dict(jobs[0].group), "jobs": [j.num for j in jobs], "seeds": seeds, "n": len(jobs),
            "n_ok": len(ok), "failed_jobs": [j.num for j in jobs if j.results is None], "claims": claims,
            "claim_metrics": claim_metrics, "metrics": metrics}


def aggregate(jobs: Sequence[Job]) -> list[dict[str, Any]]:
    """Jobs grouped by their overrides other than ``seed``; per group the claims' k/n and metric statistics."""
    groups: dict[tuple, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.group, []).append(job)
    return [_aggregate_group(g) for g in groups.values()]


def provenance() -> dict[str, Any]:
    """The code that ran: git commit of the project (None outside a checkout), dirty flag, and the date."""
    from runner import PROJECT_ROOT

    def git(*args: str) -> str | None:
        try:
            p = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def stat_cell(s: Mapping[str, Any]) -> str:
    """``mean ± sd`` of a statistics dict (``describe``), with the count of infinite values if any."""
    if s["mean"] is None:
        return "–" + (f" ({s['n_inf']} inf)" if s.get("n_inf") else "")
    cell = f"{s['mean']:.4g}" + (f" ± {s['sd']:.2g}" if s["sd"] is not None else "")
    return cell + (f" (+{s['n_inf']} inf)" if s.get("n_inf") else "")


def claims_table(group: Mapping[str, Any]) -> str:
    rows = [{"claim": name, "expression": f"`{c['expression']}`", "holds": f"{c['holds']}/{c['n']}"}
            for name, c in group["claims"].items()]
    if not rows:
        return "No claims declared.\n" if group["n_ok"] else "No job finished.\n"
    return markdown_table(rows, ["claim", "expression", "holds"])


def metrics_table(stats: Mapping[str, Mapping[str, Any]]) -> str:
    rows = [{"metric": f"`{k}`", "mean ± sd": stat_cell(s), "min": fmt_value(s["min"]) if s["n"] else "–",
             "max": fmt_value(s["max"]) if s["n"] else "–", "n": s["n"]} for k, s in stats.items()]
    return markdown_table(rows, ["metric", "mean ± sd", "min", "max", "n"])


def aggregate_markdown(groups: Sequence[Mapping[str, Any]]) -> str:
    """The aggregate section of a sweep's ``summary.md``: per group, claims k/n and the claims' metrics."""
    parts = ["## Aggregate over seeds\n"]
    for g in groups:
        label = " ".join(f"{k}={v}" for k, v in g["overrides"].items()) or "(no overrides)"
        seeds = ", ".join(str(s) for s in g["seeds"])
        failed = f"; failed jobs: {g['failed_jobs']}" if g["failed_jobs"] else ""
        wall = g["metrics"].get("run.wall_seconds")
        took = f"; run time per job {stat_cell(wall)} s" if wall else ""
        parts.append(f"### {label}\n{g['n_ok']}/{g['n']} jobs finished (seeds {seeds}){failed}{took}.\n")
        parts.append(claims_table(g))
        if g["claim_metrics"]:
            parts.append("\nMetrics the claims read (sample sd over jobs):\n\n" + metrics_table(g["claim_metrics"]))
    return "\n".join(parts)


def summarize_sweep(sweep_dir: Path | str) -> list[dict[str, Any]]:
    """Write ``summary.csv``, ``summary.md`` and ``aggregate.json`` for a sweep folder; return the job rows."""
    sweep_dir = Path(sweep_dir)
    jobs = read_jobs(sweep_dir)
    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job": job.num, **job.overrides, "status": "ok" if job.results else "failed"}
        if job.results is not None:
            row.update({f"claims.{k}": v for k, v in job.results.get("claims", {}).items()})
            row.update(_scalars(job.results))
        rows.append(row)
    if not rows:
        return rows
    columns: list[str] = []
    for r in rows:
        columns += [c for c in r if c not in columns]
    with (sweep_dir / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    groups = aggregate(jobs)
    started = sweep_dir / PROVENANCE_FILE  # the code as the sweep started, if the callback recorded it
    prov = json.loads(started.read_text()) if started.exists() else provenance()
    write_json(sweep_dir / "aggregate.json", {"sweep_dir": str(sweep_dir), "n_jobs": len(jobs), **prov,
                                              "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "groups": groups})
    (sweep_dir / "summary.md").write_text(f"# Sweep {sweep_dir.name}\n\n" + aggregate_markdown(groups)
                                          + "\n## Jobs\n" + markdown_table(rows, columns))
    return rows


def pin_sweep_dir(argv: Sequence[str]) -> list[str]:
    """Add ``hydra.sweep.dir=<resolved>`` to a multirun command line that does not set it.

    The default sweep directory embeds a time stamp and a per-process tag; a launcher that runs each job
    in a process of its own (submitit, joblib) would otherwise resolve a different folder per job.
    """
    from runner.core.cli import _SKIP_PREFLIGHT, _expand_jobs, _sweep_dir, compose

    argv = list(argv)
    if not any(a in ("-m", "--multirun") for a in argv) or any(a.split("=")[0] in _SKIP_PREFLIGHT for a in argv):
        return argv
    if any(a.lstrip("+~").split("=", 1)[0] == "hydra.sweep.dir" for a in argv):
        return argv

    overrides = [a for a in argv if not a.startswith("-")]
    user = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    cfg = compose(_expand_jobs(user, True)[0])  # sets HydraConfig, so the recipe's name is known
    return [*argv, sweep_dir_override(_sweep_dir(str(cfg.run.output_root)))]


def sweep_dir_override(path: Path | str) -> str:
    """``hydra.sweep.dir='<absolute path>'``, quoted for Hydra's override grammar."""
    absolute = str(Path(path).absolute())
    return "hydra.sweep.dir='" + absolute.replace("\\", "\\\\").replace("'", "\\'") + "'"


class SweepSummary(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_json(sweep_dir / PROVENANCE_FILE, provenance())

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.exists():
            rows = summarize_sweep(sweep_dir)
            print(f"sweep summary: {len(rows)} jobs -> {sweep_dir / 'summary.md'}")
