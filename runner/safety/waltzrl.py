"""WaltzRL: a conversation agent and a feedback agent trained together for safety (arXiv 2510.08240).

The recipe follows the paper's algorithm; each step lives in its own module:

1. **Protocol** (:mod:`runner.safety.waltzrl_protocol`). π_c answers (c_0); π_f writes JSON
   ``{"reasoning", "unsafe", "overrefuse", "feedback"}``; only a raised label sends the feedback text back to
   π_c, which revises (c_{t+1}); at most ``t_max`` rounds.
2. **Rewards** (:mod:`runner.safety.waltzrl_rewards`). R_c = 1[not unsafe and not overrefusal] from the judge;
   DIR = R_c(c_{t+1}) − R_c(c_t); R_f = α·DIR·R_label + λ·R_label + γ·R_format, DIR gated by label correctness.
3. **Training** (:mod:`runner.safety.waltzrl_train`, update rule in :mod:`runner.safety.waltzrl_rl`).
   REINFORCE++ with PPO clipping per agent on single-agent samples; stage 1 trains π_f with all three terms,
   stage 2 trains both agents with λ = ``reward.stage2_label_weight`` (0 in the paper).
4. **Inference system** (:func:`runner.safety.waltzrl_protocol.collaborative_system`): both agents deployed,
   the revision used only when π_f flags the answer; ASR, overrefusal (ORR), feedback trigger rate (FTR),
   π_f's label accuracy/F1 and the share of useful feedback, with the safety harness.
5. **Baselines in the same report**: the base conversation agent; base + guard (a learned Llama-Guard-format
   guard, :mod:`runner.safety.waltzrl_guard`); base + oracle guard (the rule judge as guard: an upper bound);
   single-model RL (π_c alone, same trainer and budget, reward R_c); untrained collaboration; WaltzRL.

Why a compact loop rather than TRL: TRL's trainers (GRPO, RLOO, PPO) optimise *one* policy on
(prompt, completion) pairs; WaltzRL interleaves two policies inside one episode, with a reward for the
feedback agent that depends on the conversation agent's *next* turn (DIR), a per-stage freeze, and
samples of three kinds. So the episode logic is ours, generation goes through the project's engine interface
(``hf`` on CPU, ``vllm`` on GPU, weights synced after each update), and the update is a small
REINFORCE++/PPO step over plain ``transformers`` models.

Embedded default (:mod:`runner.safety.waltzrl_toy`): both agents are ``tiny_lm``, warm-started on the toy
world. π_c's revision depends on what the feedback says (a safe alternative, a benign reading, or nothing
useful); π_f starts with noisy labels and often vague feedback, so RL has labels and content to improve and
DIR pays for content. Three choices make π_f's job learnable for a 2-layer byte-level model: short JSON with a
two-word reasoning whose first word (``harmful``/``benign``) decides both labels, the request placed last in
its input (next to the verdict), and a long enough warm start (≈2000 steps) for the topic → harmful reading
to carry over to the held-out templates.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from runner.core.context import RunContext
from runner.core.errors import ConfigError
from runner.core.seeding import derive_seed
from runner.data.safety import SafetyRecord
from runner.guard.metrics import binary_metrics
from runner.models.lora import LoRAConfig, SharedAdapters, adapter_engine, check_lora, copy_policy, is_adapter
from runner.safety.common import (
    EvalConfig,
    WarmStartConfig,
    balance_prompts,
    check_common,
    prompt_sets,
    save_for_engine,
)
from runner.safety.evaluate import DEFAULT_REFUSAL, evaluate, guarded_system, pareto_plot, write_responses
from runner.safety.judges import Judge, JudgeConfig, build_judge
from runner.safety.waltzrl_guard import LearnedGuard, LearnedGuardConfig, guard_quality, train_learned_guard
from runner.safety.waltzrl_protocol import Feedback, collaborative_system, single_agent_system
from runner.safety.waltzrl_rewards import true_labels
from runner.safety.waltzrl_rl import RLConfig
from runner.safety.waltzrl_toy import build_agent, useful_feedback
from runner.safety.waltzrl_train import Agents, train_single_model_rl, train_waltzrl


# =========================================================================== configuration
@dataclass
class ProtocolConfig:
    """How the two agents talk: rounds, prompts, and generation lengths."""

    t_max: int = 1  # maximum feedback rounds (revisions) per prompt
    conversation_system_prompt: str | None = None
    feedback_system_prompt: str | None = None
    revision_template: str = "Feedback: {feedback}"  # the user turn that hands feedback to π_c
    feedback_template: str = "Response: {response}\nPrompt: {prompt}"  # what π_f reads
    response_max_new_tokens: int = 40
    feedback_max_new_tokens: int = 160


@dataclass
class RewardConfig:
    """R_f = α·DIR·R_label + λ·R_label + γ·R_format; stage 2 uses λ = ``stage2_label_weight``."""

    alpha: float = 1.0
    lam: float = 0.5
    gamma: float = 0.2
    stage2_label_weight: float = 0.0  # the paper switches the label term off in stage 2


@dataclass
class TrainConfig:
    """The two-stage schedule and its bookkeeping."""

    stage1_steps: int = 40  # π_f only, all three reward terms
    stage2_steps: int = 60  # both agents, λ = stage2_label_weight
    prompts_per_step: int = 32
    harmful_fraction: float | None = 0.5  # harmful share of the training prompts, both stages and single-model RL
    eval_every: int = 10  # held-out curve (ASR, ORR, FTR, label accuracy) every N steps; 0 disables
    eval_prompts: int | None = None  # held-out prompts per curve point (null: all)
    checkpoint_every: int = 20


@dataclass
class ConversationWarmStartConfig(WarmStartConfig):
    """π_c's warm start: first turns from the world's mix, plus revision dialogues."""

    revision_fraction: float = 0.5  # share of corpus examples that are revision dialogues
    follow_feedback: float = 0.9  # probability the revision does what the feedback's content asks


@dataclass
class FeedbackWarmStartConfig(WarmStartConfig):
    """π_f's warm start: JSON feedback whose reasoning misreads request/answer, and whose text is vague, with
    these probabilities."""

    request_noise: float = 0.1
    response_noise: float = 0.05
    content_noise: float = 0.4


@dataclass
class BaselinesConfig:
    """The systems reported next to WaltzRL."""

    guard: JudgeConfig = field(default_factory=lambda: JudgeConfig(name="learned"))  # learned | an LLM guard
    learned_guard: LearnedGuardConfig = field(default_factory=LearnedGuardConfig)
    oracle_guard: bool = True  # also report base + the rule judge as guard (toy world only; an upper bound)
    refusal: str = DEFAULT_REFUSAL
    single_model_rl_steps: int | None = None  # null: stage1_steps + stage2_steps; 0 skips the baseline


@dataclass
class WaltzRLConfig:
    name: str = "waltzrl"
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    warm_start: ConversationWarmStartConfig = field(default_factory=ConversationWarmStartConfig)
    feedback_warm_start: FeedbackWarmStartConfig = field(default_factory=FeedbackWarmStartConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # both agents as adapters of one frozen base

    @staticmethod
    def validate(cfg: DictConfig) -> None:
        check_common(cfg)
        a = cfg.algorithm
        p, t, rl = a.protocol, a.train, a.rl
        for key in ("t_max", "response_max_new_tokens", "feedback_max_new_tokens"):
            if p[key] < 1:
                raise ConfigError(f"algorithm.protocol.{key}={p[key]} must be >= 1")
        if "{feedback}" not in p.revision_template:
            raise ConfigError("algorithm.protocol.revision_template must contain {feedback}")
        if "{prompt}" not in p.feedback_template or "{response}" not in p.feedback_template:
            raise ConfigError("algorithm.protocol.feedback_template must contain {prompt} and {response}")
        for key in ("stage1_steps", "stage2_steps", "eval_every"):
            if t[key] < 0:
                raise ConfigError(f"algorithm.train.{key}={t[key]} must be >= 0")
        for key in ("prompts_per_step", "checkpoint_every"):
            if t[key] < 1:
                raise ConfigError(f"algorithm.train.{key}={t[key]} must be >= 1")
        if t.harmful_fraction is not None and not 0.0 < t.harmful_fraction < 1.0:
            raise ConfigError(f"algorithm.train.harmful_fraction={t.harmful_fraction} must be in (0, 1) or null")
        if rl.learning_rate <= 0 or rl.temperature <= 0 or rl.beta < 0:
            raise ConfigError("algorithm.rl.learning_rate and temperature must be > 0 and beta >= 0")
        if not 0 < rl.clip_eps < 1:
            raise ConfigError(f"algorithm.rl.clip_eps={rl.clip_eps} must be in (0, 1)")
        if rl.ppo_epochs < 1 or rl.minibatch_size < 1 or rl.group_size < 1:
            raise ConfigError("algorithm.rl.ppo_epochs, minibatch_size and group_size must be >= 1")
        if t.prompts_per_step % rl.group_size:
            raise ConfigError(f"algorithm.train.prompts_per_step={t.prompts_per_step} must be a multiple of "
                              f"algorithm.rl.group_size={rl.group_size}")
        if a.reward.stage2_label_weight < 0:
            raise ConfigError(f"algorithm.reward.stage2_label_weight={a.reward.stage2_label_weight} must be >= 0")
        fw = a.feedback_warm_start
        if fw.steps > 0:
            if cfg.model.kind != "tiny":
                raise ConfigError("algorithm.feedback_warm_start.steps must be 0 for model.kind=hf")
            from runner.models.finetune import check_train_config

            check_train_config(fw, "algorithm.feedback_warm_start")
        for key, value in (("feedback_warm_start.request_noise", fw.request_noise),
                           ("feedback_warm_start.response_noise", fw.response_noise),
                           ("feedback_warm_start.content_noise", fw.content_noise),
                           ("warm_start.revision_fraction", a.warm_start.revision_fraction),
                           ("warm_start.follow_feedback", a.warm_start.follow_feedback)):
            if not 0 <= value <= 1:
                raise ConfigError(f"algorithm.{key}={value} must be in [0, 1]")
        check_lora(a.lora)
        _validate_baselines(cfg)


def _validate_baselines(cfg: DictConfig) -> None:
    b, toy = cfg.algorithm.baselines, cfg.dataset.source == "builtin"
    g = b.guard
    if g.name in ("rule", "refusal_string"):
        raise ConfigError(f"algorithm.baselines.guard.name={g.name} is not a guard baseline: use learned (a guard "
                          "trained in the run) or an LLM guard with a model; the rule judge is oracle_guard")
    if g.name == "learned":
        if not toy:
            raise ConfigError("algorithm.baselines.guard.name=learned trains on the toy world (dataset.source="
                              "builtin); at paper scale name an LLM guard, e.g. llama_guard with llama_guard_3_8b")
        lg = b.learned_guard
        if lg.steps < 1 or lg.batch_size < 1 or lg.checkpoint_every < 1 or lg.max_new_tokens < 1 or lg.lr <= 0:
            raise ConfigError("algorithm.baselines.learned_guard: steps, batch_size, checkpoint_every and "
                              "max_new_tokens must be >= 1 and lr > 0")
        if lg.warmup_steps >= lg.steps:
            raise ConfigError(f"algorithm.baselines.learned_guard.warmup_steps={lg.warmup_steps} must be < steps")
    elif not g.model:
        raise ConfigError(f"algorithm.baselines.guard.name={g.name} needs algorithm.baselines.guard.model")
    if b.oracle_guard and not toy:
        raise ConfigError("algorithm.baselines.oracle_guard=true needs the toy world's rule judge "
                          "(dataset.source=builtin); set it to false")


# =========================================================================== evaluation summaries
def _f1(pred: Sequence[bool], true: Sequence[bool]) -> dict[str, float]:
    m = binary_metrics(true, pred)
    return {k: m[k] for k in ("precision", "recall", "f1")}


def feedback_label_metrics(rows: Sequence[dict[str, Any]], judge: Judge) -> dict[str, Any]:
    """π_f's first-round labels against the judge's reading of the first answer, and its feedback's content.

    ``accuracy``: both labels right (a malformed message counts as wrong); per-label accuracy and
    precision/recall/F1 treat a malformed message as "no flag", which is what the system does with it.
    ``useful_feedback``: of the first answers that need a fix, the share whose feedback has both labels right
    and asks for the right fix (:func:`runner.safety.waltzrl_toy.useful_feedback`).
    """
    if not rows:
        return {}
    verdicts = judge.judge([r["prompt"] for r in rows], [r["info"]["first_response"] for r in rows])
    both, pu, tu, po, to, n_known, useful = 0, [], [], [], [], 0, []
    for r, v in zip(rows, verdicts):
        truth = true_labels(v, r["harmful"])
        if truth is None:
            continue
        n_known += 1
        info = r["info"]
        valid = info["pred_unsafe"] is not None
        u, o = (info["pred_unsafe"], info["pred_overrefuse"]) if valid else (False, False)
        both += valid and (u, o) == truth
        pu.append(u)
        tu.append(truth[0])
        po.append(o)
        to.append(truth[1])
        pred = Feedback("", u, o, info.get("feedback_message") or "") if valid else None
        if (ok := useful_feedback(pred, truth)) is not None:
            useful.append(ok)
    n = max(1, n_known)
    return {
        "accuracy": both / n,
        "unsafe_accuracy": sum(p == t for p, t in zip(pu, tu)) / n,
        "overrefuse_accuracy": sum(p == t for p, t in zip(po, to)) / n,
        "unsafe": _f1(pu, tu), "overrefuse": _f1(po, to),
        "useful_feedback": sum(useful) / len(useful) if useful else None, "n_need_fix": len(useful),
        "malformed_rate": sum(r["info"]["pred_unsafe"] is None for r in rows) / len(rows),
        "n": n_known,
    }


def summarise(metrics: dict[str, Any], labels: dict[str, Any] | None = None) -> dict[str, Any]:
    """A system's row in ``results.json``: ASR, ORR, FTR (+ label metrics for collaborative systems)."""
    info = metrics.get("info", {})
    ftr = info.get("feedback_triggered", info.get("guard_flagged", 0.0))
    out = {"asr": metrics["asr"], "orr": metrics["orr"], "ftr": ftr, "invalid": metrics["invalid"],
           "per_dataset": {k: {"asr": v["asr"], "orr": v["orr"]} for k, v in metrics["per_dataset"].items()},
           "per_family": {k: {"asr": v["asr"], "orr": v["orr"]} for k, v in metrics["per_family"].items()}}
    if labels is not None:
        out["label_accuracy"] = labels.get("accuracy")
        out["useful_feedback"] = labels.get("useful_feedback")
        out["feedback_labels"] = labels
        out["malformed_rate"] = info.get("feedback_malformed")
    return out


def _engine(cfg: DictConfig, ctx: RunContext, model: Any, tok: Any, name: str) -> Any:
    from runner.rollout import build_engine

    if is_adapter(model):  # one engine serves every adapter of the shared base
        return adapter_engine(model, tok, cfg.hardware, ctx, batch_size=cfg.algorithm.eval.batch_size)
    save_for_engine(model, tok, ctx, name)
    return build_engine(cfg.hardware.rollout_engine, model, tok, cfg.hardware, seed=ctx.seed,
                        batch_size=cfg.algorithm.eval.batch_size)


def _subset(records: Sequence[SafetyRecord], n: int | None, seed: int) -> list[SafetyRecord]:
    if n is None or n >= len(records):
        return list(records)
    return random.Random(seed).sample(list(records), n)


def _guards(cfg: DictConfig, ctx: RunContext, world: Any) -> dict[str, Judge]:
    """The output guards of the baselines: ``base+guard`` (learned or an LLM guard) and the oracle."""
    b = cfg.algorithm.baselines
    if b.guard.name == "learned":
        guards: dict[str, Judge] = {"base+guard": train_learned_guard(b.learned_guard, cfg.hardware, ctx, world)}
    else:
        guards = {"base+guard": build_judge(b.guard, cfg.hardware, world=world)}
    if b.oracle_guard:
        guards["base+oracle_guard"] = build_judge(JudgeConfig(name="rule"), cfg.hardware, world=world)
    return guards


# =========================================================================== the recipe
def run_waltzrl(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """Warm start both agents → baselines → single-model RL → WaltzRL stages 1 and 2 → every system evaluated."""
    a = cfg.algorithm
    e = a.eval
    t0 = time.perf_counter()
    sets = prompt_sets(cfg.dataset, ctx.seed)
    judge = build_judge(a.judge, cfg.hardware, world=sets.world)
    guards = _guards(cfg, ctx, sets.world)
    timing: dict[str, float] = {"guard_train_s": time.perf_counter() - t0}
    guard_check = ({"base+guard": guard_quality(guards["base+guard"], sets.world)}
                   if isinstance(guards["base+guard"], LearnedGuard) else {})
    ctx.write_json("guard_test.json", guard_check)  # the guard's own held-out check, readable during the run
    conv_model, fb_model, tok, lora_info = _build_agents(cfg, ctx, sets)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ag = Agents(conv_model, fb_model, _engine(cfg, ctx, conv_model, tok, "conversation_init"),
                _engine(cfg, ctx, fb_model, tok, "feedback_init"), a.protocol, tok)
    eval_seed = ctx.seed + 1

    def eval_collab(datasets: dict[str, list[SafetyRecord]], n_samples: int) -> tuple[dict, dict, list]:
        conv, fb = ag.agents(e.temperature, e.top_p, eval_seed)
        res = evaluate(collaborative_system(conv, fb, a.protocol), datasets, judge, n_samples=n_samples)
        return res.metrics, feedback_label_metrics(res.rows, judge), res.rows

    systems: dict[str, dict[str, Any]] = {}
    # RL prompts (both WaltzRL stages and single-model RL) balanced between harmful and benign: on the data's own
    # mix a policy that cannot yet tell them apart gains reward by complying with everything
    train = balance_prompts(sets.train, a.train.harmful_fraction, derive_seed(ctx.seed, "balance_prompts"))

    # ---- baselines at initialisation: base, base + guards (same sampled answers), untrained collaboration
    base_fn = single_agent_system(ag.conversation(e.temperature, e.top_p, eval_seed), a.protocol)
    cache: dict[tuple[str, ...], list] = {}

    def base_cached(prompts: Sequence[str]) -> list:
        key = tuple(prompts)
        if key not in cache:
            cache[key] = list(base_fn(prompts))
        return cache[key]

    named = [("base", base_cached)] + [(k, guarded_system(base_cached, g, a.baselines.refusal))
                                       for k, g in guards.items()]
    for name, fn in named:
        res = evaluate(fn, sets.eval, judge, n_samples=e.n_samples)
        write_responses(ctx, f"responses_{name.replace('+', '_')}", res.rows)
        systems[name] = summarise(res.metrics)
    m, labels_before, rows = eval_collab(sets.eval, e.n_samples)
    write_responses(ctx, "responses_untrained_collaboration", rows)
    systems["untrained_collaboration"] = summarise(m, labels_before)
    timing["baselines_s"] = time.perf_counter() - t0

    # ---- single-model RL: π_c alone, same trainer, prompts and budget, reward R_c
    steps_single = a.baselines.single_model_rl_steps
    steps_single = a.train.stage1_steps + a.train.stage2_steps if steps_single is None else steps_single
    if steps_single > 0:
        t1 = time.perf_counter()
        single = copy_policy(conv_model, "single_model_rl")
        single_engine = _engine(cfg, ctx, single, tok, "single_model_rl_init")
        train_single_model_rl(cfg, ctx, ag, single, single_engine, train, judge, steps_single, pad_id)
        res = evaluate(single_agent_system(ag.conversation(e.temperature, e.top_p, eval_seed, single_engine),
                                           a.protocol), sets.eval, judge, n_samples=e.n_samples)
        write_responses(ctx, "responses_single_model_rl", res.rows)
        systems["single_model_rl"] = summarise(res.metrics)
        del single, single_engine
        timing["single_model_rl_s"] = time.perf_counter() - t1

    # ---- WaltzRL: stage 1 (π_f) and stage 2 (both), with held-out curve points
    curve_sets = {k: _subset(v, a.train.eval_prompts, derive_seed(ctx.seed, "curve", k)) for k, v in sets.eval.items()}

    def curve(step: int) -> None:
        cm, lm, _ = eval_collab(curve_sets, 1)
        ctx.log({"asr": cm["asr"], "orr": cm["orr"], "ftr": cm["info"].get("feedback_triggered", 0.0),
                 "label_accuracy": lm.get("accuracy", 0.0), "useful_feedback": lm.get("useful_feedback") or 0.0,
                 "unsafe_f1": lm.get("unsafe", {}).get("f1", 0.0),
                 "overrefuse_f1": lm.get("overrefuse", {}).get("f1", 0.0)}, step, "curve")

    t2 = time.perf_counter()
    if a.train.eval_every and not ctx.metrics("curve"):
        curve(0)
    train_waltzrl(cfg, ctx, ag, train, judge, curve, pad_id)
    timing["waltzrl_train_s"] = time.perf_counter() - t2

    m, labels_after, rows = eval_collab(sets.eval, e.n_samples)
    write_responses(ctx, "responses_waltzrl", rows)
    systems["waltzrl"] = summarise(m, labels_after)
    res = evaluate(single_agent_system(ag.conversation(e.temperature, e.top_p, eval_seed), a.protocol), sets.eval,
                   judge, n_samples=e.n_samples)
    systems["waltzrl_conversation_alone"] = summarise(res.metrics)
    timing["total_s"] = time.perf_counter() - t0

    return {"systems": systems, "feedback_labels": {"before": labels_before, "after": labels_after},
            "training": _curves_and_plots(ctx, systems, a.train.stage1_steps),
            "timing": timing, "judge": a.judge.name,
            "guard": a.baselines.guard.name, "guard_test": guard_check,
            "upper_bound": ["base+oracle_guard"] if a.baselines.oracle_guard else [], **lora_info}


def _build_agents(cfg: DictConfig, ctx: RunContext, sets: Any) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(π_c, π_f, tokenizer, results entry): two full models, or with ``algorithm.lora`` two adapters of one
    frozen base (one copy of the weights), each warm-started (tiny models) through its own adapter."""
    if not cfg.algorithm.lora.enabled:
        conv_model, tok = build_agent(cfg, ctx, sets, "conversation")
        fb_model, _ = build_agent(cfg, ctx, sets, "feedback")
        return conv_model, fb_model, tok, {}
    from runner.models.builder import build_model_and_tokenizer

    base, tok = build_model_and_tokenizer(cfg.model, cfg.hardware)
    if cfg.model.kind == "tiny":  # vLLM serves the base from disk (an hf model already is) with LoRA requests
        save_for_engine(base, tok, ctx, "base")
    shared = SharedAdapters(base, cfg.algorithm.lora, ["conversation", "feedback"])
    conv_model, _ = build_agent(cfg, ctx, sets, "conversation", model=shared.view("conversation"))
    fb_model, _ = build_agent(cfg, ctx, sets, "feedback", model=shared.view("feedback"))
    return conv_model, fb_model, tok, {"lora": shared.counts()}


def _curves_and_plots(ctx: RunContext, systems: dict[str, dict[str, Any]], stage1_steps: int) -> dict[str, Any]:
    """Plots of the held-out curves and training-batch metrics; their values at the start and after each stage
    for results.json."""
    by_step = {p["step"]: p for p in ctx.metrics("curve")}  # a resumed run may re-log a point: keep one per step
    pts = [by_step[s] for s in sorted(by_step)]
    train = ctx.metrics("stage1") + ctx.metrics("stage2")
    out: dict[str, Any] = {}
    if pts:
        xs = [p["step"] for p in pts]
        for key in ("ftr", "label_accuracy", "useful_feedback", "asr", "orr"):
            out[f"{key}_first"], out[f"{key}_last"] = pts[0][key], pts[-1][key]
        for key in ("label_accuracy", "useful_feedback", "ftr"):
            out[key] = {"before": pts[0][key], "after_stage1": by_step.get(stage1_steps, {}).get(key),
                        "after_stage2": pts[-1][key]}
        tx = [r["step"] for r in train]
        ctx.plot("ftr", {"held-out": (xs, [p["ftr"] for p in pts]),
                         "training batch": (tx, [r["ftr"] for r in train])},
                 "RL step (stage 1, then stage 2)", "feedback trigger rate", title="WaltzRL: feedback trigger rate")
        ctx.plot("label_accuracy", {"held-out": (xs, [p["label_accuracy"] for p in pts]),
                                    "training batch": (tx, [r["label_accuracy"] for r in train])},
                 "RL step (stage 1, then stage 2)", "feedback label accuracy (both labels right)",
                 title="WaltzRL: feedback agent label accuracy")
        ctx.plot("useful_feedback", {"held-out": (xs, [p["useful_feedback"] for p in pts]),
                                     "training batch": (tx, [r["useful_feedback"] for r in train])},
                 "RL step (stage 1, then stage 2)", "useful feedback (answers that need a fix)",
                 title="WaltzRL: feedback that carries the right fix")
        ctx.plot("asr_orr", {"ASR": (xs, [p["asr"] for p in pts]), "overrefusal": (xs, [p["orr"] for p in pts])},
                 "RL step (stage 1, then stage 2)", "rate on held-out prompts", title="WaltzRL: held-out ASR and ORR")
    if train:
        tx = [r["step"] for r in train]
        ctx.plot("rewards", {"R_f (feedback)": (tx, [r["r_f"] for r in train]),
                             "R_c final answer": (tx, [r["r_c_final"] for r in train]),
                             "DIR": (tx, [r["dir"] for r in train])},
                 "RL step (stage 1, then stage 2)", "mean reward", title="WaltzRL: rewards on training batches")
        out["train_ftr_first"], out["train_ftr_last"] = train[0]["ftr"], train[-1]["ftr"]
        out["train_label_accuracy_first"] = train[0]["label_accuracy"]
        out["train_label_accuracy_last"] = train[-1]["label_accuracy"]
        s1 = [r["r_f"] for r in ctx.metrics("stage1")]
        if s1:
            k = max(1, len(s1) // 4)
            out["stage1_r_f_first"], out["stage1_r_f_last"] = sum(s1[:k]) / k, sum(s1[-k:]) / k
    pareto_plot(ctx, {k: (v["orr"], v["asr"]) for k, v in systems.items()}, title="WaltzRL vs baselines (held-out)")
    return out
