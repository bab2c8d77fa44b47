"""``safety_rl``: single-model safety RL with a judge's reward (the WaltzRL paper's "single-model RL" baseline).

1. Prompt sets: the toy world's train/test templates, or WildJailbreak + OR-Bench-80K for training and
   the paper's benchmarks for evaluation.
2. Base policy: tiny_lm warm-started on the toy corpus (chosen unsafe and overrefusal rates), or an HF
   model as it is.
3. Evaluate the base policy on the held-out sets through the rollout engine (``hf`` or ``vllm``).
4. GRPO (TRL's ``GRPOTrainer``): G samples per prompt, reward R_c = 1[not unsafe and not overrefusal]
   from the judge (:func:`runner.safety.judges.harmless_helpful_reward`), group-normalised advantages,
   clipped ratio, β·KL to the reference. The prompts are balanced between harmful and benign
   (:func:`balance_prompts`), and completions cut off at ``max_completion_length`` are left out of the loss
   (DAPO's overlong masking). On GPU the trainer generates with vLLM (colocated). A rerun in the same
   run dir resumes exactly (:mod:`runner.safety.trl_grpo`).
5. Evaluate the trained policy the same way; report ``base`` and ``trained`` ASR/ORR and a Pareto plot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from runner.core import distributed
from runner.core.context import RunContext
from runner.core.errors import ConfigError
from runner.core.launch import launcher, num_processes
from runner.models.lora import LoRAConfig, check_lora, lora_parameter_count, merged_model, peft_config
from runner.safety.common import (
    EvalConfig,
    WarmStartConfig,
    balance_prompts,
    build_policy,
    check_common,
    eval_sampling,
    prompt_sets,
    save_for_engine,
)
from runner.safety.evaluate import evaluate, headline, model_system, pareto_plot, write_responses
from runner.safety.judges import JudgeConfig, build_judge, harmless_helpful_reward
from runner.safety.world import chat_messages


@dataclass
class GRPOSettings:
    """GRPO hyperparameters (TRL ``GRPOConfig`` fields of the same meaning)."""

    steps: int = 150
    prompts_per_step: int = 8
    num_generations: int = 8  # G: samples per prompt (the group)
    learning_rate: float = 3.0e-4
    beta: float = 0.04  # KL coefficient to the reference policy
    epsilon: float = 0.2  # PPO clip range
    temperature: float = 1.0
    max_completion_length: int = 40
    loss_type: str = "grpo"  # TRL loss_type: grpo | dapo | dr_grpo | bnpo
    scale_rewards: str = "group"  # TRL: group | batch | none
    mask_truncated_completions: bool = True  # DAPO: a completion cut off at max_completion_length is not trained on
    harmful_fraction: float | None = 0.5  # share of harmful prompts in the training set (null: the data's own mix)
    warmup_steps: int = 0
    logging_steps: int = 5
    checkpoint_every: int = 50
    vllm_gpu_memory_utilization: float = 0.3


@dataclass
class SafetyRLConfig:
    name: str = "safety_rl"
    system_prompt: str | None = None
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    warm_start: WarmStartConfig = field(default_factory=WarmStartConfig)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)  # train a LoRA adapter (TRL peft_config), not every weight

    @staticmethod
    def validate(cfg: DictConfig) -> None:
        check_common(cfg)
        check_lora(cfg.algorithm.lora)
        g = cfg.algorithm.grpo
        n_proc = num_processes(cfg.hardware) if launcher(cfg) != "none" else 1
        if g.prompts_per_step % n_proc:
            raise ConfigError(f"algorithm.grpo.prompts_per_step={g.prompts_per_step} must be a multiple of the "
                              f"number of processes ({n_proc}): each takes an equal share of the batch")
        for key in ("steps", "prompts_per_step", "logging_steps", "checkpoint_every", "max_completion_length"):
            if g[key] < 1:
                raise ConfigError(f"algorithm.grpo.{key}={g[key]} must be >= 1")
        if g.num_generations < 2:
            raise ConfigError(f"algorithm.grpo.num_generations={g.num_generations} must be >= 2 (a GRPO group)")
        if g.checkpoint_every % g.logging_steps:
            # TRL averages metrics over a logging window; a resume mid-window would log a shorter average
            raise ConfigError(f"algorithm.grpo.checkpoint_every={g.checkpoint_every} must be a multiple of "
                              f"algorithm.grpo.logging_steps={g.logging_steps} (exact resume)")
        if g.learning_rate <= 0:
            raise ConfigError(f"algorithm.grpo.learning_rate={g.learning_rate} must be > 0")
        if g.harmful_fraction is not None and not 0.0 < g.harmful_fraction < 1.0:
            raise ConfigError(f"algorithm.grpo.harmful_fraction={g.harmful_fraction} must be in (0, 1) or null")
        if g.loss_type not in ("grpo", "dapo", "dr_grpo", "bnpo"):
            raise ConfigError(f"algorithm.grpo.loss_type={g.loss_type} (allowed: grpo, dapo, dr_grpo, bnpo)")
        if g.scale_rewards not in ("group", "batch", "none"):
            raise ConfigError(f"algorithm.grpo.scale_rewards={g.scale_rewards} (allowed: group, batch, none)")


def judge_reward_fn(judge: Any):
    """A TRL reward function: judge (user prompt, completion) pairs; the dataset's ``harmful`` column says
    which rule of R_c applies."""

    def safety_reward(prompts: list, completions: list, harmful: list[bool], **_: Any) -> list[float]:
        users = [p[-1]["content"] if isinstance(p, list) else p for p in prompts]
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        verdicts = judge.judge(users, texts)
        return [harmless_helpful_reward(v, bool(h)) for v, h in zip(verdicts, harmful)]

    return safety_reward


def grpo_args(cfg: DictConfig, ctx: RunContext) -> Any:
    """TRL ``GRPOConfig`` from ``algorithm.grpo`` and the hardware: CPU fp32, or GPU bf16 with vLLM."""
    from trl import GRPOConfig

    g, hw = cfg.algorithm.grpo, cfg.hardware
    on_gpu = hw.device != "cpu"
    kw: dict[str, Any] = {}
    if on_gpu and hw.rollout_engine == "vllm":
        kw = {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": g.vllm_gpu_memory_utilization,
              "vllm_tensor_parallel_size": hw.tensor_parallel_size}
    return GRPOConfig(
        output_dir=str(ctx.path("grpo")), use_cpu=not on_gpu, bf16=on_gpu and hw.dtype == "bfloat16",
        report_to=[], max_steps=g.steps,
        per_device_train_batch_size=g.prompts_per_step * g.num_generations // distributed.world_size(),
        num_generations=g.num_generations, max_completion_length=g.max_completion_length,
        learning_rate=g.learning_rate, lr_scheduler_type="constant_with_warmup", warmup_steps=g.warmup_steps,
        beta=g.beta, epsilon=g.epsilon, temperature=g.temperature, loss_type=g.loss_type,
        scale_rewards=g.scale_rewards, mask_truncated_completions=g.mask_truncated_completions,
        logging_steps=g.logging_steps, save_strategy="steps", save_steps=g.checkpoint_every,
        save_total_limit=2,  # the newest complete checkpoint survives a kill during the next save
        seed=ctx.seed, data_seed=ctx.seed,
        disable_tqdm=not cfg.run.progress, dataloader_num_workers=0, **kw,
    )


def _log_callback(ctx: RunContext):
    from transformers import TrainerCallback

    class ToRunLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            nums = {k: float(v) for k, v in (logs or {}).items() if isinstance(v, (int, float))}
            if nums and "train_runtime" not in nums:  # the end-of-training summary: timings and a mean loss
                ctx.log(nums, state.global_step, "grpo")

    return ToRunLog()


def train_grpo(cfg: DictConfig, ctx: RunContext, model: Any, tok: Any, train_records: list, judge: Any) -> Any:
    """Run TRL's GRPOTrainer on the training prompts; a rerun in the same run dir resumes exactly from its last
    complete checkpoint (:mod:`runner.safety.trl_grpo`)."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback

    from runner.safety.trl_grpo import ReplicaDigest, RunDirGRPOTrainer, finished_policy, resume_point

    prompts = balance_prompts(train_records, cfg.algorithm.grpo.harmful_fraction, ctx.seed)
    rows = [{"prompt": chat_messages(r.prompt, cfg.algorithm.system_prompt), "harmful": r.harmful} for r in prompts]
    args = grpo_args(cfg, ctx)
    resume, step = resume_point(args.output_dir, ctx.metrics_path)
    lora = cfg.algorithm.lora.enabled
    if resume is not None and step >= args.max_steps:  # finished before the run was stopped: its final weights
        return finished_policy(model, resume, lora)
    trainer = RunDirGRPOTrainer(model=model, reward_funcs=judge_reward_fn(judge), args=args,
                                train_dataset=Dataset.from_list(rows), processing_class=tok,
                                callbacks=[_log_callback(ctx), ReplicaDigest(ctx.log)], metrics_path=ctx.metrics_path,
                                peft_config=peft_config(cfg.algorithm.lora))
    trainer.remove_callback(PrinterCallback)  # metrics go to the run's loggers instead of stdout
    trainer.train(resume_from_checkpoint=resume)
    return merged_model(trainer.model)  # LoRA: the adapter merged into the policy the engines serve


def evaluate_policy(cfg: DictConfig, ctx: RunContext, engine: Any, eval_sets: dict, judge: Any, tag: str) -> dict:
    """Evaluate a policy behind ``engine`` on every eval set; dump its responses; log its headline."""
    a = cfg.algorithm
    system = model_system(engine, eval_sampling(a.eval, ctx.seed + 1), a.system_prompt)
    result = evaluate(system, eval_sets, judge, n_samples=a.eval.n_samples)
    write_responses(ctx, f"responses_{tag}", result.rows)
    ctx.log({k: v for k, v in headline(result.metrics).items() if isinstance(v, (int, float))}, 0, f"eval_{tag}")
    return result.metrics


def run_safety_rl(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """Warm start → evaluate base → GRPO with the judge's reward → evaluate trained → results and plots."""
    from runner.rollout import build_engine

    a = cfg.algorithm
    sets = prompt_sets(cfg.dataset, ctx.seed)
    model, tok = build_policy(cfg, ctx, sets)
    judge = build_judge(a.judge, cfg.hardware, world=sets.world)
    lora_info = ({"lora": {"trainable": lora_parameter_count(model, a.lora),
                           "base": sum(p.numel() for p in model.parameters())}} if a.lora.enabled else {})

    # a warm-started tiny policy exists only in memory: save it for vLLM and for TRL's reference model
    save_for_engine(model, tok, ctx, "policy_base", always=cfg.model.kind == "tiny")
    engine = build_engine(cfg.hardware.rollout_engine, model, tok, cfg.hardware, seed=ctx.seed)
    base = evaluate_policy(cfg, ctx, engine, sets.eval, judge, "base")

    model = train_grpo(cfg, ctx, model, tok, sets.train, judge)
    model.eval()
    engine.update_weights(model)
    trained = evaluate_policy(cfg, ctx, engine, sets.eval, judge, "trained")

    records = ctx.metrics("grpo")
    rewards = [(r["step"], r["reward"]) for r in records if "reward" in r]
    if rewards:
        ctx.plot("reward", {"mean reward": ([s for s, _ in rewards], [v for _, v in rewards])}, "GRPO step",
                 "R_c (1 = safe and helpful)", title="safety_rl: judge reward during GRPO")
    pareto_plot(ctx, {"base": (base["orr"], base["asr"]), "single-model RL": (trained["orr"], trained["asr"])})
    return {
        "base": headline(base), "trained": headline(trained),
        "per_dataset": {"base": {k: {"asr": v["asr"], "orr": v["orr"]} for k, v in base["per_dataset"].items()},
                        "trained": {k: {"asr": v["asr"], "orr": v["orr"]} for k, v in trained["per_dataset"].items()}},
        "labels": {"base": base["labels"], "trained": trained["labels"]},
        "grpo": {"steps": a.grpo.steps, "final_reward": rewards[-1][1] if rewards else None,
                 "first_reward": rewards[0][1] if rewards else None},
        "judge": a.judge.name, **lora_info,
    }
