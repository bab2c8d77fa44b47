"""Config schemas for every group and the one ``validate(cfg)`` that checks a composed config.

Hydra composes YAML; this module then binds each group to its dataclass schema, so a wrong type or an
unknown key fails and names the key. Group options pick their schema by ``name`` through the registry
(kind ``schema.<group>``); groups other than ``algorithm`` fall back to the defaults below. Checks
across fields live in ``validate``. Every failure is a ``ConfigError`` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runner.core import registry
from runner.core.claims import parse_claims
from runner.core.errors import ConfigError

GROUPS = ("algorithm", "model", "dataset", "hardware", "privacy", "logger")


@dataclass
class RunConfig:
    """Where and how a run executes. ``dir`` null means a fresh unique directory under ``output_root``."""

    name: str | None = None  # the recipe's name unless set
    output_root: str = "outputs"
    dir: str | None = None
    resume: str = "auto"  # auto: continue from the last checkpoint if the directory has one; never: refuse
    smoke: bool = False  # apply the recipe's ``smoke_overrides`` (small sizes for CI)
    smoke_overrides: dict[str, Any] = field(default_factory=dict)
    private_overrides: dict[str, Any] = field(default_factory=dict)  # applied when privacy.epsilon is set
    checkpoint_keep: int = 2
    progress: bool = True


@dataclass
class ModelConfig:
    """A model: ``kind=tiny`` builds a small Llama-architecture LM offline; ``kind=hf`` loads ``path`` or ``hf_id``."""

    name: str = "tiny_lm"
    kind: str = "tiny"
    hf_id: str | None = None
    path: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False
    tokenizer: str = "byte"  # tiny models: byte (fixed 256-symbol vocabulary) or bpe (trained on the corpus)
    vocab_size: int = 512  # bpe only
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 192
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True


@dataclass
class DatasetConfig:
    """A dataset: ``source=builtin`` generates it from the seed; ``hf`` loads ``hf_id``; ``file`` reads ``path``."""

    name: str = "tiny_corpus"
    source: str = "builtin"
    hf_id: str | None = None
    hf_config: str | None = None
    split: str = "train"
    path: str | None = None
    text_column: str = "text"
    num_examples: int | None = None
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class HardwareConfig:
    """Devices and engine settings; ``gpu1``/``gpu8`` select vLLM rollouts and bf16."""

    name: str = "cpu"
    device: str = "cpu"  # cpu | cuda | auto
    num_gpus: int = 0
    dtype: str = "float32"  # float32 | bfloat16 | float16
    rollout_engine: str = "hf"  # hf | vllm
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.85
    max_model_len: int | None = None
    enforce_eager: bool = False
    num_threads: int | None = None  # torch intra-op threads on CPU; null keeps torch's default
    gpu_memory_gb: float | None = None  # one GPU's memory: preflight checks the run's engines and training fit
    judge_engine: str | None = None  # engine of LLM judges and guards: null (rollout_engine) | hf | vllm
    launcher: str = "none"  # none | auto | torchrun | accelerate: nproc data-parallel processes (runner.core.launch)
    nproc: int | None = None  # processes on this node; null: one per GPU (one on CPU)
    accelerate_config: str | None = None  # launcher=accelerate: an accelerate config (FSDP / DeepSpeed ZeRO-3)
    print_launch: bool = False  # print the launch line instead of starting the processes


@dataclass
class PrivacyConfig:
    """A differential-privacy budget. ``epsilon`` null means no privacy accounting."""

    name: str = "none"
    epsilon: float | None = None
    delta: float | None = None
    accountant: str = "rdp"  # rdp | prv | gdp


@dataclass
class WandbConfig:
    project: str = "runner"
    entity: str | None = None
    mode: str = "offline"  # offline | online | disabled
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    """Metric loggers besides jsonl (always on): any of ``wandb``, ``tensorboard``."""

    name: str = "jsonl"
    backends: list[str] = field(default_factory=list)
    wandb: WandbConfig = field(default_factory=WandbConfig)


DEFAULT_SCHEMAS: dict[str, type | None] = {
    "algorithm": None,
    "model": ModelConfig,
    "dataset": DatasetConfig,
    "hardware": HardwareConfig,
    "privacy": PrivacyConfig,
    "logger": LoggerConfig,
}

_CHOICES = {
    ("run", "resume"): ("auto", "never"),
    ("model", "kind"): ("tiny", "hf"),
    ("model", "tokenizer"): ("byte", "bpe"),
    ("dataset", "source"): ("builtin", "hf", "file"),
    ("hardware", "device"): ("cpu", "cuda", "auto"),
    ("hardware", "dtype"): ("float32", "bfloat16", "float16"),
    ("privacy", "accountant"): ("rdp", "prv", "gdp"),
}


def schema_for(group: str, name: str) -> type:
    """The dataclass that a group option named ``name`` must fit."""
    kind = f"schema.{group}"
    if registry.has(kind, name):
        return registry.get(kind, name)
    schema = DEFAULT_SCHEMAS[group]
    if schema is None:
        raise ConfigError(
            f"{group}.name='{name}' has no registered schema "
            f"(registered: {', '.join(registry.names(kind)) or 'none'})"
        )
    return schema


def _allowed_keys(schema: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(schema))


def _bind(node: Any, schema: type, prefix: str) -> DictConfig:
    """Merge a config node into its structured schema, turning OmegaConf's errors into one line."""
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{prefix} must be a mapping of {schema.__name__} fields, got {node!r}")
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), node)
    except OmegaConfBaseException as e:
        key = f"{prefix}.{e.full_key}" if getattr(e, "full_key", None) else prefix
        msg = str(getattr(e, "msg", None) or e).splitlines()[0]
        if "not in" in msg or "Key '" in msg and "not" in msg:
            raise ConfigError(f"unknown key {key}: allowed keys are {_allowed_keys(schema)}") from None
        if re.search(r"Key \S+ \((int|float|bool)\) is incompatible with \(str\)", msg):
            msg += ("; this mapping has string keys: quote the key in YAML ('1': not 1:), and on the command line "
                    "set it by a dotted key (group.map.1.field=value)")
        raise ConfigError(f"bad value for {key}: {msg}") from None


def _as_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def bind_schemas(cfg: DictConfig) -> DictConfig:
    """Return a copy of ``cfg`` with every group bound to its schema (types and keys checked)."""
    if "recipe" in cfg:
        raise ConfigError(
            "'recipe' arrived as a plain key, not a selected recipe: the recipe group was not registered "
            "(run through `python -m runner +recipe=NAME`)"
        )
    allowed_top = {"seed", "run", "claims", *GROUPS}
    unknown = [k for k in cfg.keys() if k not in allowed_top and k != "hydra"]
    if unknown:
        allowed = ", ".join(sorted(allowed_top))
        raise ConfigError(f"unknown top-level key '{unknown[0]}': allowed keys are {allowed}")
    missing = [g for g in GROUPS if g not in cfg or cfg[g] is None]
    if missing:
        raise ConfigError(
            f"no {missing[0]} selected: choose a recipe with +recipe=NAME "
            f"(available: {', '.join(available_recipes())})"
        )
    out: dict[str, Any] = {"seed": cfg.get("seed", 0)}
    if not isinstance(out["seed"], int) or isinstance(out["seed"], bool):
        raise ConfigError(f"bad value for seed: expected an integer, got {out['seed']!r}")
    out["run"] = _bind(cfg.get("run", OmegaConf.create({})), RunConfig, "run")
    out["claims"] = _claims(cfg.get("claims"))
    for group in GROUPS:
        node = cfg[group]
        name = node.get("name") if isinstance(node, DictConfig) else None
        if not isinstance(name, str):
            raise ConfigError(f"{group}.name is missing: every {group} option must set a name")
        out[group] = _bind(node, schema_for(group, name), group)
    bound = OmegaConf.create(out)
    OmegaConf.set_struct(bound, True)
    return bound


def _claims(node: Any) -> dict[str, Any]:
    """The ``claims:`` block (name → expression over results.json; see runner.core.claims) as a plain dict."""
    if node is None:
        return {}
    if not isinstance(node, DictConfig):
        raise ConfigError(f"claims must be a mapping of name → expression, got {node!r}")
    return OmegaConf.to_container(node, resolve=True)  # type: ignore[return-value]


def available_recipes() -> list[str]:
    from runner import RECIPES_DIR

    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def _check_choice(cfg: DictConfig, group: str, key: str) -> None:
    if key not in cfg[group]:  # a registered schema of this group may not have the key
        return
    value = cfg[group][key]
    allowed = _CHOICES[(group, key)]
    if value not in allowed:
        raise ConfigError(f"bad value for {group}.{key}: '{value}' (allowed: {', '.join(allowed)})")


def _check_missing(cfg: DictConfig) -> None:
    """Values left as ``???`` (OmegaConf's MISSING) must be set before anything runs."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra"))
    if missing:
        raise ConfigError(f"missing required value for {missing[0]} (set it on the command line: {missing[0]}=VALUE)")


def validate(cfg: DictConfig) -> DictConfig:
    """Bind schemas, resolve interpolations, check missing values and cross-field rules; return the config."""
    _check_missing(cfg)
    bound = bind_schemas(cfg)
    _check_missing(bound)
    try:
        OmegaConf.resolve(bound)
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot resolve {getattr(e, 'full_key', '')}: {str(e).splitlines()[0]}") from None
    for group, key in _CHOICES:
        _check_choice(bound, group, key)

    hw, model, privacy, logger = bound.hardware, bound.model, bound.privacy, bound.logger
    engines = registry.names("rollout")
    if hw.rollout_engine not in engines:
        raise ConfigError(f"bad hardware.rollout_engine: '{hw.rollout_engine}' (allowed: {', '.join(engines)})")
    if hw.rollout_engine == "vllm" and hw.device == "cpu":
        raise ConfigError("hardware.rollout_engine=vllm needs hardware.device=cuda (vLLM does not run on CPU here)")
    if hw.device == "cuda" and hw.num_gpus < 1:
        raise ConfigError("hardware.device=cuda needs hardware.num_gpus >= 1")
    if hw.tensor_parallel_size < 1 or (hw.num_gpus and hw.tensor_parallel_size > hw.num_gpus):
        tp = hw.tensor_parallel_size
        raise ConfigError(f"hardware.tensor_parallel_size={tp} must be between 1 and hardware.num_gpus={hw.num_gpus}")
    if not 0.0 < hw.gpu_memory_utilization <= 1.0:
        raise ConfigError(f"hardware.gpu_memory_utilization={hw.gpu_memory_utilization} must be in (0, 1]")
    if hw.judge_engine is not None and hw.judge_engine not in engines:
        raise ConfigError(f"bad hardware.judge_engine: '{hw.judge_engine}' (allowed: null, {', '.join(engines)})")
    from runner.core.launch import check_launch

    check_launch(bound)
    if model.kind == "hf" and not (model.hf_id or model.path):
        raise ConfigError("model.kind=hf needs model.hf_id or model.path")
    if privacy.epsilon is not None:
        if privacy.epsilon <= 0:
            raise ConfigError(f"privacy.epsilon={privacy.epsilon} must be > 0")
        if privacy.delta is None or not 0.0 < privacy.delta < 1.0:
            raise ConfigError(f"privacy.delta={privacy.delta} must be in (0, 1) when privacy.epsilon is set")
    for backend in logger.backends:
        if backend not in ("wandb", "tensorboard"):
            raise ConfigError(f"bad value in logger.backends: '{backend}' (allowed: wandb, tensorboard)")
    if logger.wandb.mode not in ("offline", "online", "disabled"):
        mode = logger.wandb.mode
        raise ConfigError(f"bad value for logger.wandb.mode: '{mode}' (allowed: offline, online, disabled)")
    if bound.run.checkpoint_keep < 1:
        raise ConfigError("run.checkpoint_keep must be >= 1")
    parse_claims(bound.claims)  # syntax of every claim, before anything runs

    algo_check = getattr(schema_for("algorithm", bound.algorithm.name), "validate", None)
    if callable(algo_check):
        algo_check(bound)
    return bound


def _apply_overrides(cfg: DictConfig, block: str, explicit: set[str] | frozenset[str]) -> DictConfig:
    """Apply ``run.<block>`` (dotted keys → values) to ``cfg``; keys in ``explicit`` keep the user's value."""
    for key, value in (cfg.run.get(block) or {}).items():
        if key in explicit:
            continue
        try:
            OmegaConf.update(cfg, key, value, merge=True, force_add=False)
        except OmegaConfBaseException:
            raise ConfigError(f"run.{block} names unknown key {key}") from None
    return cfg


def apply_private(cfg: DictConfig, explicit: set[str] | frozenset[str] = frozenset()) -> DictConfig:
    """If the ``privacy`` group sets a budget, apply the recipe's ``run.private_overrides`` (dotted keys → values):
    the setting a recipe needs under DP (e.g. a larger population). Keys in ``explicit`` keep the user's value."""
    run, privacy = cfg.get("run"), cfg.get("privacy")
    if not run or not privacy or privacy.get("epsilon") is None:
        return cfg
    return _apply_overrides(cfg, "private_overrides", explicit)


def apply_smoke(cfg: DictConfig, explicit: set[str] | frozenset[str] = frozenset()) -> DictConfig:
    """If ``run.smoke`` is set, apply the recipe's ``run.smoke_overrides`` (dotted keys → values).

    Keys in ``explicit`` (set on the command line) keep the user's value.
    """
    run = cfg.get("run")
    if not run or not run.get("smoke"):
        return cfg
    return _apply_overrides(cfg, "smoke_overrides", explicit)


def to_plain(cfg: DictConfig | ListConfig) -> Any:
    return OmegaConf.to_container(cfg, resolve=True)
