"""``safety_eval`` and ``safety_eval_guarded``: the base and base + guard baselines of the WaltzRL paper.

``safety_eval``: evaluate one policy (tiny_lm warm-started on the toy world, or an HF model) on the eval
sets with a judge: ASR, overrefusal, per dataset / category / family, responses dumped to jsonl.

``safety_eval_guarded``: the same policy alone and behind an output guard that replaces a response the
guard flags unsafe with a refusal (:func:`runner.safety.evaluate.guarded_system`); both systems in one
report and one Pareto plot. Paper scale uses Llama Guard 3 8B as the guard; the embedded default's guard
is the toy world's rule judge, i.e. a perfect guard, so the run shows the guard's upper bound (ASR to 0,
overrefusal unchanged); any registered judge can be the guard (``algorithm.guard.name``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from runner.core.context import RunContext
from runner.core.errors import ConfigError
from runner.safety.common import (
    EvalConfig,
    WarmStartConfig,
    build_policy,
    check_common,
    eval_sampling,
    prompt_sets,
    save_for_engine,
)
from runner.safety.evaluate import (
    DEFAULT_REFUSAL,
    evaluate,
    guarded_system,
    headline,
    model_system,
    pareto_plot,
    write_responses,
)
from runner.safety.judges import JudgeConfig, build_judge, resolve_judge_name


@dataclass
class SafetyEvalConfig:
    name: str = "safety_eval"
    system_prompt: str | None = None
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @staticmethod
    def validate(cfg: DictConfig) -> None:
        check_common(cfg)


@dataclass
class SafetyEvalGuardedConfig(SafetyEvalConfig):
    name: str = "safety_eval_guarded"
    guard: JudgeConfig = field(default_factory=JudgeConfig)
    refusal: str = DEFAULT_REFUSAL  # what the guarded system says instead of a flagged response
    block_invalid: bool = True  # fail closed when the guard's output cannot be parsed

    @staticmethod
    def validate(cfg: DictConfig) -> None:
        check_common(cfg)
        g = cfg.algorithm.guard
        if g.name == "refusal_string":
            raise ConfigError("algorithm.guard.name=refusal_string cannot be a guard (it does not judge harm)")
        if g.name == "rule" and cfg.dataset.source != "builtin":
            raise ConfigError("algorithm.guard.name=rule only knows the toy world (dataset.source=builtin)")
        if g.name != "rule" and not g.model:
            raise ConfigError(f"algorithm.guard.name={g.name} needs algorithm.guard.model")


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {**headline(metrics),
            "per_dataset": {k: {m: v[m] for m in ("asr", "asr_nonrefusal", "refusal_rate_harmful", "orr", "n_harmful",
                                                  "n_benign", "invalid")}
                            for k, v in metrics["per_dataset"].items()},
            "per_category": {k: {"asr": v["asr"], "asr_nonrefusal": v["asr_nonrefusal"], "orr": v["orr"]}
                             for k, v in metrics["per_category"].items()},
            "labels": metrics["labels"]}


def _asr(metrics: dict[str, Any]) -> float | None:
    """The ASR to plot: the judge's, or the non-refusal rate when the judge only detects refusals."""
    return metrics["asr"] if metrics["asr"] is not None else metrics["asr_nonrefusal"]


def _setup(cfg: DictConfig, ctx: RunContext):
    from runner.rollout import build_engine

    sets = prompt_sets(cfg.dataset, ctx.seed)
    model, tok = build_policy(cfg, ctx, sets)
    save_for_engine(model, tok, ctx, "policy")
    engine = build_engine(cfg.hardware.rollout_engine, model, tok, cfg.hardware, seed=ctx.seed)
    judge = build_judge(cfg.algorithm.judge, cfg.hardware, world=sets.world)
    system = model_system(engine, eval_sampling(cfg.algorithm.eval, ctx.seed + 1), cfg.algorithm.system_prompt)
    return sets, system, judge


def run_safety_eval(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """Evaluate the policy on every eval set with the judge."""
    sets, system, judge = _setup(cfg, ctx)
    result = evaluate(system, sets.eval, judge, n_samples=cfg.algorithm.eval.n_samples)
    write_responses(ctx, "responses_base", result.rows)
    pareto_plot(ctx, {"base": (result.metrics["orr"], _asr(result.metrics))})
    return {"systems": {"base": _summary(result.metrics)},
            "judge": resolve_judge_name(cfg.algorithm.judge.name, sets.world),
            "data": sets.extra.get("data", {})}


def run_safety_eval_guarded(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """Evaluate the policy alone and behind the guard, on the same sampled responses."""
    a = cfg.algorithm
    sets, system, judge = _setup(cfg, ctx)
    guard = build_judge(a.guard, cfg.hardware, world=sets.world)
    cache: dict[tuple[str, ...], list] = {}

    def base(prompts):  # one sampling pass shared by both systems, so the guard's effect is isolated
        key = tuple(prompts)
        if key not in cache:
            cache[key] = list(system(prompts))
        return cache[key]

    guarded = guarded_system(base, guard, a.refusal, a.block_invalid)
    out: dict[str, Any] = {}
    for name, sys_fn in (("base", base), ("base+guard", guarded)):
        result = evaluate(sys_fn, sets.eval, judge, n_samples=a.eval.n_samples)
        write_responses(ctx, f"responses_{name.replace('+', '_')}", result.rows)
        out[name] = result.metrics
    pareto_plot(ctx, {k: (m["orr"], _asr(m)) for k, m in out.items()})
    return {"systems": {k: _summary(m) for k, m in out.items()},
            "judge": resolve_judge_name(a.judge.name, sets.world), "guard": a.guard.name,
            "data": sets.extra.get("data", {})}
