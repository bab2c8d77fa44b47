"""Supervised guard training and logit distillation on moderation examples.

A guard example is its rendered classification prompt followed by the answer tokens (``safe`` / ``unsafe\\nS1``)
and EOS; the loss covers only the answer positions. With a teacher the loss is the paper's mix (its exact form
is unverified; this is the common one):

    L = (1 − r) · CE(y, p_student) + r · T² · KL(p_teacher^T ‖ p_student^T)

with forward KL at temperature ``T`` over the full vocabulary, on the same answer positions. The loop is
resumable: weights, optimizer, schedule, the batch sampler's generator and the global RNGs are checkpointed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from runner.core.context import RunContext
from runner.data.moderation import ModerationExample
from runner.guard.format import guard_answer, guard_instruction, render
from runner.models.finetune import ResumableOptimizer


@dataclass
class GuardPrompter:
    """Renders moderation examples as Llama Guard prompts for one tokenizer, category list and wrapping."""

    tokenizer: Any
    categories: list[str]
    wrap: str = "llama3"

    def prompt(self, ex: ModerationExample) -> str:
        return render(guard_instruction(ex.prompt, ex.response, self.categories), self.tokenizer, self.wrap)

    def answer(self, ex: ModerationExample) -> str:
        """The training target. Items of binary-only sources (no codes) train on ``unsafe`` alone."""
        cats = [c for c in ex.categories if c in self.categories]
        if ex.unsafe and not cats:
            return "unsafe"
        return guard_answer(cats if ex.unsafe else [])

    def encode(self, examples: Sequence[ModerationExample]) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, answer ids + EOS) per example."""
        tok = self.tokenizer
        prompts = tok([self.prompt(e) for e in examples], add_special_tokens=False)["input_ids"]
        answers = tok([self.answer(e) for e in examples], add_special_tokens=False)["input_ids"]
        return [(p, a + [tok.eos_token_id]) for p, a in zip(prompts, answers)]


def collate(items: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (−100 outside the answer)."""
    length = max(len(p) + len(a) for p, a in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (p, a) in enumerate(items):
        seq = p + a
        ids[i, : len(seq)] = torch.tensor(seq)
        mask[i, : len(seq)] = 1
        labels[i, len(p): len(seq)] = torch.tensor(a)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def guard_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None,
               ratio: float = 0.0, temperature: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """(1 − r)·CE + r·T²·KL(teacher‖student) over the answer positions (next-token shifted)."""
    logits, target = logits[:, :-1].float(), labels[:, 1:]
    keep = target != -100
    ce = F.cross_entropy(logits[keep], target[keep])
    if teacher_logits is None or ratio == 0.0:
        return ce, {"ce": ce.item()}
    s = F.log_softmax(logits[keep] / temperature, -1)
    t = F.log_softmax(teacher_logits[:, :-1].float()[keep] / temperature, -1)
    # forward KL: Σ p_t (log p_t − log p_s); −inf teacher entries (pruned outputs) contribute 0
    kl = torch.where(t.isfinite(), t.exp() * (t - s), torch.zeros_like(t)).sum(-1).mean() * temperature ** 2
    loss = (1 - ratio) * ce + ratio * kl
    return loss, {"ce": ce.item(), "kl": kl.item()}


@dataclass
class GuardTrainConfig:
    steps: int
    batch_size: int
    lr: float
    warmup_steps: int = 10
    weight_decay: float = 0.0
    checkpoint_every: int = 50
    distill_ratio: float = 0.0
    temperature: float = 1.0


def train_guard(model: Any, data: Sequence[tuple[list[int], list[int]]], cfg: GuardTrainConfig, ctx: RunContext,
                stage: str, pad_id: int, teacher: Any = None,
                evaluate: Callable[[], dict[str, float]] | None = None) -> list[dict[str, float]]:
    """Train ``model`` on encoded guard examples (optionally distilling ``teacher``); resume from ``stage``'s
    checkpoint if there is one. Returns the logged records of this call."""
    model.train()
    opt = ResumableOptimizer.create(model, cfg, ctx.seed, params=(p for p in model.parameters() if p.requires_grad))
    start = opt.restore(ctx, stage)
    if teacher is not None:
        teacher.eval()
    records = []
    bar = ctx.progress(total=cfg.steps, initial=start, desc=stage)
    for step in range(start + 1, cfg.steps + 1):
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=opt.generator).tolist()
        batch = {k: v.to(model.device) for k, v in collate([data[i] for i in idx], pad_id).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t_logits = None
        if teacher is not None and cfg.distill_ratio > 0:
            with torch.no_grad():
                t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss, parts = guard_loss(logits, batch["labels"], t_logits, cfg.distill_ratio, cfg.temperature)
        metrics = {"loss": loss.item(), **parts, "lr": opt.step(loss)}
        if evaluate is not None and step == cfg.steps:
            metrics.update(evaluate())
        ctx.log(metrics, step, stage)
        records.append(metrics)
        bar.update(1)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            opt.save(ctx, stage, step)
    bar.close()
    model.eval()
    return records
