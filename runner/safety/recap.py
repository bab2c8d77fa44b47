"""``recap``: RL with counter-aligned reasoning prefills (RECAP, arXiv 2510.00938), against DAPO.

1. Prompt sets: the reasoning toy world (toy safety world + arithmetic, :mod:`runner.safety.recap_world`) or
   benchmark files (harmful, benign and math records by family).
2. Base policy: tiny_lm warm-started on the reasoning corpus so its answer follows its reasoning, or an HF
   reasoning model (DeepSeek-R1-Distill) as it is.
3. Prefill construction (:mod:`runner.safety.recap_prefill`, cached): flawed reasoning for the training and
   held-out safety prompts, unsafe for harmful prompts and refusing for benign ones.
4. Training, twice from the same start with the same prompts, steps, G and hyperparameters:
   **DAPO** (TRL's GRPOTrainer, ``loss_type=dapo``: token-level loss, clip ε_low/ε_high, no KL, overlong
   masking, dynamic sampling that drops groups whose rewards are all equal: :class:`DAPOTrainer`) and
   **RECAP**: the same, with a share α of the safety and overrefusal prompts prefilled with ℓ_pre words of
   flawed reasoning. The prefill is part of the prompt, so the loss and the importance ratios cover only the
   tokens generated after it. Rewards by domain: :mod:`runner.safety.recap_rewards`.
5. Evaluation of base, DAPO and RECAP under every attack (:mod:`runner.safety.recap_attacks`): results.json
   ``systems.<base|dapo|recap>``; reward curves per domain and ASR against IPR rounds as plots.

``recap_eval`` runs step 3 (held-out prompts) and step 5 on one model.
"""

from __future__ import annotations

import copy
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.core.context import RunContext
from runner.core.errors import ConfigError
from runner.data.safety import SafetyRecord
from runner.models.lora import LoRAConfig, merged_model, peft_config
from runner.safety.common import WarmStartConfig, balance_prompts, check_common, save_for_engine, toy_world
from runner.safety.judges import JudgeConfig, build_judge
from runner.safety.recap_attacks import AttackConfig, evaluate_reasoning_model
from runner.safety.recap_format import prefilled_prompt, strip_bos, use_reasoning_template
from runner.safety.recap_prefill import PrefillConfig, build_prefills, choose_prefilled
from runner.safety.recap_world import (
    TOY_GENERATORS,
    ReasoningCorpusConfig,
    ReasoningToyWorld,
    ToyReasoner,
    domain,
    split_by_domain,
)
from runner.safety.safety_rl import GRPOSettings
from runner.safety.world import WarmStartMix, chat_messages

METRICS = ("asr_direct", "asr_prefill", "asr_hijack", "asr_ipr", "orr", "orr_prefill", "math_accuracy")


@dataclass
class DAPOSettings(GRPOSettings):
    """GRPO settings with DAPO's defaults: token-level loss, asymmetric clip, no KL, dynamic sampling."""

    steps: int = 60
    loss_type: str = "dapo"
    beta: float = 0.0
    epsilon: float = 0.2  # ε_low
    epsilon_high: float = 0.28
    dynamic_sampling: bool = True  # drop groups whose rewards are all equal from the loss
    max_completion_length: int = 64
    math_fraction: float = 0.3  # share of math prompts in the training set


@dataclass
class RecapEvalConfig:
    name: str = "recap_eval"
    system_prompt: str | None = None
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # safety: reward and ASR (a guard's unsafe score)
    refusal_judge: JudgeConfig = field(default_factory=JudgeConfig)  # overrefusal: rubric reward and ORR
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    corpus: ReasoningCorpusConfig = field(default_factory=ReasoningCorpusConfig)
    prefill: PrefillConfig = field(default_factory=PrefillConfig)
    eval: AttackConfig = field(default_factory=AttackConfig)

    @staticmethod
    def validate(cfg: DictConfig) -> None:
        check_common(cfg)
        a = cfg.algorithm
        p = a.prefill
        if not 0.0 <= p.alpha <= 1.0:
            raise ConfigError(f"algorithm.prefill.alpha={p.alpha} must be in [0, 1]")
        for key in ("length", "tries", "max_new_tokens", "chunk"):
            if p[key] < 1:
                raise ConfigError(f"algorithm.prefill.{key}={p[key]} must be >= 1")
        if a.eval.ipr_rounds < 1 or a.eval.math_n_samples < 1:
            raise ConfigError("algorithm.eval.ipr_rounds and algorithm.eval.math_n_samples must be >= 1")
        bad = set(a.eval.attacks) - {"direct", "prefill", "hijack", "ipr"}
        if bad:
            raise ConfigError(f"algorithm.eval.attacks: unknown {sorted(bad)} (allowed: direct, prefill, hijack, ipr)")
        c = a.corpus
        if not (0 <= c.math_fraction < 1 and 0 <= c.recover <= 1 and 0 <= c.reset <= 1) or c.max_operand < 1:
            raise ConfigError("algorithm.corpus: math_fraction in [0, 1), recover and reset in [0, 1], "
                              "max_operand >= 1")
        if not 0 <= c.voices <= 1:
            raise ConfigError(f"algorithm.corpus.voices={c.voices} must be in [0, 1]")
        toy = {p.generator, p.refusal_generator} & set(TOY_GENERATORS)
        if toy and cfg.dataset.source != "builtin":
            raise ConfigError(f"algorithm.prefill: {sorted(toy)} are toy-world generators (dataset.source=builtin)")
        if cfg.dataset.source == "hf" and "rule" in (a.judge.name, a.refusal_judge.name):
            raise ConfigError("the rule judge knows only the toy world: name an LLM judge for benchmark files")


@dataclass
class RecapConfig(RecapEvalConfig):
    name: str = "recap"
    grpo: DAPOSettings = field(default_factory=DAPOSettings)
    lora: LoRAConfig = field(default_factory=LoRAConfig)

    @staticmethod
    def validate(cfg: DictConfig) -> None:
        from runner.safety.safety_rl import SafetyRLConfig

        RecapEvalConfig.validate(cfg)
        SafetyRLConfig.validate(cfg)  # the GRPO settings' checks (steps, batch, loss type, LoRA)
        g = cfg.algorithm.grpo
        if g.epsilon_high < g.epsilon:
            raise ConfigError(f"algorithm.grpo.epsilon_high={g.epsilon_high} must be >= epsilon={g.epsilon}")
        if not 0.0 <= g.math_fraction < 1.0:
            raise ConfigError(f"algorithm.grpo.math_fraction={g.math_fraction} must be in [0, 1)")


# --------------------------------------------------------------------------- data and policy
@dataclass
class ReasoningSets:
    train: list[SafetyRecord]  # safety and math training prompts
    test: dict[str, list[SafetyRecord]]  # harmful / benign / math held-out prompts
    world: ReasoningToyWorld | None
    info: dict[str, Any] = field(default_factory=dict)


def reasoning_sets(cfg: DictConfig, seed: int) -> ReasoningSets:
    """The reasoning toy world's splits, or the configured benchmark files sorted by domain."""
    if cfg.dataset.source == "builtin":
        world = ReasoningToyWorld(toy_world(cfg.dataset), ReasoningCorpusConfig(**cfg.algorithm.corpus))
        (train_s, train_m), (test_s, test_m) = world.records("train"), world.records("test")
        train, test_records = train_s + train_m, test_s + test_m
        info: dict[str, Any] = {}
    else:
        from runner.data.safety import load_benchmark_sets

        world = None
        train, evals, info = load_benchmark_sets(cfg.dataset, seed)
        test_records = [r for recs in evals.values() for r in recs]
    by = split_by_domain(test_records)
    return ReasoningSets(train, {"harmful": by["safety"], "benign": by["overrefusal"], "math": by["math"]}, world, info)


def training_prompts(records: list[SafetyRecord], harmful_fraction: float | None, math_fraction: float,
                     seed: int) -> list[SafetyRecord]:
    """Safety prompts balanced by ``harmful_fraction``, plus math prompts making up ``math_fraction``."""
    by = split_by_domain(records)
    safety = balance_prompts(by["safety"] + by["overrefusal"], harmful_fraction, seed)
    math = list(by["math"])
    random.Random(seed).shuffle(math)
    n_math = round(len(safety) * math_fraction / (1.0 - math_fraction)) if math else 0
    return safety + list(itertools.islice(itertools.cycle(math), n_math))


def build_reasoning_policy(cfg: DictConfig, ctx: RunContext, sets: ReasoningSets) -> tuple[Any, Any]:
    """tiny_lm with the reasoning template, warm-started on the reasoning corpus (``model.tokenizer=bpe``: a BPE
    trained on that corpus); or an HF model as it is."""
    from runner.models.builder import build_model, build_tokenizer
    from runner.models.finetune import finetune, token_stream
    from runner.models.tokenizer import byte_tokenizer

    a = cfg.algorithm
    texts: list[str] = []
    if a.warm_start.steps > 0 or (cfg.model.kind == "tiny" and cfg.model.tokenizer == "bpe"):
        world = sets.world or ReasoningToyWorld(toy_world(cfg.dataset), ReasoningCorpusConfig(**a.corpus))
        # rendered with the reasoning template of the byte tokenizer: the same text any built tokenizer renders
        texts = world.warm_start_corpus(use_reasoning_template(byte_tokenizer()), a.warm_start.examples, ctx.seed,
                                        WarmStartMix.from_mapping(cfg.dataset.params.get("mix")), a.system_prompt)
    tok = use_reasoning_template(build_tokenizer(cfg.model, texts or None))
    model = build_model(cfg.model, tok, cfg.hardware)
    if a.warm_start.steps > 0:
        finetune(model, token_stream(texts, tok), a.warm_start, ctx, stage="warm_start")
    return model, tok


def generator_engines(cfg: DictConfig, engine: Any, tok: Any, world: ReasoningToyWorld | None = None
                      ) -> dict[bool, tuple[Any, Any]]:
    """(engine, tokenizer) of the unsafe-reasoning generator (key True) and the refusing one (False):
    a configured model option, one of the toy world's scripted reasoners (:data:`TOY_GENERATORS`), or the
    policy's own engine."""
    from runner.models.builder import build_model_and_tokenizer
    from runner.rollout import build_engine
    from runner.safety.judges import judge_model_config

    p = cfg.algorithm.prefill
    out = {}
    for harmful, name, path in ((True, p.generator, p.generator_path), (False, p.refusal_generator,
                                                                       p.refusal_generator_path)):
        if not name:
            out[harmful] = (engine, tok)
            continue
        if name in TOY_GENERATORS:
            if world is None:
                raise ConfigError(f"algorithm.prefill: '{name}' is a toy-world generator (dataset.source=builtin)")
            out[harmful] = (ToyReasoner.named(world.world, name), tok)
            continue
        model_cfg = judge_model_config(OmegaConf.create({"model": name, "model_path": path}))
        g_model, g_tok = build_model_and_tokenizer(model_cfg, cfg.hardware)
        out[harmful] = (build_engine(cfg.hardware.rollout_engine, g_model, g_tok, cfg.hardware), g_tok)
    return out


# --------------------------------------------------------------------------- DAPO / RECAP training
def informative_groups(advantages: Any, group_size: int) -> Any:
    """DAPO's dynamic sampling as a filter: a boolean per completion, False for every completion of a group
    whose rewards were all equal (its advantages are all zero: no learning signal)."""
    import torch

    if advantages.numel() % group_size:
        raise ValueError(f"{advantages.numel()} completions do not split into groups of {group_size}")
    flat = advantages.reshape(-1, group_size, *advantages.shape[1:]).reshape(advantages.numel() // group_size, -1)
    keep = flat.abs().amax(dim=1) > 1e-6
    return torch.repeat_interleave(keep, group_size)


def group_kind(row: dict[str, Any]) -> str:
    """A training prompt's kind for the dynamic-sampling log: its domain (``all`` for rows without one),
    ``_prefilled`` when it has a prefill."""
    return row.get("domain", "all") + ("_prefilled" if row.get("prefilled") else "")


def kept_by_kind(rows: list[dict[str, Any]], keep: Any, group_size: int) -> dict[str, float]:
    """The share of groups of each kind (:func:`group_kind`) that dynamic sampling kept in one batch; ``rows``
    has one entry per completion, a group's ``group_size`` completions next to each other."""
    seen: dict[str, list[bool]] = {}
    for g in range(len(rows) // group_size):
        seen.setdefault(group_kind(rows[g * group_size]), []).append(bool(keep[g * group_size]))
    return {k: sum(v) / len(v) for k, v in seen.items()}


def dapo_trainer_class() -> type:
    """:class:`~runner.safety.trl_grpo.RunDirGRPOTrainer` with dynamic sampling (imported lazily: TRL)."""
    from runner.safety.trl_grpo import RunDirGRPOTrainer

    class DAPOTrainer(RunDirGRPOTrainer):
        """Dynamic sampling: completions of all-equal groups leave the loss and the DAPO token normaliser."""

        def __init__(self, *args: Any, dynamic_sampling: bool = True, **kwargs: Any):
            self.dynamic_sampling = dynamic_sampling
            super().__init__(*args, **kwargs)

        def _generate_and_score_completions(self, inputs: Any) -> dict:
            out = super()._generate_and_score_completions(inputs)
            if self.dynamic_sampling:
                keep = informative_groups(out["advantages"], self.num_generations)
                out["completion_mask"] = out["completion_mask"] * keep.unsqueeze(1).to(out["completion_mask"].dtype)
                out["num_items_in_batch"] = self.accelerator.gather(out["completion_mask"].sum()).sum()
                self._metrics["train"]["dynamic_sampling/kept"].append(keep.float().mean().item())
                for kind, share in kept_by_kind(inputs, keep, self.num_generations).items():
                    self._metrics["train"][f"dynamic_sampling/kept_{kind}"].append(share)
            return out

    return DAPOTrainer


def _log_callback(ctx: RunContext, stage: str) -> Any:
    from transformers import TrainerCallback

    class ToRunLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            nums = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            if nums and "train_runtime" not in nums:
                ctx.log(nums, state.global_step, stage)

    return ToRunLog()


def training_rows(tok: Any, records: list[SafetyRecord], prefills: list[str | None],
                  system_prompt: str | None) -> list[dict[str, Any]]:
    """TRL dataset rows: the prompt text (prefill included, inside the open reasoning block) and the columns
    the rewards read."""
    return [{"prompt": strip_bos(tok, prefilled_prompt(tok, chat_messages(r.prompt, system_prompt), pf)),
             "user": r.prompt, "domain": domain(r), "reference": r.reference, "prefilled": pf is not None}
            for r, pf in zip(records, prefills)]


def train_policy(cfg: DictConfig, ctx: RunContext, start: Any, tok: Any, rows: list[dict], rewards: list,
                 tag: str) -> Any:
    """DAPO from a copy of ``start`` on ``rows``; resumable in ``<run dir>/grpo_<tag>``."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback

    from runner.safety.safety_rl import grpo_args
    from runner.safety.trl_grpo import ReplicaDigest, finished_policy, resume_point

    g = cfg.algorithm.grpo
    model = copy.deepcopy(start)
    args = grpo_args(cfg, ctx)
    args.output_dir = str(ctx.path(f"grpo_{tag}"))
    args.epsilon_high = g.epsilon_high
    resume, step = resume_point(args.output_dir, ctx.metrics_path)
    lora = cfg.algorithm.lora.enabled
    if resume is not None and step >= args.max_steps:
        return finished_policy(model, resume, lora)
    trainer = dapo_trainer_class()(
        model=model, reward_funcs=rewards, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
        callbacks=[_log_callback(ctx, f"grpo_{tag}"), ReplicaDigest(ctx.log)], metrics_path=ctx.metrics_path,
        peft_config=peft_config(cfg.algorithm.lora), dynamic_sampling=g.dynamic_sampling)
    trainer.remove_callback(PrinterCallback)
    trainer.train(resume_from_checkpoint=resume)
    return merged_model(trainer.model)


# --------------------------------------------------------------------------- evaluation and report
def evaluate_system(cfg: DictConfig, ctx: RunContext, engine: Any, tok: Any, sets: ReasoningSets,
                    reasoning: dict, judges: tuple[Any, Any], tag: str) -> dict[str, Any]:
    a = cfg.algorithm
    metrics, rows = evaluate_reasoning_model(engine, tok, sets.test, reasoning, judges[0], judges[1], a.eval,
                                             a.prefill.length, ctx.seed + 1, a.system_prompt)
    ctx.write_jsonl(f"responses_{tag}.jsonl", [{"attack": k, **r} for k, rs in rows.items() for r in rs])
    ctx.log({k: v for k, v in metrics.items() if isinstance(v, float)}, 0, f"eval_{tag}")
    return metrics


def systems_table(systems: dict[str, dict]) -> str:
    """The systems table of summary.md (rates in %)."""
    rounds = sorted({k for m in systems.values() for k in (m.get("asr_ipr") or {})}, key=int)
    cols = ["asr_direct", "asr_prefill", "asr_hijack", *[f"asr_ipr k={k}" for k in rounds], "orr", "orr_prefill",
            "math_accuracy"]

    def cell(m: dict, c: str) -> str:
        v = m.get("asr_ipr", {}).get(c.split("=")[1]) if c.startswith("asr_ipr") else m.get(c)
        return "–" if v is None else f"{100 * v:.1f}"

    lines = ["| system | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    lines += [f"| {s} | " + " | ".join(cell(m, c) for c in cols) + " |" for s, m in systems.items()]
    return "Attack success, overrefusal and math accuracy (%), held-out prompts:\n\n" + "\n".join(lines)


def ipr_plot(ctx: RunContext, systems: dict[str, dict]) -> None:
    series = {}
    for name, m in systems.items():
        ks = sorted((m.get("asr_ipr") or {}), key=int)
        if ks:
            series[name] = ([0, *map(int, ks)], [m["asr_direct"], *(m["asr_ipr"][k] for k in ks)])
    if series:
        ctx.plot("asr_vs_ipr_rounds", series, "IPR rounds (0 = direct prompt)", "attack success rate",
                 title="ASR under iterative prefill reset")


def reward_plots(ctx: RunContext, tags: list[str]) -> dict[str, dict[str, float | None]]:
    """Per-domain reward curves of each training run; returns the first and last logged mean per domain."""
    summary: dict[str, dict[str, float | None]] = {}
    for dom in ("safety", "overrefusal", "math"):
        series = {}
        for tag in tags:
            recs = [r for r in ctx.metrics(f"grpo_{tag}") if f"rewards/{dom}/mean" in r]
            pts = [(r["step"], r[f"rewards/{dom}/mean"]) for r in recs]
            if pts:
                series[tag] = ([s for s, _ in pts], [v for _, v in pts])
                summary.setdefault(tag, {})[f"{dom}_first"] = pts[0][1]
                summary[tag][f"{dom}_last"] = pts[-1][1]
        if series:
            ctx.plot(f"reward_{dom}", series, "training step", f"mean {dom} reward",
                     title=f"{dom} reward during training (RECAP: incl. prefilled prompts)")
    return summary


def groups_kept(ctx: RunContext, tags: list[str]) -> dict[str, dict[str, float]]:
    """Per training run, the mean share of groups of each kind (domain, prefilled or not) that dynamic sampling
    kept over the logged windows."""
    out: dict[str, dict[str, float]] = {}
    prefix = "dynamic_sampling/kept_"
    for tag in tags:
        vals: dict[str, list[float]] = {}
        for r in ctx.metrics(f"grpo_{tag}"):
            for k, v in r.items():
                if k.startswith(prefix):
                    vals.setdefault(k[len(prefix):], []).append(v)
        out[tag] = {k: sum(v) / len(v) for k, v in sorted(vals.items())}
    return out


def _judges(cfg: DictConfig, sets: ReasoningSets) -> tuple[Any, Any]:
    a = cfg.algorithm
    world = sets.world.world if sets.world is not None else None
    safety = build_judge(a.judge, cfg.hardware, world=world)
    same = dict(a.refusal_judge) == dict(a.judge)
    return safety, safety if same else build_judge(a.refusal_judge, cfg.hardware, world=world)


def _prepare(cfg: DictConfig, ctx: RunContext) -> tuple[ReasoningSets, Any, Any, Any, tuple[Any, Any], dict]:
    """Data, base policy, its engine, judges, and the held-out prompts' flawed reasoning."""
    from runner.rollout import build_engine

    sets = reasoning_sets(cfg, ctx.seed)
    model, tok = build_reasoning_policy(cfg, ctx, sets)
    save_for_engine(model, tok, ctx, "policy_base", always=cfg.model.kind == "tiny")
    engine_model = copy.deepcopy(model) if cfg.hardware.rollout_engine == "hf" else model
    engine = build_engine(cfg.hardware.rollout_engine, engine_model, tok, cfg.hardware, seed=ctx.seed)
    judges = _judges(cfg, sets)
    gens = generator_engines(cfg, engine, tok, sets.world)
    test_safety = sets.test["harmful"] + sets.test["benign"]
    reasoning = build_prefills(ctx, "prefills_test", test_safety, gens, judges[0], cfg.algorithm.prefill,
                               cfg.algorithm.system_prompt)
    return sets, model, tok, engine, judges, {"gens": gens, "test": reasoning}


def _coverage(reasoning: dict, records: list[SafetyRecord]) -> float | None:
    safety = {r.prompt for r in records if r.family != "math"}
    return sum(bool(reasoning.get(p)) for p in safety) / len(safety) if safety else None


def run_recap(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """Warm start → prefills → DAPO and RECAP from the same start → every attack on base, DAPO, RECAP."""
    from runner.safety.recap_rewards import reward_funcs

    a = cfg.algorithm
    sets, model, tok, engine, judges, pre = _prepare(cfg, ctx)
    train = training_prompts(sets.train, a.grpo.harmful_fraction, a.grpo.math_fraction, ctx.seed)
    train_reasoning = build_prefills(ctx, "prefills_train", train, pre["gens"], judges[0], a.prefill,
                                     a.system_prompt)
    prefills = choose_prefilled(train, train_reasoning, a.prefill.alpha, a.prefill.length, ctx.seed)
    systems = {"base": evaluate_system(cfg, ctx, engine, tok, sets, pre["test"], judges, "base")}
    rewards = reward_funcs(*judges)
    for tag, pf in (("dapo", [None] * len(train)), ("recap", prefills)):
        trained = train_policy(cfg, ctx, model, tok, training_rows(tok, train, pf, a.system_prompt), rewards, tag)
        trained.eval()
        engine.update_weights(trained)
        systems[tag] = evaluate_system(cfg, ctx, engine, tok, sets, pre["test"], judges, tag)
        del trained
    ipr_plot(ctx, systems)
    curves = reward_plots(ctx, ["dapo", "recap"])
    n_pref = sum(p is not None for p in prefills)
    n_safety = sum(r.family != "math" for r in train)
    results = {
        "systems": systems,
        "prefill": {"alpha": a.prefill.alpha, "length": a.prefill.length, "alpha_realised": n_pref / max(n_safety, 1),
                    "coverage_train": _coverage(train_reasoning, train),
                    "coverage_test": _coverage(pre["test"], sets.test["harmful"] + sets.test["benign"]),
                    "n_prefilled_train": n_pref, "n_train": len(train)},
        "training": {"steps": a.grpo.steps, "prompts_per_step": a.grpo.prompts_per_step,
                     "num_generations": a.grpo.num_generations, "loss_type": a.grpo.loss_type,
                     "rewards": curves, "groups_kept": groups_kept(ctx, ["dapo", "recap"])},
        "judge": a.judge.name, **({"data": sets.info} if sets.info else {}),
    }
    ctx.notes.append(systems_table(systems))
    return results


def run_recap_eval(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """The prefill attacks, CoT hijack, IPR, overrefusal and math accuracy on one model."""
    a = cfg.algorithm
    sets, _, tok, engine, judges, pre = _prepare(cfg, ctx)
    systems = {"model": evaluate_system(cfg, ctx, engine, tok, sets, pre["test"], judges, "model")}
    ipr_plot(ctx, systems)
    ctx.notes.append(systems_table(systems))
    return {"systems": systems,
            "prefill": {"alpha": a.prefill.alpha, "length": a.eval.prefill_length or a.prefill.length,
                        "coverage_test": _coverage(pre["test"], sets.test["harmful"] + sets.test["benign"])},
            "judge": a.judge.name, "model": cfg.model.name, **({"data": sets.info} if sets.info else {})}
