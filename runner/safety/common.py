"""Pieces the safety recipes share: prompt sets, the warm-started policy, judges, evaluation settings.

The embedded default (``dataset=toy_safety``, ``model=tiny_lm``) builds the toy world, fine-tunes tiny_lm
on its warm-start corpus with :func:`runner.models.finetune.finetune` (so the base policy has the chosen
unsafe and overrefusal rates) and judges with the rule judge. Paper-scale options name real benchmarks,
an HF policy (no warm start) and an LLM judge; the code path is the same.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from runner.core import distributed
from runner.core.context import RunContext
from runner.core.errors import ConfigError
from runner.data.safety import SafetyRecord, load_benchmark_sets
from runner.models.finetune import LMTrainConfig, check_train_config
from runner.rollout import SamplingParams
from runner.safety.world import ToySafetyWorld, WarmStartMix, warm_start_corpus


@dataclass
class WarmStartConfig(LMTrainConfig):
    """Warm-start fine-tuning of a tiny policy on the toy world's corpus (``steps=0`` skips it)."""

    examples: int = 3000


@dataclass
class EvalConfig:
    """How systems are sampled for evaluation: ``n_samples`` responses per prompt at ``temperature``."""

    n_samples: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 40
    batch_size: int = 64


def eval_sampling(e: Any, seed: int) -> SamplingParams:
    """Sampling parameters of an ``algorithm.eval`` node."""
    return SamplingParams(max_new_tokens=e.max_new_tokens, temperature=e.temperature, top_p=e.top_p, seed=seed)


def check_common(cfg: DictConfig) -> None:
    """Cross-field checks shared by the safety algorithms."""
    a = cfg.algorithm
    if cfg.dataset.get("source") not in ("builtin", "hf"):
        raise ConfigError(f"dataset.source={cfg.dataset.source} must be builtin (toy world) or hf (benchmarks)")
    if cfg.dataset.source == "hf" and not cfg.dataset.get("eval"):
        raise ConfigError("dataset.eval must list at least one benchmark when dataset.source=hf")
    if a.judge.name not in ("auto", "rule", "refusal_string") and not a.judge.model:
        raise ConfigError(f"algorithm.judge.name={a.judge.name} needs algorithm.judge.model")
    if cfg.dataset.source == "hf" and a.judge.name == "rule":
        raise ConfigError("algorithm.judge.name=rule only knows the toy world (dataset.source=builtin); "
                          "use auto or refusal_string for benchmark files, or an LLM judge")
    if a.warm_start.steps > 0:
        if cfg.model.kind != "tiny":
            raise ConfigError("algorithm.warm_start.steps must be 0 for model.kind=hf (warm start is for tiny models)")
        check_train_config(a.warm_start, "algorithm.warm_start")
    if a.eval.n_samples < 1 or a.eval.max_new_tokens < 1:
        raise ConfigError("algorithm.eval.n_samples and algorithm.eval.max_new_tokens must be >= 1")
    try:
        WarmStartMix.from_mapping(cfg.dataset.params.get("mix"))
    except ValueError as e:
        raise ConfigError(f"dataset.params.mix: {e}") from None


def toy_world(dataset_cfg: DictConfig) -> ToySafetyWorld:
    p = dataset_cfg.params
    return ToySafetyWorld(categories=p.get("categories"), include_adversarial=p.get("include_adversarial", True),
                          topics_per_category=p.get("topics_per_category"))


@dataclass
class PromptSets:
    """Training prompts, evaluation sets by name, and the toy world when there is one."""

    train: list[SafetyRecord]
    eval: dict[str, list[SafetyRecord]]
    world: ToySafetyWorld | None = None
    mix: WarmStartMix | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def prompt_sets(dataset_cfg: DictConfig, seed: int) -> PromptSets:
    """The toy world's train/test splits (``builtin``) or the configured benchmarks (``hf``)."""
    if dataset_cfg.source == "builtin":
        world = toy_world(dataset_cfg)
        return PromptSets(world.records("train"), {"toy_test": world.records("test")}, world,
                          WarmStartMix.from_mapping(dataset_cfg.params.get("mix")))
    train, evals, info = load_benchmark_sets(dataset_cfg, seed)
    return PromptSets(train, evals, extra={"data": info})


def balance_prompts(records: Sequence[SafetyRecord], harmful_fraction: float | None,
                    seed: int) -> list[SafetyRecord]:
    """The training prompts with harmful ones making up ``harmful_fraction``: the benign prompts once each and
    harmful ones drawn cyclically from a seeded shuffle (repeated if there are too few). ``None`` or a set
    without both kinds: unchanged.

    With unbalanced prompts, a policy that cannot yet tell the kinds apart gains reward by answering every
    prompt the majority's way, and policy-gradient updates (GRPO in ``safety_rl``, REINFORCE++ in WaltzRL)
    push it there before it learns the distinction; equal shares leave only the distinction to learn.
    """
    harmful = [r for r in records if r.harmful]
    benign = [r for r in records if not r.harmful]
    if harmful_fraction is None or not harmful or not benign:
        return list(records)
    order = list(harmful)
    random.Random(seed).shuffle(order)
    n = max(1, round(len(benign) * harmful_fraction / (1.0 - harmful_fraction)))
    return benign + list(itertools.islice(itertools.cycle(order), n))


def build_policy(cfg: DictConfig, ctx: RunContext, sets: PromptSets, stage: str = "warm_start"):
    """The policy and tokenizer: tiny_lm warm-started on the toy corpus, or an HF model as it is.

    A tiny policy evaluated on benchmark files is warm-started on the default toy world's corpus: the
    benchmark is only its evaluation set (an offline check of the data path, not a meaningful policy)."""
    from runner.models.builder import build_model_and_tokenizer
    from runner.models.finetune import finetune as run_finetune
    from runner.models.finetune import token_stream

    a = cfg.algorithm
    model, tok = build_model_and_tokenizer(cfg.model, cfg.hardware)
    if a.warm_start.steps > 0:
        texts = warm_start_corpus(sets.world or ToySafetyWorld(), tok, a.warm_start.examples, ctx.seed,
                                  sets.mix or WarmStartMix(), a.get("system_prompt"))
        run_finetune(model, token_stream(texts, tok), a.warm_start, ctx, stage=stage)
    return model, tok


def save_for_engine(model: Any, tok: Any, ctx: RunContext, name: str, always: bool = False) -> None:
    """Save weights to ``<run dir>/<name>`` and point ``model.name_or_path`` there: vLLM serves a checkpoint
    path and TRL builds its KL reference model from it. Skipped for the ``hf`` engine unless ``always``."""
    if ctx.cfg.hardware.rollout_engine == "hf" and not always:
        return
    path = ctx.path(name)
    if ctx.is_main:  # rank 0 writes; the other ranks of a multi-process run wait for the files
        model.save_pretrained(path)
        tok.save_pretrained(path)
    distributed.barrier()
    model.name_or_path = str(path)
    model.config._name_or_path = str(path)
