"""Kill -9 a reduced WaltzRL run in stage 2, resume it in the same run.dir: the same results and metric log as
an uninterrupted run (REINFORCE++ trainer state, RNGs and logs are checkpointed; batches and rollouts are
seeded by stage and step)."""

from __future__ import annotations

from tests.conftest import kill_runner_when, resume_and_compare

ARGS = ("+recipe=waltzrl", "run.smoke=true", "run.progress=false", "algorithm.train.stage1_steps=2",
        "algorithm.train.stage2_steps=3", "algorithm.train.checkpoint_every=1", "algorithm.train.eval_every=1",
        "algorithm.baselines.single_model_rl_steps=1")


def test_waltzrl_killed_in_stage2_resumes_to_the_same_results(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    ckpt = killed / "checkpoints" / "stage2" / "step_1.pt"
    kill_runner_when([*ARGS, f"run.dir={killed}"], ckpt.exists)
    assert (killed / "checkpoints" / "stage1" / "done.json").exists() and ckpt.exists()
    assert not (killed / "checkpoints" / "stage2" / "done.json").exists(), "the run must be killed mid-stage 2"

    resume_and_compare(ARGS, killed, clean)
