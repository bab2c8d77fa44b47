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
from runner.guard.format import guard_answer, guard_prompt, resolve_wrap
from runner.models.finetune import ResumableOptimizer


@dataclass
class GuardPrompter:
    """Renders moderation examples as Llama Guard prompts for one tokenizer, category list and wrapping.

    ``categories_expected``: whether answers carry a category line (False for binary-only data such as ToxicChat
    or XSTest, whose guard learns and answers a bare ``unsafe``). ``max_length``: the model's context in tokens;
    a prompt that would leave fewer than ``answer_budget`` tokens for the answer has its conversation cut in the
    middle (the template, with the instruction and the verdict position at its end, is never cut).
    """

    tokenizer: Any
    categories: list[str]
    wrap: str = "llama3"
    categories_expected: bool = True
    max_length: int | None = None
    answer_budget: int = 16

    def __post_init__(self) -> None:
        self.wrap = resolve_wrap(self.wrap, self.tokenizer, self.categories)

    def _render(self, prompt: str, response: str | None) -> str:
        return guard_prompt(prompt, response, self.categories, self.tokenizer, self.wrap)

    def _length(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def fit(self, ex: ModerationExample, reserve: int | None = None) -> tuple[str, bool]:
        """(prompt, truncated): the prompt of ``ex`` within ``max_length − reserve`` tokens."""
        text = self._render(ex.prompt, ex.response)
        if self.max_length is None:
            return text, False
        budget = self.max_length - max(reserve or 0, self.answer_budget)
        excess = self._length(text) - budget
        if excess <= 0:
            return text, False
        frame = self._length(self._render("", None if ex.response is None else ""))
        if frame >= budget:
            raise ValueError(f"the guard prompt without its conversation takes {frame} tokens; a model context of "
                             f"{self.max_length} leaves no room for the conversation and the answer")
        tok = self.tokenizer
        p_ids = tok(ex.prompt.strip(), add_special_tokens=False)["input_ids"]
        r_ids = tok(ex.response.strip(), add_special_tokens=False)["input_ids"] if ex.response is not None else []
        room = len(p_ids) + len(r_ids) - excess
        for _ in range(8):  # re-tokenising the cut text can shift a few tokens; shrink until it fits
            room = max(room, 0)
            # the judged turn keeps at least half the room: the response in response classification
            keep_r = min(len(r_ids), max(room - len(p_ids), room - room // 2))
            keep_p = min(len(p_ids), room - keep_r)
            prompt = _cut_middle(tok, p_ids, keep_p)
            response = _cut_middle(tok, r_ids, keep_r) if ex.response is not None else None
            text = self._render(prompt, response)
            excess = self._length(text) - budget
            if excess <= 0:
                return text, True
            room -= excess
        raise ValueError(f"could not fit a guard prompt into {budget} tokens")

    def prompt(self, ex: ModerationExample) -> str:
        return self.fit(ex)[0]

    def prompts(self, examples: Sequence[ModerationExample], reserve: int | None = None) -> tuple[list[str], int]:
        """The prompts of ``examples`` and how many of them had their conversation cut to fit the context."""
        fitted = [self.fit(e, reserve) for e in examples]
        return [t for t, _ in fitted], sum(cut for _, cut in fitted)

    def answer(self, ex: ModerationExample) -> str:
        """The training target. Items of binary-only sources (no codes) train on ``unsafe`` alone."""
        cats = [c for c in ex.categories if c in self.categories]
        if ex.unsafe and not cats:
            return "unsafe"
        return guard_answer(cats if ex.unsafe else [])

    def encode(self, examples: Sequence[ModerationExample]) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, answer ids + EOS) per example; prompt + answer fit the context."""
        tok = self.tokenizer
        answers = [a + [tok.eos_token_id] for a in
                   tok([self.answer(e) for e in examples], add_special_tokens=False)["input_ids"]]
        prompts = tok([self.fit(e, len(a))[0] for e, a in zip(examples, answers)],
                      add_special_tokens=False)["input_ids"]
        return list(zip(prompts, answers))


def _cut_middle(tokenizer: Any, ids: list[int], keep: int) -> str:
    """The text of ``ids`` with its middle replaced by " ... " so that about ``keep`` tokens remain."""
    if keep >= len(ids):
        return tokenizer.decode(ids)
    head = keep // 2
    tail = keep - head
    return (tokenizer.decode(ids[:head]) + " ... " + (tokenizer.decode(ids[-tail:]) if tail else "")).strip()


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
