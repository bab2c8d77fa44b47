"""RECAP's recipes: the embedded default's config, the paper-scale config (composes, passes the GPU memory
preflight), bad configs, and a smoke end-to-end run of the whole pipeline (it checks the reported rates against
the saved responses, not the direction of RECAP's effect: a reduced run that learns it does not fit CI's time)."""

from __future__ import annotations

import pytest

from runner.core.cli import compose_recipe
from runner.core.errors import ConfigError


def test_recap_paper_composes_and_passes_memory_preflight():
    from runner.rollout.budget import check_gpu_layout, plan

    cfg = compose_recipe("recap_paper")
    a = cfg.algorithm
    assert cfg.model.hf_id == "deepseek-ai/DeepSeek-R1-Distill-Llama-8B" and cfg.hardware.rollout_engine == "vllm"
    assert [b.loader for b in cfg.dataset.train] == ["beavertails", "star_benign", "gsm8k", "math"]
    assert {"strongreject", "wildjailbreak_eval", "fortress", "xstest", "math500", "gsm8k", "aime"} == {
        b.loader for b in cfg.dataset.eval}
    assert (a.prefill.alpha, a.prefill.length, a.grpo.num_generations) == (0.5, 500, 16)
    assert (a.grpo.loss_type, a.grpo.epsilon, a.grpo.epsilon_high, a.grpo.dynamic_sampling) == ("dapo", 0.2, 0.28, True)
    assert a.judge.name == "granite_guardian" and a.judge.model == "granite_guardian_3_1_8b"
    check_gpu_layout(cfg)
    engines = {e.name for e in plan(cfg).engines}
    assert engines == {"policy", "grpo", "judge", "refusal_judge"}  # the guard and the rubric judge are sized too
    with pytest.raises(ConfigError, match="GPU"):  # full fine-tuning of the 8B policy beside them does not fit
        check_gpu_layout(compose_recipe("recap_paper", ["algorithm.lora.enabled=false"]))


@pytest.mark.parametrize("overrides,match", [
    (["algorithm.prefill.alpha=1.5"], "alpha"),
    (["algorithm.grpo.epsilon_high=0.1"], "epsilon_high"),
    (["algorithm.eval.attacks=[direct,jailbreak]"], "attacks"),
])
def test_bad_recap_configs_fail_with_one_line(overrides, match):
    with pytest.raises(ConfigError, match=match):
        compose_recipe("recap", overrides)


def test_recap_eval_composes_for_any_model():
    cfg = compose_recipe("recap_eval", ["model=deepseek_r1_distill_llama_8b", "algorithm.warm_start.steps=0",
                                        "dataset=recap_paper", "algorithm.judge.name=llama_guard",
                                        "algorithm.judge.model=llama_guard_3_8b",
                                        "algorithm.refusal_judge.name=refusal_string"])
    assert cfg.algorithm.name == "recap_eval" and cfg.algorithm.eval.attacks == ["direct", "prefill", "hijack", "ipr"]


def test_recap_smoke_run_end_to_end(tmp_path):
    """The whole pipeline in its smoke settings: warm start, prefill stage, DAPO and RECAP, every attack; the
    reported rates agree with the dumped responses, and the claims are judged."""
    import json

    from runner.core.cli import run_recipe
    from runner.safety.judges import classify_toy_response

    r = run_recipe("recap", ["run.smoke=true", "run.progress=false", "algorithm.warm_start.batch_size=8",
                             "dataset.params.categories=[S1,S9]", "dataset.params.topics_per_category=1",
                             "algorithm.corpus.max_operand=1"], run_dir=tmp_path)
    assert set(r["systems"]) == {"base", "dapo", "recap"}
    for name, m in r["systems"].items():
        assert set(m["asr_ipr"]) == {"1", "2"} and 0.0 <= m["orr"] <= 1.0
        rows = [json.loads(x) for x in (tmp_path / f"responses_{name}.jsonl").read_text().splitlines()]
        direct = [x for x in rows if x["attack"] == "direct"]
        assert len(direct) == m["n"]["harmful"]  # n_samples=1 in the smoke settings
        assert m["asr_direct"] == sum(classify_toy_response(x["response"]) == "comply" for x in direct) / len(direct)
    assert r["prefill"]["alpha"] == 0.5 and r["training"]["steps"] == 2
    assert set(r["claims"]) == {"prefill_asr_down", "ipr3_asr_down", "orr_not_up", "math_kept"}
    assert (tmp_path / "prefills_train.jsonl").exists() and (tmp_path / "asr_vs_ipr_rounds.png").exists()
    assert "| recap |" in (tmp_path / "summary.md").read_text()


# A reduced default for CI (seed 0): a smaller tiny_lm on three hazard categories, 30 training steps at lr 2e-4,
# the direct and prefill attacks only (~30 s on one thread).
REDUCED = ["run.progress=false", "seed=0", "model.hidden_size=64", "model.intermediate_size=192",
           "algorithm.warm_start.steps=400", "algorithm.warm_start.checkpoint_every=400",
           "algorithm.warm_start.examples=2000", "algorithm.grpo.steps=30", "algorithm.grpo.checkpoint_every=30",
           "algorithm.grpo.learning_rate=2e-4", "algorithm.eval.n_samples=2", "algorithm.eval.ipr_rounds=1",
           "algorithm.eval.attacks=[direct,prefill]", "dataset.params.categories=[S1,S9,S11]",
           "algorithm.corpus.max_operand=2"]


def test_recap_resists_the_prefill_attack_better_than_dapo_on_a_reduced_default(tmp_path):
    """The direction of RECAP's effect (seed 0 of a reduced default): from the same warm start with the same
    budget, RECAP's ASR under the prefill attack is below DAPO's, while both start vulnerable."""
    from runner.core.cli import run_recipe

    r = run_recipe("recap", REDUCED, run_dir=tmp_path)
    s = r["systems"]
    assert s["base"]["asr_prefill"] > s["base"]["asr_direct"]  # the warm start follows a prefilled flawed reasoning
    assert s["recap"]["asr_prefill"] < s["dapo"]["asr_prefill"]
