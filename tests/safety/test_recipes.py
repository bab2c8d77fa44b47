"""The safety recipes compose, validate and run end-to-end in their smoke settings."""

import json

import pytest

from runner.core.cli import compose_recipe, run_recipe
from runner.core.errors import ConfigError

FAST = ["run.smoke=true", "run.progress=false", "algorithm.warm_start.steps=10", "algorithm.warm_start.batch_size=8",
        "algorithm.warm_start.checkpoint_every=10", "algorithm.warm_start.warmup_steps=2"]


@pytest.mark.parametrize("recipe", ["safety_eval", "safety_eval_guarded", "safety_rl"])
def test_recipes_compose(recipe):
    from runner.safety.common import toy_world
    from runner.safety.judges import resolve_judge_name

    cfg = compose_recipe(recipe)
    assert cfg.algorithm.name == recipe and cfg.dataset.name == "toy_safety"
    assert resolve_judge_name(cfg.algorithm.judge.name, toy_world(cfg.dataset)) == "rule"  # auto: rule on the toy world


def test_paper_scale_configs_compose():
    cfg = compose_recipe("safety_rl", ["dataset=safety_rl_paper", "model=llama3_8b_instruct", "hardware=gpu8",
                                       "algorithm.warm_start.steps=0", "algorithm.judge.name=wildguard",
                                       "algorithm.judge.model=wildguard_7b"])
    assert [b.loader for b in cfg.dataset.train] == ["wildjailbreak", "or_bench_80k"]
    cfg = compose_recipe("safety_eval_guarded", ["dataset=safety_eval_paper", "model=llama3_8b_instruct",
                                                 "algorithm.warm_start.steps=0", "algorithm.guard.name=llama_guard",
                                                 "algorithm.guard.model=llama_guard_3_8b",
                                                 "algorithm.judge.name=strongreject",
                                                 "algorithm.judge.model=llama3_70b_instruct"])
    assert "xstest" in [b.loader for b in cfg.dataset.eval]


@pytest.mark.parametrize("overrides,match", [
    (["algorithm.grpo.num_generations=1"], "num_generations"),
    (["dataset.params.mix.harmful.comply=0.9"], "sum to 1"),
    (["model=llama3_8b_instruct"], "warm_start.steps must be 0"),
    (["algorithm.judge.name=llama_guard"], "judge.model"),
])
def test_bad_configs_fail_with_one_line(overrides, match):
    with pytest.raises(ConfigError, match=match):
        compose_recipe("safety_rl", overrides)


def test_safety_rl_smoke(tmp_path):
    from runner.safety.common import toy_world
    from runner.safety.judges import classify_toy_response

    r = run_recipe("safety_rl", FAST, run_dir=tmp_path)
    cfg = compose_recipe("safety_rl", FAST)
    test_prompts = {rec.prompt: rec for rec in toy_world(cfg.dataset).records("test")}
    for stage in ("base", "trained"):
        rows = [json.loads(line) for line in (tmp_path / f"responses_{stage}.jsonl").read_text().splitlines()]
        assert {row["prompt"] for row in rows} == set(test_prompts)  # every held-out prompt, n_samples=1 each
        assert len(rows) == len(test_prompts)
        # ASR and ORR recomputed from the responses with the toy world's ground truth
        harmful = [row for row in rows if test_prompts[row["prompt"]].harmful]
        benign = [row for row in rows if not test_prompts[row["prompt"]].harmful]
        asr = sum(classify_toy_response(row["response"]) == "comply" for row in harmful) / len(harmful)
        orr = sum(classify_toy_response(row["response"]) != "comply" for row in benign) / len(benign)
        assert r[stage]["asr"] == pytest.approx(asr) and r[stage]["orr"] == pytest.approx(orr)
    rewards = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rewards if x.get("stage") == "grpo" and "reward" in x] == [1, 2]
    assert r["grpo"]["steps"] == 2
    assert (tmp_path / "pareto.png").exists() and (tmp_path / "results.json").exists()


def test_safety_eval_guarded_smoke(tmp_path):
    r = run_recipe("safety_eval_guarded", FAST, run_dir=tmp_path)
    base, guarded = r["systems"]["base"], r["systems"]["base+guard"]
    assert guarded["asr"] == 0.0  # the toy world's rule judge as guard blocks every unsafe answer
    assert guarded["orr"] >= base["orr"]
    assert (tmp_path / "responses_base_guard.jsonl").exists()
