"""One name-keyed registry for every pluggable component.

Entries are lazy import strings (``"module.path:attribute"``), so selecting a component imports only
that component, and an optional heavy dependency (vLLM, Ray, wandb) is imported only when selected.
Kinds:

- ``algorithm``: a recipe entry point ``run(cfg, ctx) -> results``, keyed by ``algorithm.name``;
- ``schema.<group>``: the dataclass schema of a config group option, keyed by the option's ``name``
  (``schema.algorithm`` is required for every algorithm; other groups fall back to a default schema);
- ``trainer``, ``evaluator``, ``simulator``, ``rollout``, ``judge``, ``logger``, ``embedder``,
  ``fl_backend``, ``fl_codec``: components that the methods look up by the name written in the config.

Extras: entries whose import needs an optional dependency name it, so a missing one says what to install.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from runner.core.errors import ConfigError, MissingExtraError


@dataclass(frozen=True)
class Entry:
    target: str
    extra: str | None = None


def _e(target: str, extra: str | None = None) -> Entry:
    return Entry(target, extra)


REGISTRY: dict[str, dict[str, Entry]] = {
    "algorithm": {
        "latent_logit": _e("runner.choice.latent_logit:run_latent_logit"),
        "smoke": _e("runner.models.finetune:run_smoke"),
        "fred": _e("runner.privacy.fred:run_fred"),
        "pre_text": _e("runner.privacy.pre_text:run_pre_text"),
        "fedbuff": _e("runner.federated.recipes:run_fedbuff"),
        "papaya": _e("runner.federated.recipes:run_papaya"),
        "fedsynth": _e("runner.federated.fedsynth:run_fedsynth"),
        "guard_eval": _e("runner.guard.evaluate:run_guard_eval"),
        "guard_vision": _e("runner.guard.vision:run_guard_vision"),
        "llamaguard_1b_int4": _e("runner.guard.pipeline:run_llamaguard_1b_int4"),
        "safety_rl": _e("runner.safety.safety_rl:run_safety_rl"),
        "safety_eval": _e("runner.safety.baselines:run_safety_eval"),
        "safety_eval_guarded": _e("runner.safety.baselines:run_safety_eval_guarded"),
        "waltzrl": _e("runner.safety.waltzrl:run_waltzrl"),
        "recap": _e("runner.safety.recap:run_recap"),
        "recap_eval": _e("runner.safety.recap:run_recap_eval"),
    },
    "schema.algorithm": {
        "latent_logit": _e("runner.choice.latent_logit:LatentLogitConfig"),
        "smoke": _e("runner.models.finetune:SmokeConfig"),
        "fred": _e("runner.privacy.fred:FredConfig"),
        "pre_text": _e("runner.privacy.pre_text:PreTextConfig"),
        "fedbuff": _e("runner.federated.recipes:FedBuffConfig"),
        "papaya": _e("runner.federated.recipes:PapayaConfig"),
        "fedsynth": _e("runner.federated.fedsynth:FedSynthConfig"),
        "guard_eval": _e("runner.guard.evaluate:GuardEvalConfig"),
        "guard_vision": _e("runner.guard.vision:GuardVisionConfig"),
        "llamaguard_1b_int4": _e("runner.guard.pipeline:LlamaGuard1BInt4Config"),
        "safety_rl": _e("runner.safety.safety_rl:SafetyRLConfig"),
        "safety_eval": _e("runner.safety.baselines:SafetyEvalConfig"),
        "safety_eval_guarded": _e("runner.safety.baselines:SafetyEvalGuardedConfig"),
        "waltzrl": _e("runner.safety.waltzrl:WaltzRLConfig"),
        "recap": _e("runner.safety.recap:RecapConfig"),
        "recap_eval": _e("runner.safety.recap:RecapEvalConfig"),
    },
    "schema.model": {
        **{n: _e("runner.guard.vision_model:VisionModelConfig")
           for n in ("tiny_vision_guard", "llama_guard_3_11b_vision")},
        **{n: _e("runner.federated.models:FLModelConfig")
           for n in ("fl_mlp", "fl_logreg", "fl_cnn_celeba", "fl_cnn_femnist", "fl_cnn_cifar10", "fl_lstm_sent140")},
    },
    "schema.dataset": {
        **{n: _e("runner.data.federated:FederatedDatasetConfig")
           for n in ("fl_digits", "fl_synthetic", "femnist", "shakespeare", "sent140", "celeba", "cifar10")},
        **{n: _e("runner.data.safety:SafetyDatasetConfig")
           for n in ("toy_safety", "safety_eval_paper", "safety_rl_paper", "xstest", "strongreject", "harmbench",
                     "advbench", "wildjailbreak", "wildjailbreak_eval", "or_bench_hard_1k", "or_bench_80k",
                     "or_bench_toxic", "fortress", "beavertails", "toxicchat", "openai_moderation",
                     "recap_paper")},
    },
    "schema.hardware": {},
    "schema.privacy": {},
    "schema.logger": {},
    "trainer": {},
    "evaluator": {},
    "simulator": {
        "event": _e("runner.federated.simulator:Simulator"),
    },
    "fl_backend": {
        "local": _e("runner.federated.backends:LocalBackend"),
        "ray": _e("runner.federated.backends:RayBackend", extra="dist"),
    },
    "fl_codec": {
        "fedsynth": _e("runner.federated.fedsynth:FedSynthCodec"),
        "random_mask": _e("runner.federated.masks:RandomMaskCodec"),
        "structured_mask": _e("runner.federated.masks:StructuredMaskCodec"),
    },
    "rollout": {
        "hf": _e("runner.rollout.hf:HFEngine"),
        "vllm": _e("runner.rollout.vllm:VLLMEngine", extra="gpu"),
    },
    "judge": {
        "rule": _e("runner.safety.judges:RuleJudge"),
        "refusal_string": _e("runner.safety.judges:RefusalStringJudge"),
        "llama_guard": _e("runner.safety.judges:LlamaGuardJudge"),
        "wildguard": _e("runner.safety.judges:WildGuardJudge"),
        "strongreject": _e("runner.safety.judges:StrongRejectJudge"),
        "granite_guardian": _e("runner.safety.recap_rewards:GraniteGuardianJudge"),
    },
    "embedder": {
        "minilm": _e("runner.privacy.embedders:MiniLMEmbedder"),
        "causal_lm": _e("runner.privacy.embedders:CausalLMEmbedder"),
    },
    "logger": {
        "jsonl": _e("runner.core.logging:JsonlLogger"),
        "wandb": _e("runner.core.logging:WandbLogger"),
        "tensorboard": _e("runner.core.logging:TensorboardLogger"),
    },
}


def names(kind: str) -> list[str]:
    """Registered names of one kind, sorted."""
    return sorted(REGISTRY.get(kind, {}))


def has(kind: str, name: str) -> bool:
    return name in REGISTRY.get(kind, {})


def register(kind: str, name: str, target: str, extra: str | None = None) -> None:
    """Add an entry at run time (plugins, tests). Refuses to overwrite an existing one silently."""
    table = REGISTRY.setdefault(kind, {})
    if name in table and table[name].target != target:
        raise ValueError(f"{kind} '{name}' is already registered as {table[name].target}")
    table[name] = Entry(target, extra)


def get(kind: str, name: str) -> Any:
    """Import and return the component registered as ``name`` of ``kind``."""
    table = REGISTRY.get(kind)
    if table is None:
        raise ConfigError(f"unknown component kind '{kind}' (known: {', '.join(sorted(REGISTRY))})")
    if name not in table:
        raise ConfigError(f"unknown {kind} '{name}' (registered: {', '.join(sorted(table)) or 'none'})")
    entry = table[name]
    module_name, _, attr = entry.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except MissingExtraError:
        raise
    except ImportError as e:
        missing = (e.name or "").split(".")[0]
        if entry.extra and missing and missing != "runner":
            raise MissingExtraError(f"{kind} '{name}'", missing, entry.extra) from e
        raise
    try:
        return getattr(module, attr)
    except AttributeError as e:
        raise ImportError(f"registry entry {kind} '{name}' points to missing {entry.target}") from e
