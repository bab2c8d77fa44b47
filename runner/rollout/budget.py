"""Preflight of a GPU run's layout: vLLM tensor parallelism against the world size, and GPU memory.

Every vLLM engine reserves ``gpu_memory_utilization`` of each GPU it runs on (its weights and KV cache
live inside that share, which must exceed the weights), so the engines a recipe builds, plus what the
training processes hold beside them, must fit one GPU's ``hardware.gpu_memory_gb``:

    Σ_engines u_e  +  (training state + judges/guards on the HF engine) / gpu_memory_gb  ≤  1

The training state of a fully fine-tuned policy is ``P × b × 4`` (weights, gradients and AdamW's two
moments in the model dtype of ``b`` bytes, as the trainers keep them) plus ``P × b`` for a deep-copied
reference policy when the KL weight is positive. With LoRA (``algorithm.lora``) the base weights are held
once, the reference policy is the base with the adapter off, and only the adapters train (fp32: 16 bytes
per parameter). Data-parallel processes (``hardware.launcher``) each hold all of it, except safety_rl under
``hardware.launcher=accelerate`` with an ``accelerate_config`` (FSDP / ZeRO-3), which shards it over them.

Engines per recipe: WaltzRL one per policy (conversation, feedback, single-model RL), or one for all of them
with LoRA (vLLM multi-LoRA, :func:`runner.models.lora.adapter_engine`); safety_rl its evaluation engine and
TRL's colocated one (``algorithm.grpo.vllm_gpu_memory_utilization``); one per LLM judge and guard unless
``hardware.judge_engine=hf`` runs them beside training (their bf16 weights, no KV reservation). Activations
are not estimated: the check is a lower bound on what the run needs.

:func:`check_gpu_layout` runs in the CLI's preflight and raises a one-line ConfigError naming what to change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.core.errors import ConfigError

GB = 1e9
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
LORA_TRAINABLE_BYTES = 16  # fp32 adapter weight, gradient and two AdamW moments
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
OVERHEAD_GB = 2.0  # CUDA context and allocator slack on each GPU (activations are not estimated)


@dataclass(frozen=True)
class Arch:
    """A decoder-only (Llama/Mistral) architecture: enough to count its parameters."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False

    @property
    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of each projection of one layer: q, k, v, o, gate, up, down."""
        h, kv = self.hidden, self.hidden // self.heads * self.kv_heads
        return [(h, h), (h, kv), (h, kv), (h, h), (h, self.intermediate), (h, self.intermediate),
                (self.intermediate, h)]

    def num_params(self) -> int:
        per_layer = sum(i * o for i, o in self.linear_shapes) + 2 * self.hidden  # + two RMSNorm weights
        embed = self.vocab * self.hidden * (1 if self.tied else 2)
        return embed + self.layers * per_layer + self.hidden  # + final norm

    def lora_params(self, rank: int, targets: Any = LINEARS) -> int:
        """LoRA A (r × in) and B (out × r) on the targeted projections of every layer."""
        return self.layers * rank * sum(i + o for name, (i, o) in zip(LINEARS, self.linear_shapes) if name in targets)


# config.json of each paper-scale model option (used when model.path holds no config.json to read)
KNOWN: dict[str, Arch] = {
    "meta-llama/Llama-3.1-8B-Instruct": Arch(4096, 14336, 32, 32, 8, 128256),
    "meta-llama/Meta-Llama-3-70B-Instruct": Arch(8192, 28672, 80, 64, 8, 128256),
    "meta-llama/Llama-3.1-70B-Instruct": Arch(8192, 28672, 80, 64, 8, 128256),
    "meta-llama/Llama-Guard-3-8B": Arch(4096, 14336, 32, 32, 8, 128256),
    "meta-llama/Llama-Guard-3-1B": Arch(2048, 8192, 16, 32, 8, 128256, tied=True),
    "allenai/wildguard": Arch(4096, 14336, 32, 32, 8, 32000),
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B": Arch(4096, 14336, 32, 32, 8, 128256),
    "ibm-granite/granite-guardian-3.1-8b": Arch(4096, 12800, 40, 32, 8, 49155, tied=True),
}


def model_arch(model_cfg: Any) -> Arch:
    """The architecture of a model option: a local ``config.json``, the table above, or the tiny model's fields."""
    path = Path(model_cfg.path) / "config.json" if model_cfg.get("path") else None
    if path is not None and path.is_file():
        c = json.loads(path.read_text())
        return Arch(c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_attention_heads"],
                    c.get("num_key_value_heads") or c["num_attention_heads"], c["vocab_size"],
                    bool(c.get("tie_word_embeddings", False)))
    if model_cfg.get("kind", "tiny") == "tiny":
        vocab = model_cfg.vocab_size if model_cfg.get("tokenizer") == "bpe" else 260  # byte tokenizer: 256 + 4
        return Arch(model_cfg.hidden_size, model_cfg.intermediate_size, model_cfg.num_layers, model_cfg.num_heads,
                    model_cfg.num_kv_heads, vocab, bool(model_cfg.tie_word_embeddings))
    key = model_cfg.get("hf_id")
    if key not in KNOWN:
        raise ConfigError(f"cannot size model '{model_cfg.get('name')}' for the GPU memory check: set model.path to "
                          f"a directory with its config.json (known: {', '.join(sorted(KNOWN))})")
    return KNOWN[key]


@dataclass
class Engine:
    name: str
    utilization: float
    weights_gb: float  # the model's weights per GPU (split over the engine's tensor-parallel GPUs)


@dataclass
class Plan:
    """What one GPU holds: the vLLM engines' reservations and the memory used beside them."""

    engines: list[Engine]
    training_gb: float
    beside_gb: dict[str, float]  # HF-engine judges and guards, frozen bases, overhead
    gpu_gb: float

    @property
    def reserved(self) -> float:
        return sum(e.utilization for e in self.engines)

    @property
    def used_gb(self) -> float:
        return self.reserved * self.gpu_gb + self.training_gb + sum(self.beside_gb.values())


def world_size(cfg: Any) -> int:
    """Processes of the run: ``hardware.nproc`` (one per GPU) under a launcher, else one."""
    from runner.core.launch import launcher, num_processes

    return num_processes(cfg.hardware) if launcher(cfg) != "none" else 1


def lora_of(algo: Any) -> Any:
    """``algorithm.lora`` when it is enabled, else None."""
    lora = algo.get("lora")
    return lora if lora is not None and lora.get("enabled") else None


def _llm_judges(algo: Any) -> dict[str, Any]:
    """The LLM judges and guards a safety algorithm builds (rule, refusal-string and learned ones need no engine)."""
    from runner.safety.judges import judge_model_config

    found = {}
    for key, node in (("judge", algo.get("judge")), ("refusal_judge", algo.get("refusal_judge")),
                      ("guard", algo.get("guard")),
                      ("guard", (algo.get("baselines") or {}).get("guard"))):
        if node is not None and node.get("name") not in (None, "auto", "rule", "refusal_string", "learned"):
            found[key] = judge_model_config(node)
    return found


def _policies(cfg: Any) -> tuple[list[str], list[str], float]:
    """(trained policies, vLLM engines serving policies, the KL weight) of the recipe's algorithm. With LoRA,
    WaltzRL's policies (both agents and the single-model RL copy) are adapters of one base behind one engine."""
    a = cfg.algorithm
    if a.name == "waltzrl":
        single = a.baselines.get("single_model_rl_steps")
        trained = ["conversation", "feedback"] + ([] if single == 0 else ["single_model_rl"])
        return trained, ["+".join(trained)] if lora_of(a) is not None else list(trained), float(a.rl.beta)
    if a.name in ("safety_rl", "recap"):  # our evaluation engine and TRL's colocated one (recap: one run at a time)
        return ["policy"], ["policy", "grpo"], float(a.grpo.beta)
    if a.name == "smoke":
        return ["policy"], ["policy"], 0.0
    if a.name in ("safety_eval", "safety_eval_guarded", "recap_eval"):
        return [], ["policy"], 0.0
    return [], [], 0.0


def plan(cfg: Any) -> Plan | None:
    """The per-GPU memory plan of a composed config; None when it runs no GPU or names no GPU memory."""
    hw, a = cfg.hardware, cfg.algorithm
    if hw.device != "cuda" or not hw.get("gpu_memory_gb"):
        return None
    b = BYTES[hw.dtype]
    trained, policy_engines, beta = _policies(cfg)
    lora = lora_of(a)
    arch = model_arch(cfg.model) if trained or policy_engines else Arch(0, 0, 0, 1, 1, 0)  # no LM policy: no size
    p = arch.num_params()
    tp = hw.tensor_parallel_size
    judge_engine = hw.get("judge_engine") or hw.rollout_engine

    engines: list[Engine] = []
    beside: dict[str, float] = {"overhead": OVERHEAD_GB}
    if hw.rollout_engine == "vllm":
        for name in policy_engines:
            util = a.grpo.vllm_gpu_memory_utilization if name == "grpo" else hw.gpu_memory_utilization
            engines.append(Engine(name, util, p * b / tp / GB))
    for key, model_cfg in _llm_judges(a).items():
        w = model_arch(model_cfg).num_params() * b / GB
        if judge_engine == "vllm":
            engines.append(Engine(key, hw.gpu_memory_utilization, w / tp))
        else:
            beside[key] = w  # the hf engine's model, beside training

    if lora is not None and trained:
        beside["base"] = p * b / GB
        training = len(trained) * arch.lora_params(int(lora.r), lora.target_modules) * LORA_TRAINABLE_BYTES
    else:
        training = len(trained) * p * b * (4 + (1 if beta > 0 else 0))
        if not trained and policy_engines:
            beside["policy"] = p * b / GB  # the evaluated policy's HF model
    from runner.core.launch import launcher

    sharded = a.name == "safety_rl" and launcher(cfg) == "accelerate" and hw.get("accelerate_config")
    return Plan(engines, training / GB / (world_size(cfg) if sharded else 1), beside, float(hw.gpu_memory_gb))


def check_gpu_layout(cfg: Any) -> None:
    """A trainer's vLLM tensor parallelism divides its world size, and the plan fits one GPU; else a one-line
    ConfigError. (Under a launcher, :func:`runner.core.launch.check_launch` checks the divisibility.)"""
    hw = cfg.hardware
    if hw.device != "cuda":
        return
    from runner.core.launch import DATA_PARALLEL

    world, tp = world_size(cfg), hw.tensor_parallel_size
    if hw.rollout_engine == "vllm" and cfg.algorithm.name in DATA_PARALLEL and world % tp:
        raise ConfigError(
            f"hardware.tensor_parallel_size={tp} must divide the world size {world}: colocated vLLM runs one "
            f"tensor-parallel shard per training process; set hardware.launcher=torchrun (one process per GPU) "
            f"or hardware.tensor_parallel_size=1")
    pl = plan(cfg)
    if pl is None:
        return
    small = [e for e in pl.engines if e.utilization * pl.gpu_gb <= e.weights_gb]
    if pl.used_gb <= pl.gpu_gb and not small:
        return
    raise ConfigError(_message(cfg, pl, small))


def _message(cfg: Any, pl: Plan, small: list[Engine]) -> str:
    """One line: what does not fit, then what to change."""
    hw, a = cfg.hardware, cfg.algorithm
    fixes = []
    if _policies(cfg)[0] and lora_of(a) is None:
        fixes.append("algorithm.lora.enabled=true (one frozen base, one engine)")
    if any(e.name in ("judge", "guard") for e in pl.engines):
        fixes.append("hardware.judge_engine=hf (no vLLM engine per judge/guard)")
    if small and pl.used_gb <= pl.gpu_gb:
        e = small[0]
        return (f"vLLM engine '{e.name}' gets {e.utilization:g} × {pl.gpu_gb:g} GB = {e.utilization * pl.gpu_gb:.1f} "
                f"GB, no more than its {e.weights_gb:.1f} GB of weights (no room for a KV cache): raise "
                f"hardware.gpu_memory_utilization" + "".join(f", or set {f}" for f in fixes))
    utils = {e.utilization for e in pl.engines}
    reserve = (f"{len(pl.engines)} × {utils.pop():g}" if len(utils) == 1
               else " + ".join(f"{e.utilization:g}" for e in pl.engines))
    beside = {"training": pl.training_gb, **pl.beside_gb}
    engines = (f"{len(pl.engines)} vLLM engines ({', '.join(e.name for e in pl.engines)}) reserve {reserve} = "
               f"{pl.reserved:.2f} of it, and " if pl.engines else "")
    if pl.reserved > 0.5:
        fixes.append("lower hardware.gpu_memory_utilization")
    fixes.append("more GPUs (hardware=gpu8)" if hw.num_gpus < 8 else "GPUs with more memory (hardware.gpu_memory_gb)")
    return (f"GPU memory over budget on hardware={hw.name} ({pl.gpu_gb:g} GB per GPU): {engines}training state and "
            f"models beside the engines need {sum(beside.values()):.1f} GB "
            f"({', '.join(f'{k} {v:.1f}' for k, v in beside.items())}), {pl.used_gb:.0f} GB in all: set "
            + ", or ".join(fixes))
