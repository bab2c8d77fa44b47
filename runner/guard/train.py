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
    keep = labels[:, 1:] != -100
    return answer_loss(logits[:, :-1][keep], labels[:, 1:][keep],
                       None if teacher_logits is None else teacher_logits[:, :-1][keep], ratio, temperature)


def answer_loss(logits: torch.Tensor, target: torch.Tensor, teacher_logits: torch.Tensor | None = None,
                ratio: float = 0.0, temperature: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """:func:`guard_loss` on the answer positions alone: ``logits`` [N, V] predict ``target`` [N]."""
    logits = logits.float()
    ce = F.cross_entropy(logits, target)
    if teacher_logits is None or ratio == 0.0:
        return ce, {"ce": ce.item()}
    s = F.log_softmax(logits / temperature, -1)
    t = F.log_softmax(teacher_logits.float() / temperature, -1)
    # forward KL: Σ p_t (log p_t − log p_s); −inf teacher entries (pruned outputs) contribute 0
    kl = torch.where(t.isfinite(), t.exp() * (t - s), torch.zeros_like(t)).sum(-1).mean() * temperature ** 2
    loss = (1 - ratio) * ce + ratio * kl
    return loss, {"ce": ce.item(), "kl": kl.item()}


def shared_prefix_length(data: Sequence[tuple[list[int], list[int]]], max_prefixes: int = 4) -> int:
    """The longest ``p`` such that the prompts of ``data`` start with at most ``max_prefixes`` distinct runs of ``p``
    tokens (the guard template before the conversation: one per classified role), and every prompt is longer."""
    if not data:
        return 0
    lo, hi = 0, min(len(p) for p, _ in data) - 1
    while lo < hi:  # the number of distinct prefixes grows with their length
        mid = (lo + hi + 1) // 2
        if len({tuple(p[:mid]) for p, _ in data}) <= max_prefixes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def answer_logits(model: Any, batch: dict[str, torch.Tensor], prefix: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [N, V], targets [N]) at the N positions that predict an answer token.

    Equal to ``model(...).logits[:, :-1][keep]`` up to float rounding, at a fraction of the cost: the output layer
    runs on the answer positions only, and the first ``prefix`` tokens (shorter than every prompt; the guard
    template's shared opening, see :func:`shared_prefix_length`) run once per distinct opening and reach the rest
    of the batch as its KV cache (gradients flow through it)."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    keep = labels[:, 1:] != -100
    decoder = model.get_decoder()
    cache = None
    if prefix > 0:
        openings, which = torch.unique(ids[:, :prefix], dim=0, return_inverse=True)
        cache = decoder(input_ids=openings, use_cache=True).cache
        cache.batch_select_indices(which)
    hidden = decoder(input_ids=ids[:, prefix:], attention_mask=mask, cache=cache,
                     use_cache=cache is not None).last_hidden_state
    keep_rest = keep[:, prefix:]
    return model.get_output_embeddings()(hidden[:, :-1][keep_rest]), labels[:, 1:][keep]


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
    prefix = shared_prefix_length(data)
    records = []
    bar = ctx.progress(total=cfg.steps, initial=start, desc=stage)
    for step in range(start + 1, cfg.steps + 1):
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=opt.generator).tolist()
        batch = {k: v.to(model.device) for k, v in collate([data[i] for i in idx], pad_id).items()}
        logits, target = answer_logits(model, batch, prefix)
        t_logits = None
        if teacher is not None and cfg.distill_ratio > 0:
            with torch.no_grad():
                t_logits = answer_logits(teacher, batch, prefix)[0]
        loss, parts = answer_loss(logits, target, t_logits, cfg.distill_ratio, cfg.temperature)
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
