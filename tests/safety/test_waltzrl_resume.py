"""Kill -9 a reduced WaltzRL run in stage 2, resume it in the same run.dir: the same results and metric log as
an uninterrupted run (REINFORCE++ trainer state, RNGs and logs are checkpointed; batches and rollouts are
seeded by stage and step)."""

from __future__ import annotations

import json

from runner.core.report import comparable_results
from tests.conftest import kill_runner_when, run_cli

ARGS = ("+recipe=waltzrl", "run.smoke=true", "run.progress=false", "algorithm.train.stage1_steps=2",
        "algorithm.train.stage2_steps=3", "algorithm.train.checkpoint_every=1", "algorithm.train.eval_every=1",
        "algorithm.baselines.single_model_rl_steps=1")


def test_waltzrl_killed_in_stage2_resumes_to_the_same_results(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    ckpt = killed / "checkpoints" / "stage2" / "step_1.pt"
    kill_runner_when([*ARGS, f"run.dir={killed}"], ckpt.exists)
    assert (killed / "checkpoints" / "stage1" / "done.json").exists() and ckpt.exists()
    assert not (killed / "checkpoints" / "stage2" / "done.json").exists(), "the run must be killed mid-stage 2"

    resumed = run_cli(*ARGS, f"run.dir={killed}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uninterrupted = run_cli(*ARGS, f"run.dir={clean}")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    a = json.loads((killed / "results.json").read_text())
    b = json.loads((clean / "results.json").read_text())
    assert a["run"]["resumed"] is True and b["run"]["resumed"] is False
    assert comparable_results(a) == comparable_results(b)
    assert (killed / "metrics.jsonl").read_text() == (clean / "metrics.jsonl").read_text()
