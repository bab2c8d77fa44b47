"""One name-keyed registry for every pluggable component.

Entries are lazy import strings (``"module.path:attribute"``), so selecting a component imports only
that component, and an optional heavy dependency (vLLM, Ray, wandb) is imported only when selected.
Kinds:

- ``algorithm``: a recipe entry point ``run(cfg, ctx) -> results``, keyed by ``algorithm.name``;
- ``schema.<group>``: the dataclass schema of a config group option, keyed by the option's ``name``
  (``schema.algorithm`` is required for every algorithm; other groups fall back to a default schema);
- ``trainer``, ``evaluator``, ``simulator``, ``rollout``, ``judge``, ``logger``: components that the
  methods look up by the name written in the config.

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
        "smoke": _e("runner.models.finetune:run_smoke"),
    },
    "schema.algorithm": {
        "smoke": _e("runner.models.finetune:SmokeConfig"),
    },
    "schema.model": {},
    "schema.dataset": {},
    "schema.hardware": {},
    "schema.privacy": {},
    "schema.logger": {},
    "trainer": {},
    "evaluator": {},
    "simulator": {},
    "rollout": {
        "hf": _e("runner.rollout.hf:HFEngine"),
        "vllm": _e("runner.rollout.vllm:VLLMEngine", extra="gpu"),
    },
    "judge": {},
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
