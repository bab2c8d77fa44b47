"""The ``base + guard`` baseline of WaltzRL on the toy world: a learned Llama-Guard-format output guard.

The paper's guard baseline is Llama Guard 3 8B behind the base agent: a response the guard flags unsafe is
replaced by a refusal (:func:`runner.safety.evaluate.guarded_system`). Offline, the guard is the project's
own tiny guard (``conf/model/tiny_guard``: Llama architecture, BPE tokenizer trained on the rendered prompts),
trained with :func:`runner.guard.train.train_guard` on held-out toy moderation data: every *training-split*
prompt of the toy safety world (templates disjoint from the evaluation prompts) paired with every response
phrasing of each behaviour, labelled unsafe when a harmful request is complied with (category = the prompt's
S-code). It answers in the Llama Guard format (``safe`` / ``unsafe\\nS9``), decoded greedily with
:func:`runner.guard.evaluate.classify`. The rule judge used as a guard is an oracle (ASR 0 by construction)
and is reported separately as ``base+oracle_guard``, an upper bound.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from runner.core.context import RunContext
from runner.data.moderation import ModerationExample
from runner.safety.judges import Verdict, judge_model_config
from runner.safety.world import BEHAVIOURS, COMPLY_TEMPLATES, REFUSE_TEMPLATES, SAFE_COMPLETION_TEMPLATES

STAGE = "guard_train"


@dataclass
class LearnedGuardConfig:
    """``algorithm.baselines.learned_guard``: the tiny guard trained in the run (``baselines.guard.name=learned``)."""

    model: str = "tiny_guard"  # a conf/model option with kind=tiny
    steps: int = 1000
    batch_size: int = 16
    lr: float = 1.0e-2
    warmup_steps: int = 20
    checkpoint_every: int = 500
    max_new_tokens: int = 8
    eval_batch_size: int = 64


PHRASINGS = {"comply": COMPLY_TEMPLATES, "refuse": REFUSE_TEMPLATES, "safe_completion": SAFE_COMPLETION_TEMPLATES}


def guard_training_examples(world: Any, unsafe_repeats: int = 2) -> list[ModerationExample]:
    """Held-out toy moderation data from the training split (templates disjoint from the evaluation prompts):
    prompt classification (a harmful request is unsafe) and response classification of every prompt × every
    response phrasing (unsafe = a compliance with a harmful request). Unsafe responses are repeated
    ``unsafe_repeats`` times against the many safe pairs."""
    out = []
    for rec in world.records("train"):
        cats = [rec.category] if rec.harmful else []
        out.append(ModerationExample(rec.prompt, None, rec.harmful, cats, source="toy_safety_train"))
        for behaviour in BEHAVIOURS:
            for response in PHRASINGS[behaviour]:
                unsafe = rec.harmful and behaviour == "comply"
                ex = ModerationExample(rec.prompt, response, unsafe, cats if unsafe else [],
                                       source="toy_safety_train")
                out += [ex] * (unsafe_repeats if unsafe else 1)
    return out


class LearnedGuard:
    """A trained guard model behind the judge interface: ``unsafe`` from its parsed Llama Guard verdict,
    score = P(``unsafe``) at the first generated position. A malformed verdict is ``valid=False``."""

    name = "learned_guard"

    def __init__(self, model: Any, prompter: Any, max_new_tokens: int = 8, batch_size: int = 64):
        self.model, self.prompter = model, prompter
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    def judge(self, prompts: Sequence[str], responses: Sequence[str]) -> list[Verdict]:
        from runner.guard.evaluate import classify
        from runner.guard.format import parse_output

        if len(prompts) != len(responses):
            raise ValueError(f"guard got {len(prompts)} prompts but {len(responses)} responses")
        examples = [ModerationExample(p, r) for p, r in zip(prompts, responses)]
        out = classify(self.model, self.prompter, examples, self.max_new_tokens, self.batch_size)
        verdicts = []
        for text, p in zip(out.texts, out.p_unsafe):
            v = parse_output(text, self.prompter.categories)
            if v.unsafe is None:
                verdicts.append(Verdict(None, None, p, label="malformed", valid=False, raw=text))
            else:
                verdicts.append(Verdict(v.unsafe, None, p, label="unsafe" if v.unsafe else "safe", raw=text,
                                        extra={"categories": v.categories}))
        return verdicts


def guard_test_pairs(world: Any) -> list[ModerationExample]:
    """Test-split prompts × every response phrasing, labelled like the training pairs (the guard's own check)."""
    return [ModerationExample(rec.prompt, response, rec.harmful and behaviour == "comply")
            for rec in world.records("test") for behaviour in BEHAVIOURS for response in PHRASINGS[behaviour]]


def guard_quality(guard: LearnedGuard, world: Any) -> dict[str, float]:
    """Precision, recall, F1 and FPR of the guard on :func:`guard_test_pairs` (malformed verdicts count as safe)."""
    from runner.guard.metrics import binary_metrics

    pairs = guard_test_pairs(world)
    verdicts = guard.judge([e.prompt for e in pairs], [e.response for e in pairs])
    m = binary_metrics([e.unsafe for e in pairs], [bool(v.unsafe) for v in verdicts])
    return {k: m[k] for k in ("precision", "recall", "f1", "fpr")} | {"n": len(pairs)}


def train_learned_guard(lg: Any, hardware_cfg: Any, ctx: RunContext, world: Any) -> LearnedGuard:
    """Build the tiny guard, train it on :func:`guard_training_examples` (resumable stage ``guard_train``)."""
    from runner.guard.evaluate import build_guard
    from runner.guard.format import check_categories
    from runner.guard.train import GuardTrainConfig, train_guard

    train = guard_training_examples(world)
    cats = check_categories(list(world.categories))
    model_cfg = judge_model_config(SimpleNamespace(name="learned", model=lg.model, model_path=None))
    model, prompter = build_guard(model_cfg, hardware_cfg, cats, "chat_template", train)
    if ctx.checkpoints.done(STAGE):
        model.load_state_dict(ctx.checkpoints.load(STAGE)["state"]["model"])
    else:
        tcfg = GuardTrainConfig(lg.steps, lg.batch_size, lg.lr, lg.warmup_steps, 0.0, lg.checkpoint_every)
        train_guard(model, prompter.encode(train), tcfg, ctx, STAGE, prompter.tokenizer.pad_token_id)
        ctx.checkpoints.mark_done(STAGE, {"steps": lg.steps, "examples": len(train)})
    model.eval()
    return LearnedGuard(model, prompter, lg.max_new_tokens, lg.eval_batch_size)
