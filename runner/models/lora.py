"""LoRA (PEFT) for the LM trainers: ``algorithm.lora``, named adapters on one frozen base, and their views.

``algorithm.lora.enabled=false`` (the embedded default) keeps full fine-tuning. Enabled:

- ``safety_rl`` hands :func:`peft_config` to TRL's ``GRPOTrainer`` (TRL wraps the policy and takes the
  base with the adapter disabled as its KL reference);
- WaltzRL's conversation and feedback agents become two adapters of one :class:`SharedAdapters` base (one
  copy of the weights). Each agent is an :class:`AdapterModel`, a view that activates its adapter before
  every forward or ``generate``, whose ``parameters()`` and ``state_dict()`` are its adapter's alone, so the
  trainer, the ``hf`` engine and checkpoints work on it unchanged. The reference policy is the same base
  with the adapter disabled (:meth:`AdapterModel.reference`), never a copy of the weights; an adapter that a
  warm start has already trained is referenced by a frozen snapshot of that adapter (r·(d_in + d_out)
  numbers per layer), since the untrained base is then not the policy RL started from.

LoRA on a linear layer W (d_out × d_in) adds (α/r)·B·A with A: r × d_in, B: d_out × r, B = 0 at start, so
an adapter adds r·(d_in + d_out) trainable numbers per targeted layer (:func:`lora_parameter_count`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.core.errors import ConfigError

LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoRAConfig:
    """``algorithm.lora``: train low-rank adapters on a frozen base instead of every weight."""

    enabled: bool = False
    r: int = 16
    alpha: float = 32.0  # scaling α/r
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_LINEARS))


def check_lora(lora: Any, prefix: str = "algorithm.lora") -> None:
    """Cross-field checks of ``algorithm.lora`` (ConfigError naming the key)."""
    if not lora.enabled:
        return
    if lora.r < 1:
        raise ConfigError(f"{prefix}.r={lora.r} must be >= 1")
    if lora.alpha <= 0:
        raise ConfigError(f"{prefix}.alpha={lora.alpha} must be > 0")
    if not 0 <= lora.dropout < 1:
        raise ConfigError(f"{prefix}.dropout={lora.dropout} must be in [0, 1)")
    if not lora.target_modules:
        raise ConfigError(f"{prefix}.target_modules must name at least one linear layer (e.g. q_proj, v_proj)")


def peft_config(lora: Any) -> Any:
    """A ``peft.LoraConfig`` for ``algorithm.lora``, or None when LoRA is off."""
    if lora is None or not lora.enabled:
        return None
    from peft import LoraConfig

    return LoraConfig(r=int(lora.r), lora_alpha=float(lora.alpha), lora_dropout=float(lora.dropout),
                      target_modules=list(lora.target_modules), bias="none", task_type="CAUSAL_LM")


def targeted_linears(model: Any, target_modules: Sequence[str]) -> list[tuple[str, Any]]:
    """The ``nn.Linear`` layers of ``model`` whose last name component is in ``target_modules``."""
    import torch

    wanted = set(target_modules)
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.rsplit(".", 1)[-1] in wanted]


def lora_parameter_count(model: Any, lora: Any) -> int:
    """r·(d_in + d_out) summed over the targeted linear layers of a model without adapters."""
    return sum(int(lora.r) * (m.in_features + m.out_features) for _, m in targeted_linears(model, lora.target_modules))


def trainable_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_counts(model: Any) -> dict[str, int]:
    """``{"total", "trainable"}`` numbers of a model (adapters included in total)."""
    return {"total": sum(p.numel() for p in model.parameters()), "trainable": trainable_parameters(model)}


# --------------------------------------------------------------------------- adapters on one base
class SharedAdapters:
    """One frozen base model carrying several named LoRA adapters (one PeftModel)."""

    def __init__(self, model: Any, lora: Any, names: Sequence[str]):
        from peft import get_peft_model

        if not names:
            raise ValueError("SharedAdapters needs at least one adapter name")
        self.lora = lora
        self.config = peft_config(lora)
        self.base_path = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
        self.peft = get_peft_model(model, self.config, adapter_name=names[0])
        for name in names[1:]:
            self.peft.add_adapter(name, self.config)
        self.views: dict[str, AdapterModel] = {}
        self._active: tuple[str, bool] | None = None  # (adapter, trainable) last set on the PeftModel
        self.engine: Any = None  # a rollout engine serving every adapter (vLLM multi-LoRA), built on demand

    def view(self, name: str) -> AdapterModel:
        if name not in self.peft.peft_config:
            raise KeyError(f"no adapter named {name!r} (have {sorted(self.peft.peft_config)})")
        return self.views.setdefault(name, AdapterModel(self, name))

    def add(self, name: str, copy_from: str | None = None) -> AdapterModel:
        """A new adapter ``name``: fresh (B = 0), or a copy of adapter ``copy_from``'s current weights."""
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        if name not in self.peft.peft_config:
            self.peft.add_adapter(name, self.config)
            self._active = None  # adding an adapter may change which parameters require grad
        if copy_from is not None:
            state = {k: v.detach().clone() for k, v in
                     get_peft_model_state_dict(self.peft, adapter_name=copy_from).items()}
            set_peft_model_state_dict(self.peft, state, adapter_name=name)
        return self.view(name)

    def activate(self, name: str, trainable: bool = True) -> None:
        """Make ``name`` the active adapter; only it requires grad (none does with ``trainable=False``)."""
        if self._active != (name, trainable):
            self.peft.set_adapter(name, inference_mode=not trainable)
            self._active = (name, trainable)

    def counts(self) -> dict[str, Any]:
        """Parameter counts: the base once, and each adapter's (trainable) numbers."""
        adapters = {n: sum(p.numel() for p in self.view(n).parameters()) for n in self.peft.peft_config}
        total = sum(p.numel() for p in self.peft.parameters())
        return {"base": total - sum(adapters.values()), "adapters": adapters, "base_copies": 1}


class AdapterModel:
    """One adapter of a :class:`SharedAdapters` base, used as a causal LM: every call activates the adapter.

    ``parameters``/``named_parameters``/``state_dict``/``load_state_dict`` cover the adapter only, so an
    optimiser trains the adapter alone and a checkpoint holds (and restores) just the adapter.
    """

    def __init__(self, shared: SharedAdapters, name: str):
        self.shared = shared
        self.name = name
        self.ref_name: str | None = None

    # ---- the LM interface used by trainers and the hf engine
    def _on(self) -> Any:
        self.shared.activate(self.name)
        return self.shared.peft

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._on()(*args, **kwargs)

    forward = __call__

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self._on().generate(*args, **kwargs)

    def train(self, mode: bool = True) -> AdapterModel:
        self.shared.peft.train(mode)
        return self

    def eval(self) -> AdapterModel:
        return self.train(False)

    @property
    def training(self) -> bool:
        return self.shared.peft.training

    @property
    def device(self) -> Any:
        return next(self.shared.peft.parameters()).device

    @property
    def dtype(self) -> Any:
        return next(self.shared.peft.parameters()).dtype

    @property
    def config(self) -> Any:
        return self.shared.peft.config

    @property
    def generation_config(self) -> Any:
        return self.shared.peft.generation_config

    def named_parameters(self) -> Iterator[tuple[str, Any]]:
        tag = f".{self.name}."
        return ((n, p) for n, p in self.shared.peft.named_parameters() if tag in n and ".lora_" in n)

    def parameters(self) -> Iterator[Any]:
        return (p for _, p in self.named_parameters())

    def state_dict(self) -> dict[str, Any]:
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in
                get_peft_model_state_dict(self.shared.peft, adapter_name=self.name).items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.shared.peft, state, adapter_name=self.name)
        missing = [k for k in getattr(result, "unexpected_keys", []) if ".lora_" in k]
        if missing:
            raise KeyError(f"adapter state for {self.name!r} has keys the model lacks: {missing[:3]}")

    def save_pretrained(self, path: Any) -> None:
        """The adapter alone (``adapter_config.json`` + weights) in ``path``: what vLLM's LoRARequest loads."""
        import os

        self.shared.peft.save_pretrained(str(path), selected_adapters=[self.name])
        nested = os.path.join(str(path), self.name)  # peft nests non-default adapters in a subfolder
        if os.path.isdir(nested):
            for f in os.listdir(nested):
                os.replace(os.path.join(nested, f), os.path.join(str(path), f))
            os.rmdir(nested)

    # ---- the reference policy
    def freeze_reference(self) -> None:
        """Fix the reference policy at the adapter's current weights: the base with the adapter disabled while
        the adapter is still untouched (B = 0), else a frozen snapshot adapter ``<name>_ref``."""
        if self.ref_name is not None:
            return
        if any(p.detach().abs().sum().item() > 0 for n, p in self.named_parameters() if ".lora_B." in n):
            self.ref_name = f"{self.name}_ref"
            self.shared.add(self.ref_name, copy_from=self.name)
            self.shared.activate(self.name)  # makes every other adapter, the snapshot too, non-trainable

    @contextlib.contextmanager
    def reference(self) -> Iterator[Any]:
        """The reference policy as a callable model, for the duration of the block (no weights copied)."""
        peft = self.shared.peft
        if self.ref_name is None:
            with peft.disable_adapter():
                yield peft
        else:
            self.shared.activate(self.ref_name, trainable=False)
            try:
                yield peft
            finally:
                self.shared.activate(self.name)


def is_adapter(model: Any) -> bool:
    return isinstance(model, AdapterModel)


@contextlib.contextmanager
def reference_policy(model: Any, ref: Any) -> Iterator[Any]:
    """``ref`` (a frozen copy) if there is one, else the adapter view's own reference (base, adapter off)."""
    if ref is not None:
        yield ref
    else:
        with model.reference() as r:
            yield r


def frozen_reference(model: Any) -> Any:
    """The KL reference a trainer keeps: None for an adapter view (its base is the reference, no copy), else a
    frozen deep copy of the full model."""
    import copy

    if is_adapter(model):
        model.freeze_reference()
        return None
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


def copy_policy(model: Any, name: str) -> Any:
    """An independent trainable copy of a policy: a new adapter cloned from the view's adapter (same base), or a
    deep copy of a full model."""
    import copy

    if is_adapter(model):
        return model.shared.add(name, copy_from=model.name)
    return copy.deepcopy(model)


def merged_model(model: Any) -> Any:
    """A TRL-trained PeftModel with its adapter merged into the base (plain HF parameter names, for engines);
    any other model unchanged."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


# --------------------------------------------------------------------------- rollout engines for adapters
class VLLMAdapterEngine:
    """One adapter of a vLLM engine that serves the shared base with LoRA enabled: each request carries this
    adapter's ``LoRARequest``. ``update_weights`` saves the adapter and issues a request under a new id (vLLM
    caches adapters by id), so the next rollout uses the new weights; the base weights never move."""

    def __init__(self, engine: Any, view: AdapterModel, root: Any):
        from pathlib import Path

        self.engine = engine
        self.view = view
        self.root = Path(root)
        self.request: Any = None
        self._dirs: list[Any] = []
        self.update_weights(view)

    def generate(self, prompts: Sequence[Any], params: Any) -> list[Any]:
        return self.engine.generate(prompts, params, lora_request=self.request)

    def update_weights(self, model: Any = None) -> None:
        import shutil

        from vllm.lora.request import LoRARequest

        shared = self.view.shared
        shared.lora_ids = getattr(shared, "lora_ids", 0) + 1
        path = self.root / f"{self.view.name}-{shared.lora_ids}"
        self.view.save_pretrained(path)
        self.request = LoRARequest(lora_name=f"{self.view.name}-{shared.lora_ids}", lora_int_id=shared.lora_ids,
                                   lora_path=str(path))
        self._dirs.append(path)
        while len(self._dirs) > 2:  # the previous version may still be cached by id; older ones are not needed
            shutil.rmtree(self._dirs.pop(0), ignore_errors=True)


VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the values vLLM's LoRAConfig accepts


def vllm_max_lora_rank(r: int) -> int:
    """vLLM's ``max_lora_rank`` for adapters of rank ``r``: the smallest value it accepts that is >= r."""
    for m in VLLM_MAX_LORA_RANKS:
        if m >= r:
            return m
    raise ValueError(f"algorithm.lora.r={r} exceeds vLLM's largest max_lora_rank {VLLM_MAX_LORA_RANKS[-1]}")


def adapter_engine(view: AdapterModel, tokenizer: Any, hardware_cfg: Any, ctx: Any, batch_size: int = 64) -> Any:
    """A rollout engine for one adapter view. ``hf``: generation on the shared model with the adapter switched
    on per call; ``vllm``: one engine for the base (built once per :class:`SharedAdapters`) with a LoRARequest
    per adapter."""
    from runner.core import distributed
    from runner.rollout import build_engine

    if hardware_cfg.rollout_engine != "vllm":
        return build_engine(hardware_cfg.rollout_engine, view, tokenizer, hardware_cfg, seed=ctx.seed,
                            batch_size=batch_size)
    shared = view.shared
    if not shared.base_path:
        raise ValueError("vLLM multi-LoRA serves the base from disk: save it first (model.name_or_path)")
    if shared.engine is None:
        from runner.core import registry

        engine_cls = registry.get("rollout", "vllm")
        base = shared.peft.get_base_model()
        base.name_or_path = shared.base_path
        shared.engine = engine_cls.from_model(base, tokenizer, hardware_cfg, seed=ctx.seed,
                                              lora_rank=vllm_max_lora_rank(int(shared.lora.r)))
    return VLLMAdapterEngine(shared.engine, view, ctx.dir / "adapters" / f"rank{distributed.rank()}")
