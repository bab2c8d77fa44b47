"""Sweep aggregation: k/n per claim and metric statistics, one sweep folder under every launcher."""

from __future__ import annotations

import json
import math
import subprocess

import numpy as np
import pytest
import yaml

from runner.core.sweep import aggregate, describe, read_jobs, summarize_sweep
from tests.conftest import ROOT, run_cli

TINY = ["+recipe=smoke", "run.smoke=true", "algorithm.steps=16", "algorithm.warmup_steps=2", "algorithm.eval_every=8",
        "algorithm.checkpoint_every=8", "algorithm.eval_batches=2", "run.progress=false"]


def _job(sweep, num, overrides, results):
    d = sweep / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if results is not None:
        (d / "results.json").write_text(json.dumps(results))


def _results(seed, asr, holds):
    info = {"expression": "trained.asr < 0.3", "holds": holds, "values": {"trained.asr": asr}, "reason": None}
    flag = {"expression": "trained.ok", "holds": holds, "values": {"trained.ok": holds}, "reason": None}
    return {"trained": {"asr": asr, "steps": 10, "ok": holds}, "run": {"seed": seed, "wall_seconds": 2.0 + seed},
            "claims": {"low": holds, "flag": holds}, "claims_info": {"low": info, "flag": flag}}


def _head() -> str | None:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip() or None


def test_describe_matches_numpy_sample_statistics():
    x = [0.3, 0.1, 0.25, 0.7, 0.05]
    s = describe(x)
    assert s["n"] == 5 and s["mean"] == pytest.approx(np.mean(x)) and s["sd"] == pytest.approx(np.std(x, ddof=1))
    assert (s["min"], s["max"]) == (0.05, 0.7)
    one = describe([2.0])
    assert one["sd"] is None and one["mean"] == 2.0
    inf = describe([1.0, math.inf, 3.0])
    assert inf["n"] == 2 and inf["n_inf"] == 1 and inf["mean"] == 2.0


def test_aggregate_groups_by_non_seed_overrides_and_counts_failed_jobs(tmp_path):
    asr = {(0, "a"): 0.1, (1, "a"): 0.5, (2, "a"): 0.2, (0, "b"): 0.4, (1, "b"): None, (2, "b"): 0.35}
    for num, ((seed, lr), v) in enumerate(asr.items()):
        res = None if v is None else _results(seed, v, v < 0.3)
        _job(tmp_path, num, [f"seed={seed}", f"algorithm.lr={lr}", "+recipe=x"], res)
    groups = {g["overrides"]["algorithm.lr"]: g for g in aggregate(read_jobs(tmp_path))}
    a, b = groups["a"], groups["b"]
    assert a["n"] == 3 and a["n_ok"] == 3 and a["seeds"] == [0, 1, 2] and b["seeds"] == [0, 1, 2]
    assert a["claims"]["low"]["holds"] == 2 and a["claims"]["low"]["n"] == 3
    assert a["claim_metrics"]["trained.asr"]["mean"] == pytest.approx(np.mean([0.1, 0.5, 0.2]))
    assert a["claim_metrics"]["trained.asr"]["sd"] == pytest.approx(np.std([0.1, 0.5, 0.2], ddof=1))
    assert a["claim_metrics"]["trained.ok"]["mean"] == pytest.approx(2 / 3)  # a true/false read: fraction true
    assert a["metrics"]["run.wall_seconds"]["mean"] == pytest.approx(3.0)
    assert "run.seed" not in a["metrics"] and "claims.low" not in a["metrics"]
    # a failed job counts in n: the claim is not shown on it
    assert b["n"] == 3 and b["n_ok"] == 2 and b["failed_jobs"] == [4] and b["claims"]["low"]["holds"] == 0
    rows = summarize_sweep(tmp_path)
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["failed", "ok"]
    agg = json.loads((tmp_path / "aggregate.json").read_text())
    assert agg["n_jobs"] == 6 and len(agg["groups"]) == 2 and "commit" in agg
    md = (tmp_path / "summary.md").read_text()
    assert "| low | `trained.asr < 0.3` | 2/3 |" in md and "| low | `trained.asr < 0.3` | 0/3 |" in md


@pytest.mark.parametrize("launcher", ["submitit_local", "joblib"])
def test_cluster_launchers_put_every_job_in_one_aggregated_sweep_folder(tmp_path, launcher):
    head_before = _head()
    proc = run_cli("-m", *TINY, "seed=0,1", f"run.output_root={tmp_path}", f"hydra/launcher={launcher}",
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = [p for p in (tmp_path / "sweeps").glob("*/*") if p.is_dir()]
    assert len(sweeps) == 1, sweeps  # before the fix, each job resolved a sweep folder of its own
    sweep = sweeps[0]
    jobs = [json.loads((sweep / str(i) / "results.json").read_text()) for i in range(2)]
    assert sorted(j["run"]["seed"] for j in jobs) == [0, 1]
    (group,) = json.loads((sweep / "aggregate.json").read_text())["groups"]
    assert group["n"] == group["n_ok"] == 2
    for name, c in group["claims"].items():
        assert c["holds"] == sum(j["claims"][name] for j in jobs) and c["n"] == 2
    losses = [j["eval_loss"] for j in jobs]
    assert group["claim_metrics"]["eval_loss"]["mean"] == pytest.approx(np.mean(losses))
    assert group["claim_metrics"]["eval_loss"]["sd"] == pytest.approx(np.std(losses, ddof=1))
    assert "## Aggregate over seeds" in (sweep / "summary.md").read_text()
    assert json.loads((sweep / "aggregate.json").read_text())["commit"] in (head_before, _head())  # as it started


def test_reproduce_runs_a_recipe_over_seeds_and_rerenders_from_its_sweep(tmp_path):
    from runner import reproduce

    out, again = tmp_path / "REPRODUCTION.md", tmp_path / "again.md"
    args = ["--recipes", "smoke", "--seeds", "0,1", "--sweeps-root", str(tmp_path / "sweeps"), "--out", str(out),
            "--extra", *TINY[1:]]
    assert reproduce.main(args) == 0
    (group,) = json.loads((tmp_path / "sweeps" / "smoke" / "aggregate.json").read_text())["groups"]
    jobs = [json.loads((tmp_path / "sweeps" / "smoke" / str(i) / "results.json").read_text()) for i in range(2)]
    assert [j["run"]["seed"] for j in jobs] == [0, 1] and group["n_ok"] == 2
    report = out.read_text()
    for name, c in group["claims"].items():
        k = sum(j["claims"][name] for j in jobs)
        assert f"| {name} | `{c['expression']}` | {k}/2 |" in report
    mean = np.mean([j["eval_loss"] for j in jobs])
    assert f"| `eval_loss` | {mean:.4g} ± " in report and "## smoke" in report
    assert reproduce.main(["--from-sweeps", str(tmp_path / "sweeps" / "smoke"), "--out", str(again)]) == 0
    body = lambda text: [ln for ln in text.splitlines() if not ln.startswith("Rendered")]  # noqa: E731
    assert body(again.read_text()) == body(report)
    assert reproduce.main(["--recipes", "no_such_recipe", "--out", str(tmp_path / "x.md")]) == 2
