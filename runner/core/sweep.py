"""Sweep summary: after a ``-m`` multirun, one table of every job's overrides and final results.

Registered as a Hydra callback in ``conf/config.yaml``; writes ``summary.csv`` and ``summary.md`` in
the sweep folder. Jobs that wrote no ``results.json`` are listed with status ``failed``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from runner.core.report import flatten, markdown_table


def summarize_sweep(sweep_dir: Path) -> list[dict[str, Any]]:
    """Collect one row per job folder: ``job``, ``status``, each override, then scalar results."""
    rows = []
    jobs = (p for p in Path(sweep_dir).iterdir() if p.is_dir() and p.name.isdigit())
    job_dirs = sorted(jobs, key=lambda p: int(p.name))
    for job in job_dirs:
        row: dict[str, Any] = {"job": int(job.name)}
        overrides = job / ".hydra" / "overrides.yaml"
        if overrides.exists():
            for o in OmegaConf.load(overrides):
                key, _, value = str(o).partition("=")
                row[key.lstrip("+~")] = value
        results = job / "results.json"
        if results.exists():
            row["status"] = "ok"
            for k, v in flatten(json.loads(results.read_text())).items():
                scalar = isinstance(v, (int, float, bool))
                if scalar and (not k.startswith("run.") or k == "run.wall_seconds"):
                    row[k] = v
        else:
            row["status"] = "failed"
        rows.append(row)
    if not rows:
        return rows
    columns: list[str] = []
    for r in rows:
        columns += [c for c in r if c not in columns]
    with (Path(sweep_dir) / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    (Path(sweep_dir) / "summary.md").write_text(f"# Sweep {Path(sweep_dir).name}\n\n" + markdown_table(rows, columns))
    return rows


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if sweep_dir.exists():
            rows = summarize_sweep(sweep_dir)
            print(f"sweep summary: {len(rows)} jobs -> {sweep_dir / 'summary.md'}")
