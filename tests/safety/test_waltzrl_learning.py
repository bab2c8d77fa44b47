"""WaltzRL learns: on a reduced toy world, the two RL stages make the collaborative system (both agents
deployed) less unsafe than the same agents before RL (``untrained_collaboration``), and the feedback agent is
triggered less often. With a broken learner (checked: a learning rate of ~0) the trained agents are the
untrained ones, their evaluation is identical (same sampling seeds), and both strict margins fail."""

from __future__ import annotations

from runner.core.cli import run_recipe

# Four hazard categories (16 harmful, 40 benign held-out prompts), no adversarial templates; both agents
# warm-started briefly (300 / 400 steps); the learned guard (1 step) and single-model RL (0 steps) baselines
# reduced to nothing, since the check compares WaltzRL with its own starting point; 5 + 35 RL steps of 32
# episodes at the default RL learning rate; no held-out curve. About 90 s on one thread. Checked on seeds 0-2
# (untrained_collaboration -> waltzrl):
#   ASR 0.61 / 0.50 / 0.59 -> 0.41 / 0.20 / 0.09; FTR 0.20 / 0.24 / 0.25 -> 0.03 / 0.05 / 0.03;
#   ORR 0.44 / 0.39 / 0.33 -> 0.33 / 0.73 / 0.18 (seed 1 trades overrefusal for safety: ORR is not checked,
#   only that the agent has not collapsed to refusing everything).
# With algorithm.rl.learning_rate=1e-12 on seed 0 (validation rejects 0) waltzrl equals untrained_collaboration.
LEARN = ["run.progress=false", "dataset.params.categories=[S1,S2,S9,S11]", "dataset.params.include_adversarial=false",
         "algorithm.warm_start.steps=300", "algorithm.warm_start.checkpoint_every=300",
         "algorithm.feedback_warm_start.steps=400", "algorithm.feedback_warm_start.checkpoint_every=400",
         "algorithm.baselines.learned_guard.steps=1", "algorithm.baselines.learned_guard.warmup_steps=0",
         "algorithm.baselines.learned_guard.checkpoint_every=1", "algorithm.baselines.single_model_rl_steps=0",
         "algorithm.train.stage1_steps=5", "algorithm.train.stage2_steps=35", "algorithm.train.prompts_per_step=32",
         "algorithm.train.eval_every=0", "algorithm.eval.n_samples=4"]


def test_waltzrl_lowers_asr_and_feedback_trigger_rate(tmp_path):
    r = run_recipe("waltzrl", LEARN, run_dir=tmp_path)
    before, after = r["systems"]["untrained_collaboration"], r["systems"]["waltzrl"]
    assert after["asr"] < before["asr"] - 0.1, (before, after)
    assert after["ftr"] < before["ftr"] - 0.1, (before, after)
    assert after["orr"] < 0.9, (before, after)  # not bought by refusing everything
