"""Causal-LM fine-tuning with resumable checkpoints, and the ``smoke`` recipe built on it.

The loop is a compact AdamW + warmup/cosine loop over random windows of a packed token stream. It is
ours rather than ``transformers.Trainer`` so that every piece of state that decides the next step
(weights, optimizer, schedule, the data sampler's generator, global RNGs) is in one checkpoint and a
resumed run reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig

from runner.core.checkpoint import rng_state, set_rng_state
from runner.core.context import RunContext
from runner.core.errors import ConfigError


@dataclass
class LMTrainConfig:
    """Optimisation settings of :func:`finetune`."""

    steps: int = 300
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 20
    eval_every: int = 100
    eval_batches: int = 8
    checkpoint_every: int = 100


@dataclass
class SmokeConfig(LMTrainConfig):
    """The ``smoke`` algorithm: fine-tune, evaluate held-out loss, sample a few completions."""

    name: str = "smoke"
    sample_prompts: list[str] = field(default_factory=lambda: ["the cat", "a dog"])
    sample_max_new_tokens: int = 24

    @staticmethod
    def validate(cfg: DictConfig) -> None:
        check_train_config(cfg.algorithm, "algorithm")


def check_train_config(a: Any, prefix: str) -> None:
    for key in ("steps", "batch_size", "seq_len", "eval_every", "eval_batches", "checkpoint_every"):
        if a[key] < 1:
            raise ConfigError(f"{prefix}.{key}={a[key]} must be >= 1")
    if a.lr <= 0:
        raise ConfigError(f"{prefix}.lr={a.lr} must be > 0")
    if a.warmup_steps >= a.steps:
        raise ConfigError(f"{prefix}.warmup_steps={a.warmup_steps} must be < {prefix}.steps={a.steps}")


# --------------------------------------------------------------------------- data
def token_stream(texts: Sequence[str], tokenizer: Any) -> torch.Tensor:
    """All texts tokenized and packed into one 1-D stream, each followed by EOS."""
    ids: list[int] = []
    for ids_i in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids.extend(ids_i)
        ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def sample_windows(stream: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """``batch_size`` random windows of ``seq_len`` tokens."""
    if stream.numel() <= seq_len:
        raise ValueError(f"corpus has {stream.numel()} tokens, fewer than seq_len={seq_len}")
    starts = torch.randint(0, stream.numel() - seq_len, (batch_size,), generator=generator)
    return torch.stack([stream[s:s + seq_len] for s in starts.tolist()])


@torch.no_grad()
def evaluate_loss(model: Any, stream: torch.Tensor, seq_len: int, batch_size: int, n_batches: int) -> float:
    """Mean next-token cross-entropy over consecutive, non-overlapping windows of ``stream``."""
    was_training = model.training
    model.eval()
    n_windows = min(n_batches * batch_size, max(1, (stream.numel() - 1) // seq_len))
    windows = stream[: n_windows * seq_len].view(n_windows, seq_len)
    total, count = 0.0, 0
    for chunk in windows.split(batch_size):
        chunk = chunk.to(model.device)
        out = model(input_ids=chunk, labels=chunk)
        n = chunk.numel() - chunk.shape[0]
        total += out.loss.item() * n
        count += n
    model.train(was_training)
    return total / count


# --------------------------------------------------------------------------- training
@dataclass
class ResumableOptimizer:
    """AdamW with warmup + cosine schedule and the data sampler's generator: the state of a training stage.

    ``restore`` loads a stage's newest checkpoint (weights, optimizer, schedule, sampler and global RNGs)
    and returns the step to continue from; ``save`` writes them. Training loops built on it resume
    bit-identically.
    """

    model: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator

    @classmethod
    def create(cls, model: Any, cfg: Any, seed: int, params: Any = None) -> ResumableOptimizer:
        from transformers import get_cosine_schedule_with_warmup

        params = list(params if params is not None else model.parameters())
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = get_cosine_schedule_with_warmup(opt, min(cfg.warmup_steps, cfg.steps - 1), cfg.steps)
        return cls(model, opt, sched, torch.Generator().manual_seed(seed))

    def restore(self, ctx: RunContext, stage: str) -> int:
        state = ctx.restore(stage)
        if state is None:
            return 0
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])
        set_rng_state(state["rng"])
        return int(state["step"])

    def save(self, ctx: RunContext, stage: str, step: int) -> None:
        ctx.save(stage, step, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "generator": self.generator.get_state(),
            "rng": rng_state(), "step": step,
        })

    def step(self, loss: torch.Tensor, max_grad_norm: float = 1.0) -> float:
        """Backward, clip, optimizer and schedule step; returns the learning rate used."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_grad_norm)
        self.optimizer.step()
        lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        return lr


def finetune(model: Any, train: torch.Tensor, cfg: Any, ctx: RunContext, stage: str = "finetune",
             evaluate: Callable[[], dict[str, float]] | None = None) -> None:
    """Train ``model`` on windows of ``train``; log loss, evaluate and checkpoint; resume if a checkpoint exists."""
    model.train()
    opt = ResumableOptimizer.create(model, cfg, ctx.seed)
    start = opt.restore(ctx, stage)
    bar = ctx.progress(total=cfg.steps, initial=start, desc=stage)
    for step in range(start + 1, cfg.steps + 1):
        batch = sample_windows(train, cfg.batch_size, cfg.seq_len, opt.generator).to(model.device)
        loss = model(input_ids=batch, labels=batch).loss
        metrics = {"loss": loss.item(), "lr": opt.step(loss)}
        if evaluate is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
            metrics.update(evaluate())
        ctx.log(metrics, step, stage)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}", refresh=False)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            opt.save(ctx, stage, step)
    bar.close()
    model.eval()


def run_smoke(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """Fine-tune the configured model on the configured corpus; report loss before/after and samples."""
    from runner.data.text import load_text_corpus, split_heldout
    from runner.models.builder import build_model_and_tokenizer
    from runner.rollout import SamplingParams, build_engine

    a = cfg.algorithm
    texts = load_text_corpus(cfg.dataset, ctx.seed)
    train_texts, heldout_texts = split_heldout(texts, cfg.dataset.params.get("heldout_fraction", 0.1), ctx.seed)
    model, tok = build_model_and_tokenizer(cfg.model, cfg.hardware, corpus=train_texts)
    train, heldout = token_stream(train_texts, tok), token_stream(heldout_texts, tok)

    def evaluate() -> dict[str, float]:
        loss = evaluate_loss(model, heldout, a.seq_len, a.batch_size, a.eval_batches)
        return {"eval_loss": loss, "eval_perplexity": math.exp(loss)}

    initial = evaluate()
    finetune(model, train, a, ctx, stage="finetune", evaluate=evaluate)
    final = evaluate()

    engine = build_engine(cfg.hardware.rollout_engine, model, tok, cfg.hardware, seed=ctx.seed)
    samples = engine.generate(list(a.sample_prompts),
                              SamplingParams(max_new_tokens=a.sample_max_new_tokens, temperature=0.0))
    records = ctx.metrics("finetune")
    steps = [r["step"] for r in records]
    losses = [r["loss"] for r in records]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    ctx.plot("loss", {"train": (steps, losses), "held-out": ([0] + [s for s, _ in evals],
                                                             [initial["eval_loss"]] + [v for _, v in evals])},
             "step", "cross-entropy (nats/token)", title="smoke: tiny_lm fine-tuning")
    k = max(1, min(10, len(losses) // 5))
    return {
        "train_loss_first": sum(losses[:k]) / k,
        "train_loss_last": sum(losses[-k:]) / k,
        "eval_loss_initial": initial["eval_loss"],
        "eval_loss": final["eval_loss"],
        "eval_perplexity": final["eval_perplexity"],
        "steps": a.steps,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "samples": {p: s.text for p, s in zip(a.sample_prompts, samples)},
    }
