"""Guard evaluation (recipe ``guard_eval``): any guard model on moderation data.

Each item is rendered in the Llama Guard format (up to the verdict position, see :mod:`runner.guard.format`) and
decoded greedily. The parsed verdict gives the hard predictions (precision, recall, F1, FPR, per-category
one-vs-rest metrics); malformed outputs are counted, and one whose first line is unreadable is scored as
``safe``. The probability of ``unsafe`` at the verdict position gives AUPRC and the threshold curves. Undefined
metrics (AUPRC on a split without positives, ...) are NaN, written as ``null``. Conversations longer than the
model's context are cut in the middle and counted (``truncated``). Binary-only data (no category labels) expects
a bare ``unsafe``. A released guard (``model.kind=hf``) is evaluated as is; an offline tiny guard is first
trained on the training split of the same data, since an untrained model has nothing to evaluate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from runner.core.context import RunContext
from runner.core.errors import ConfigError
from runner.data.moderation import ModerationExample
from runner.guard.format import (
    CATEGORIES_1B,
    WRAPS,
    check_categories,
    parse_output,
    unsafe_probability,
    verdict_token_ids,
)
from runner.guard.metrics import average_precision, binary_metrics, per_category, threshold_curves
from runner.guard.train import GuardPrompter


@dataclass
class GuardOutputs:
    texts: list[str]
    p_unsafe: list[float]
    truncated: int = 0  # prompts whose conversation was cut to fit the model's context


@torch.no_grad()
def classify(model: Any, prompter: GuardPrompter, examples: Sequence[ModerationExample], max_new_tokens: int = 10,
             batch_size: int = 32) -> GuardOutputs:
    """Greedy guard outputs and P(unsafe) at the verdict position (the first generated one: prompts end where the
    released model writes its verdict), one generate call per batch."""
    tok = prompter.tokenizer
    _, unsafe_id = verdict_token_ids(tok)
    eos = [tok.eos_token_id]
    if "<|eot_id|>" in tok.get_vocab():
        eos.append(tok.convert_tokens_to_ids("<|eot_id|>"))
    texts, probs, truncated = [], [], 0
    side, tok.padding_side = tok.padding_side, "left"
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(examples), batch_size):
            prompts, cut = prompter.prompts(examples[start:start + batch_size], max_new_tokens)
            truncated += cut
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                                 return_dict_in_generate=True, pad_token_id=tok.pad_token_id, eos_token_id=eos,
                                 temperature=None, top_p=None, top_k=None)
            probs += unsafe_probability(out.logits[0], unsafe_id).tolist()
            for row in out.sequences[:, enc["input_ids"].shape[1]:].tolist():
                cut = next((i for i, t in enumerate(row) if t in eos), len(row))
                texts.append(tok.decode(row[:cut], skip_special_tokens=True))
    finally:
        tok.padding_side = side
        model.train(was_training)
    return GuardOutputs(texts, probs, truncated)


def score(examples: Sequence[ModerationExample], outputs: GuardOutputs, categories: Sequence[str],
          categories_expected: bool = True) -> dict[str, Any]:
    """Binary metrics of the parsed verdicts, AUPRC of P(unsafe), malformed and truncated counts, and
    per-category metrics for every listed code (when the data has category labels)."""
    verdicts = [parse_output(t, categories, categories_expected) for t in outputs.texts]
    y = [e.unsafe for e in examples]
    pred = [bool(v.unsafe) for v in verdicts]
    m = binary_metrics(y, pred)
    out: dict[str, Any] = {k: m[k] for k in ("precision", "recall", "f1", "fpr")}
    out["auprc"] = average_precision(y, outputs.p_unsafe)
    out["malformed"] = sum(v.malformed for v in verdicts)
    out["truncated"] = outputs.truncated
    out["n"] = len(examples)
    labelled = [i for i, e in enumerate(examples) if not e.unsafe or e.categories]
    if any(examples[i].categories for i in labelled):
        out["per_category"] = per_category([examples[i].categories for i in labelled],
                                           [verdicts[i].categories for i in labelled], categories)
    return out


def evaluate_guard(model: Any, prompter: GuardPrompter, examples: Sequence[ModerationExample],
                   max_new_tokens: int = 10, batch_size: int = 32) -> tuple[dict[str, Any], GuardOutputs]:
    """Classify ``examples`` with the guard and score the outputs (see :func:`score`)."""
    outputs = classify(model, prompter, examples, max_new_tokens, batch_size)
    return score(examples, outputs, prompter.categories, prompter.categories_expected), outputs


# --------------------------------------------------------------------------- building a guard
def prompt_wrap(wrap: str, model_cfg: DictConfig) -> str:
    """``auto``: the released Llama Guard 3 template (``llama3``: the one the checkpoint's tokenizer carries) for
    released checkpoints, the tokenizer's chat template for tiny models."""
    if wrap == "auto":
        return "llama3" if model_cfg.kind == "hf" else "chat_template"
    return wrap


def prompt_categories(configured: Sequence[str], examples: Sequence[ModerationExample]) -> list[str]:
    """The configured codes plus every code the data maps to, in taxonomy order: no labelled category is left
    out of the guard's prompt, its training targets or the per-category metrics."""
    try:
        return check_categories(sorted(set(configured) | {c for e in examples for c in e.categories}))
    except ValueError as e:
        raise ConfigError(f"dataset: {e}") from None


def has_category_labels(examples: Sequence[ModerationExample]) -> bool:
    """Whether the data labels its unsafe items with hazard codes (binary-only sources do not)."""
    return any(e.categories for e in examples)


def build_guard(model_cfg: DictConfig, hardware_cfg: DictConfig, categories: list[str], wrap: str,
                train: Sequence[ModerationExample] = (), categories_expected: bool | None = None
                ) -> tuple[Any, GuardPrompter]:
    """The guard model and its prompter. A tiny model's BPE tokenizer is trained on the rendered training items,
    so the fixed instruction text becomes a few hundred tokens rather than bytes. ``categories_expected``
    defaults to whether ``train`` has category labels (True without training data); the prompter's context is
    the model's ``max_position_embeddings``."""
    from runner.models.builder import build_model, build_tokenizer
    from runner.models.tokenizer import byte_tokenizer

    corpus = None
    if model_cfg.kind == "tiny":
        byte_prompter = GuardPrompter(byte_tokenizer(), categories, wrap)
        corpus = [byte_prompter.prompt(e) + byte_prompter.answer(e) for e in train]
        corpus += ["safe", "unsafe"] + [f"unsafe\n{c}" for c in categories]
    tok = build_tokenizer(model_cfg, corpus)
    model = build_model(model_cfg, tok, hardware_cfg)
    if categories_expected is None:
        categories_expected = has_category_labels(train) if train else True
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return model, GuardPrompter(tok, categories, wrap, categories_expected, context)


def check_guard_keys(a: Any, prefix: str = "algorithm") -> None:
    try:
        check_categories(list(a.categories))
    except ValueError as e:
        raise ConfigError(f"{prefix}.categories: {e}") from None
    if a.prompt_wrap not in ("auto", *WRAPS):
        raise ConfigError(f"{prefix}.prompt_wrap={a.prompt_wrap} must be one of auto, {', '.join(WRAPS)}")
    if not 0.0 < a.test_fraction < 1.0:
        raise ConfigError(f"{prefix}.test_fraction={a.test_fraction} must be in (0, 1)")
    for key in ("batch_size", "eval_batch_size", "max_new_tokens"):
        if a[key] < 1:
            raise ConfigError(f"{prefix}.{key}={a[key]} must be >= 1")


# --------------------------------------------------------------------------- recipe
@dataclass
class GuardEvalConfig:
    """``guard_eval``: evaluate a guard on moderation data (a tiny guard is trained first on the train split)."""

    name: str = "guard_eval"
    categories: list[str] = field(default_factory=lambda: list(CATEGORIES_1B))
    prompt_wrap: str = "auto"  # auto | llama3 | llama_guard_3_1b | llama_guard_3_8b | chat_template
    test_fraction: float = 0.3
    train_steps: int = 800  # tiny models only; released guards are evaluated as they are
    batch_size: int = 16
    lr: float = 1.0e-2
    warmup_steps: int = 20
    checkpoint_every: int = 100
    eval_batch_size: int = 32
    max_new_tokens: int = 10
    num_thresholds: int = 21

    @staticmethod
    def validate(cfg: DictConfig) -> None:
        check_guard_keys(cfg.algorithm)
        if cfg.algorithm.num_thresholds < 2:
            raise ConfigError(f"algorithm.num_thresholds={cfg.algorithm.num_thresholds} must be >= 2")


def run_guard_eval(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """Evaluate the configured guard on the configured moderation data; plot threshold curves."""
    from runner.data.moderation import guard_split, load_moderation
    from runner.guard.train import GuardTrainConfig, train_guard

    a = cfg.algorithm
    data: dict[str, Any] = {}  # rows read from each file, for results.json's data.<dataset>
    examples = load_moderation(cfg.dataset, ctx.seed, data)
    cats = prompt_categories(a.categories, examples)
    tiny = cfg.model.kind == "tiny"
    train, test = guard_split(examples, cfg.dataset, a.test_fraction, ctx.seed) if tiny else ([], examples)
    model, prompter = build_guard(cfg.model, cfg.hardware, cats, prompt_wrap(a.prompt_wrap, cfg.model), train,
                                  has_category_labels(examples))
    if tiny and a.train_steps > 0:
        tcfg = GuardTrainConfig(a.train_steps, a.batch_size, a.lr, a.warmup_steps, 0.0, a.checkpoint_every)
        if ctx.checkpoints.done("train") is None:
            train_guard(model, prompter.encode(train), tcfg, ctx, "train", prompter.tokenizer.pad_token_id)
            ctx.checkpoints.mark_done("train", {"steps": a.train_steps})
        else:
            model.load_state_dict(ctx.checkpoints.load("train")["state"]["model"])
    metrics, outputs = evaluate_guard(model, prompter, test, a.max_new_tokens, a.eval_batch_size)
    y = [e.unsafe for e in test]
    taus = np.linspace(0.0, 1.0, a.num_thresholds).tolist()
    curves = threshold_curves(y, outputs.p_unsafe, taus)
    ctx.plot("threshold_curves", {k: (taus, curves[k]) for k in ("precision", "recall", "f1", "fpr")},
             "threshold on P(unsafe)", "metric", title=f"{cfg.model.name} on {cfg.dataset.name}")
    ctx.plot("precision_recall", {"PR": (curves["recall"], curves["precision"])}, "recall", "precision",
             title=f"AUPRC {metrics['auprc']:.3f}")
    ctx.write_jsonl("predictions.jsonl", [
        {"prompt": e.prompt, "response": e.response, "unsafe": e.unsafe, "categories": e.categories,
         "output": t, "p_unsafe": p} for e, t, p in zip(test, outputs.texts, outputs.p_unsafe)])
    info = {"truncated": outputs.truncated, "truncated_train": prompter.prompts(train)[1] if train else 0,
            "categories": cats, "categories_expected": prompter.categories_expected, "prompt_wrap": prompter.wrap}
    return {"metrics": metrics, "threshold_curves": curves, "num_train": len(train), "num_test": len(test),
            "info": info, "data": data}
