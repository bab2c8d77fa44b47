"""Run lifecycle end to end: the smoke recipe, resume after a kill, sweeps, unique run directories."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.core.cli import run_recipe
from tests.conftest import ROOT, kill_runner_when, resume_and_compare, run_cli

SMALL = ["algorithm.steps=80", "algorithm.checkpoint_every=20", "algorithm.eval_every=40", "algorithm.warmup_steps=5",
         "run.progress=false"]


def test_smoke_recipe_end_to_end_in_a_subprocess(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("+recipe=smoke", f"run.dir={run_dir}", "run.progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    # the loss must fall: far below the uniform-over-bytes level ln(256) ≈ 5.55 it starts near
    assert results["train_loss_first"] > 4.5
    assert results["train_loss_last"] < 0.5 * results["train_loss_first"]
    assert results["eval_loss"] < 0.5 * results["eval_loss_initial"]
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 301))
    assert (run_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "eval_loss" in (run_dir / "summary.md").read_text()
    assert (run_dir / "run_config.yaml").exists()


def test_resume_after_kill_reaches_the_same_final_metrics(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    ckpt = killed / "checkpoints" / "finetune" / "step_40.pt"
    kill_runner_when(["+recipe=smoke", f"run.dir={killed}", *SMALL], ckpt.exists, timeout=400)
    assert ckpt.exists() and not (killed / "results.json").exists(), "the run must be killed mid-training"

    a, b = resume_and_compare(["+recipe=smoke", *SMALL], killed, clean)
    for key in ("train_loss_first", "train_loss_last", "eval_loss", "eval_perplexity", "samples"):
        assert a[key] == b[key], key


def test_resume_with_a_different_config_is_refused(tmp_path):
    run_recipe("smoke", ["run.smoke=true", "run.progress=false"], run_dir=tmp_path)
    before = (tmp_path / "results.json").read_text()
    proc = run_cli("+recipe=smoke", "run.smoke=true", f"run.dir={tmp_path}", "seed=5")
    assert proc.returncode == 2 and "different config" in proc.stderr and "seed" in proc.stderr
    never = run_cli("+recipe=smoke", "run.smoke=true", f"run.dir={tmp_path}", "run.resume=never")
    assert never.returncode == 2 and "run.resume=never" in never.stderr
    assert (tmp_path / "results.json").read_text() == before


def test_sweep_writes_every_job_and_a_summary_table(tmp_path):
    proc = run_cli("-m", "+recipe=smoke", "seed=1,2", "run.smoke=true", f"run.output_root={tmp_path}",
                   "run.progress=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = list((tmp_path / "sweeps").glob("*/*"))
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["seed"] for r in rows] == ["1", "2"] and all(r["status"] == "ok" for r in rows)
    for r in rows:
        job = json.loads((sweep / r["job"] / "results.json").read_text())
        assert float(r["eval_loss"]) == pytest.approx(job["eval_loss"])
        assert job["run"]["seed"] == int(r["seed"])
    assert rows[0]["eval_loss"] != rows[1]["eval_loss"]
    assert "| job |" in (sweep / "summary.md").read_text()


def test_runs_started_together_get_distinct_directories(tmp_path):
    args = [sys.executable, "-m", "runner", "+recipe=smoke", "run.smoke=true", "algorithm.steps=30",
            f"run.output_root={tmp_path}", "run.progress=false"]
    procs = [subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        assert p.wait(timeout=600) == 0
    dirs = list((tmp_path / "runs").glob("*/*"))
    assert len(dirs) == 2 and all((d / "results.json").exists() for d in dirs)


def test_loggers_write_tensorboard_and_offline_wandb(tmp_path):
    run_recipe("smoke", ["run.smoke=true", "algorithm.steps=25", "run.progress=false", "logger=all"],
               run_dir=tmp_path)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert Path(tmp_path / "metrics.jsonl").read_text().count("\n") == 25
