"""safety_rl (TRL GRPO): a run killed with SIGKILL and resumed in its run dir ends exactly like an uninterrupted
one, and two runs of one seed give identical results; the pieces that make it so, checked one by one."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from runner.core.cli import run_recipe
from runner.core.report import comparable_results
from runner.data.safety import SafetyRecord
from runner.safety.safety_rl import balance_prompts
from tests.conftest import kill_runner_when, logged_records

# A reduced embedded default: a narrow tiny_lm warm-started enough to answer in the world's formats (so rewards
# vary and GRPO moves the policy); 16 topics x 4 train templates, balanced to 112 prompts = 8 GRPO steps an
# epoch at 14 prompts a step, so a checkpoint at step 12 lies in the second epoch.
REDUCED = ["run.progress=false", "model.hidden_size=64", "model.intermediate_size=192",
           "dataset.params.categories=[S1,S9]", "dataset.params.topics_per_category=1",
           "dataset.params.include_adversarial=false", "algorithm.warm_start.steps=200",
           "algorithm.warm_start.examples=600", "algorithm.warm_start.checkpoint_every=100",
           "algorithm.warm_start.eval_every=200", "algorithm.eval.n_samples=1",
           "algorithm.grpo.steps=16", "algorithm.grpo.prompts_per_step=14", "algorithm.grpo.num_generations=2",
           "algorithm.grpo.checkpoint_every=4", "algorithm.grpo.logging_steps=1"]
TIMING = {"step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second"}


def _records(path: Path) -> list[dict]:
    """metrics.jsonl without wall-clock fields."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def _grpo_rewards(path: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["reward"]) for r in _records(path) if r.get("stage") == "grpo" and "reward" in r]


# --------------------------------------------------------------------------- units
def test_balance_prompts_reaches_the_share_and_repeats_harmful_prompts_evenly():
    recs = [SafetyRecord(f"h{i}", True) for i in range(3)] + [SafetyRecord(f"b{i}", False) for i in range(8)]
    out = balance_prompts(recs, 0.5, seed=0)
    counts = Counter(r.prompt for r in out)
    assert sum(r.harmful for r in out) == 8 and sum(not r.harmful for r in out) == 8
    assert all(counts[f"b{i}"] == 1 for i in range(8))
    assert sorted(counts[f"h{i}"] for i in range(3)) == [2, 3, 3]  # 8 = 3 + 3 + 2: cyclic, not random
    assert sum(r.harmful for r in balance_prompts(recs, 0.2, seed=0)) == 2  # 8 * 0.2 / 0.8
    assert balance_prompts(recs, None, seed=0) == recs
    assert balance_prompts(recs[3:], 0.5, seed=0) == recs[3:]  # no harmful prompt to repeat: unchanged


def test_epoch_seeded_sampler_order_depends_on_the_epoch_only():
    from runner.safety.trl_grpo import EpochSeededRepeatSampler

    def order(sampler: EpochSeededRepeatSampler, epoch: int) -> list[int]:
        sampler.set_epoch(epoch)
        return list(sampler)[::2]  # each index appears mini_repeat_count=2 times in a row

    data = list(range(10))
    fresh = EpochSeededRepeatSampler(data, mini_repeat_count=2, batch_size=5, seed=7)
    assert order(fresh, 0) == torch.randperm(10, generator=torch.Generator().manual_seed(7)).tolist()
    walked = EpochSeededRepeatSampler(data, mini_repeat_count=2, batch_size=5, seed=7)
    for epoch in range(3):
        order(walked, epoch)  # an uninterrupted run has drawn epochs 0-2 ...
    resumed = EpochSeededRepeatSampler(data, mini_repeat_count=2, batch_size=5, seed=7)
    assert order(walked, 3) == order(resumed, 3)  # ... a resumed run starts in epoch 3 with the same order
    assert order(resumed, 3) == torch.randperm(10, generator=torch.Generator().manual_seed(10)).tolist()


def test_resume_point_uses_the_newest_complete_checkpoint_and_rewinds_the_log(tmp_path):
    from runner.safety.trl_grpo import MARKER, resume_point

    log, out = tmp_path / "metrics.jsonl", tmp_path / "grpo"
    log.write_text("".join(json.dumps({"step": i}) + "\n" for i in range(3)))
    assert resume_point(out, log) == (None, 0)  # a first start records the log position (3 records)
    log.write_text(log.read_text() + "".join(json.dumps({"step": i}) + "\n" for i in range(3, 9)))
    assert resume_point(out, log) == (None, 0) and len(log.read_text().splitlines()) == 3  # no checkpoint yet
    for step, n in ((4, 5), (8, None)):  # checkpoint-8 lost its marker: killed while it was being saved
        (out / f"checkpoint-{step}").mkdir(parents=True)
        if n is not None:
            (out / f"checkpoint-{step}" / MARKER).write_text(json.dumps({"step": step, "n_metric_records": n}))
    log.write_text("".join(json.dumps({"step": i}) + "\n" for i in range(9)))
    path, step = resume_point(out, log)
    assert (Path(path).name, step) == ("checkpoint-4", 4)
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [0, 1, 2, 3, 4]
    assert not (out / "checkpoint-8").exists()


def test_checkpoint_every_must_be_a_multiple_of_logging_steps():
    from runner.core.cli import compose_recipe
    from runner.core.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of"):
        compose_recipe("safety_rl", ["algorithm.grpo.checkpoint_every=10", "algorithm.grpo.logging_steps=3"])


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("uninterrupted")
    run_recipe("safety_rl", REDUCED, run_dir=d)
    return d


def test_same_seed_gives_identical_results(uninterrupted, tmp_path):
    run_recipe("safety_rl", REDUCED, run_dir=tmp_path)
    a, b = (json.loads((d / "results.json").read_text()) for d in (uninterrupted, tmp_path))
    assert comparable_results(a) == comparable_results(b)
    assert _records(uninterrupted / "metrics.jsonl") == _records(tmp_path / "metrics.jsonl")


def test_sigkilled_run_resumes_to_the_uninterrupted_results(uninterrupted, tmp_path):
    # kill it once step 13 is logged: the newest checkpoint is step 12, in the second epoch
    kill_runner_when(["+recipe=safety_rl", f"run.dir={tmp_path}", *REDUCED],
                     lambda: any(s >= 13 for s, _ in _safe_rewards(tmp_path / "metrics.jsonl")))
    assert not (tmp_path / "results.json").exists()
    assert (tmp_path / "grpo" / "checkpoint-12").exists()

    resumed = run_recipe("safety_rl", REDUCED, run_dir=tmp_path)
    assert resumed["run"]["resumed"] is True
    base = json.loads((uninterrupted / "results.json").read_text())
    assert comparable_results(resumed) == comparable_results(base)  # trained ASR/ORR included, to the last bit
    assert _grpo_rewards(tmp_path / "metrics.jsonl") == _grpo_rewards(uninterrupted / "metrics.jsonl")
    assert [s for s, _ in _grpo_rewards(tmp_path / "metrics.jsonl")] == list(range(1, 17))  # nothing logged twice
    assert _records(tmp_path / "metrics.jsonl") == _records(uninterrupted / "metrics.jsonl")


def test_run_stopped_after_grpo_finished_resumes_from_the_final_checkpoint(uninterrupted, tmp_path):
    shutil.copytree(uninterrupted, tmp_path, dirs_exist_ok=True)
    for name in ("results.json", "summary.md", "responses_trained.jsonl"):  # stopped during the final evaluation
        (tmp_path / name).unlink()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text("".join(x + "\n" for x in lines[:-1]))  # eval_trained not logged
    resumed = run_recipe("safety_rl", REDUCED, run_dir=tmp_path)
    base = json.loads((uninterrupted / "results.json").read_text())
    assert comparable_results(resumed) == comparable_results(base)
    assert _records(tmp_path / "metrics.jsonl") == _records(uninterrupted / "metrics.jsonl")


def _safe_rewards(path: Path) -> list[tuple[int, float]]:
    """The GRPO rewards logged so far by a running process."""
    return [(r["step"], r["reward"]) for r in logged_records(path) if r.get("stage") == "grpo" and "reward" in r]
