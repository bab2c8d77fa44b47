"""WaltzRL on the toy safety world: what the feedback says, and the agents' warm starts.

Feedback carries what the revision needs. For an unsafe answer it names the hazard (the prompt's S-category)
and a safe alternative (``safety info``, what the toy world's safe completion offers); for an overrefusal it
gives the benign reading (``not <hazard>``) and asks for an answer; each case has several paraphrases. A
*vague* message ("Please revise.") flags a problem without saying what to change. What a message asks the
revision to do is read from its wording by :func:`requested_fix`.

Warm starts (tiny models only):

- π_c (:func:`conversation_corpus`) learns first answers from the world's behaviour mix, and revisions that
  depend on the feedback's content: a safe alternative → a safe completion, a benign reading → an answer,
  each with probability ``follow_feedback`` (else a fresh draw from the mix); a vague message → the same
  behaviour as before with probability ``follow_feedback`` (it does not know what to change). So wrong or
  empty content makes π_c revise badly, the right content makes it revise well.
- π_f (:func:`feedback_corpus`) learns JSON feedback whose reasoning misreads the request with probability
  ``request_noise`` and the answer with ``response_noise`` (labels follow the reading), and whose text is
  vague instead of the right content with probability ``content_noise``. RL then has two things to improve:
  the labels and the content; the Dynamic Improvement Reward pays for the content.
"""

from __future__ import annotations

import json
import random
from typing import Any

from omegaconf import DictConfig

from runner.core.context import RunContext
from runner.core.errors import ConfigError
from runner.core.seeding import derive_seed
from runner.safety.common import PromptSets
from runner.safety.waltzrl_protocol import Feedback, conversation_messages, feedback_messages
from runner.safety.world import HAZARD_CATEGORIES, ToySafetyWorld, WarmStartMix

# ---------------------------------------------------------------------------------- what feedback says
SAFE_ALTERNATIVE = "safety info"  # the toy world's safe completion offers it
UNSAFE_FEEDBACK = (  # the hazard and a safe alternative
    "Risk of {hazard}: refuse, offer safety info.",
    "It aids {hazard}; decline and give safety info.",
    "Unsafe ({hazard}). Say no, share safety info.",
)
OVERREFUSE_FEEDBACK = (  # the benign reading and the request to answer
    "Not {hazard}, a harmless ask: answer it.",
    "Benign reading, no {hazard}: please answer.",
    "It means no {hazard}; just answer it.",
)
ANSWER_CUES = ("answer it", "please answer")
VAGUE_FEEDBACK = ("Please revise.", "Fix the answer.", "Try again.", "Not right, redo it.")
NO_ISSUE_FEEDBACK = ("Fine.", "Looks good.", "No change needed.")


def hazard_name(category: str) -> str:
    """The hazard a category stands for (``S9`` → ``indiscriminate weapons``); ``harm`` for benign topics."""
    return HAZARD_CATEGORIES.get(category, "harm")


def feedback_text(kind: str, category: str, rng: random.Random) -> str:
    """A paraphrase of ``kind`` (``unsafe`` / ``overrefuse`` / ``vague`` / ``none``) for a prompt of ``category``."""
    templates = {"unsafe": UNSAFE_FEEDBACK, "overrefuse": OVERREFUSE_FEEDBACK, "vague": VAGUE_FEEDBACK,
                 "none": NO_ISSUE_FEEDBACK}[kind]
    return rng.choice(templates).format(hazard=hazard_name(category))


def requested_fix(text: str) -> str | None:
    """What a feedback message asks the revision to do: ``safe_completion`` (it offers the safe alternative),
    ``comply`` (it gives the benign reading and asks for an answer), or None (vague or no request)."""
    t = text.lower()
    if SAFE_ALTERNATIVE in t:
        return "safe_completion"
    if any(cue in t for cue in ANSWER_CUES):
        return "comply"
    return None


def useful_feedback(pred: Feedback | None, truth: tuple[bool, bool] | None) -> bool | None:
    """Whether a first-round message would fix an answer that needs fixing: both labels right and the content
    asks for the right fix (a safe alternative for an unsafe answer, an answer for an overrefusal). None when
    the answer needs no fix or the judge could not tell."""
    if truth is None or not any(truth):
        return None
    if pred is None or (pred.unsafe, pred.overrefuse) != truth:
        return False
    return requested_fix(pred.feedback) == ("safe_completion" if truth[0] else "comply")


def toy_feedback_json(request_harmful: bool, answer_complies: bool, feedback: str) -> str:
    """π_f's target: labels from its reading of the request and of the answer, then the feedback text.

    Kept short (a two-word reasoning): a byte-level tiny LM writes every character, and the decisive token
    (``harmful``/``benign``) comes first, right after ``{"reasoning":"``."""
    unsafe = request_harmful and answer_complies
    over = not request_harmful and not answer_complies
    reasoning = f"{'harmful' if request_harmful else 'benign'}, {'complies' if answer_complies else 'refuses'}"
    return json.dumps({"reasoning": reasoning, "unsafe": unsafe, "overrefuse": over, "feedback": feedback},
                      separators=(",", ":"))


# ---------------------------------------------------------------------------------- warm-start corpora
def feedback_corpus(world: ToySafetyWorld, tok: Any, n: int, seed: int, mix: WarmStartMix, protocol: Any,
                    request_noise: float, response_noise: float, content_noise: float) -> list[str]:
    """Chat texts (π_f's input → JSON feedback) with answers drawn from ``mix``. The reasoning misreads the
    request with probability ``request_noise`` and the answer with ``response_noise``; a flagging message is
    vague instead of carrying the fix with probability ``content_noise``."""
    rng = random.Random(derive_seed(seed, "feedback_corpus"))
    out = []
    for rec, behaviour, response in world.warm_start_pairs(n, derive_seed(seed, "feedback_pairs"), mix):
        seen_harmful = rec.harmful != (rng.random() < request_noise)
        seen_complies = (behaviour == "comply") != (rng.random() < response_noise)
        kind = ("unsafe" if seen_harmful and seen_complies else
                "overrefuse" if not seen_harmful and not seen_complies else "none")
        if kind != "none" and rng.random() < content_noise:
            kind = "vague"
        target = toy_feedback_json(seen_harmful, seen_complies, feedback_text(kind, rec.category, rng))
        msgs = feedback_messages(rec.prompt, response, protocol) + [{"role": "assistant", "content": target}]
        out.append(tok.apply_chat_template(msgs, tokenize=False))
    return out


def conversation_corpus(world: ToySafetyWorld, tok: Any, n: int, seed: int, mix: WarmStartMix, protocol: Any,
                        revision_fraction: float, follow_feedback: float) -> list[str]:
    """Chat texts for π_c: first turns drawn from ``mix``, and revision dialogues whose revision depends on what
    the feedback says (see the module docstring)."""
    rng = random.Random(derive_seed(seed, "conversation_corpus"))
    out = []
    for rec, first, response in world.warm_start_pairs(n, derive_seed(seed, "conversation_pairs"), mix):
        msgs = conversation_messages(rec.prompt, [], [], protocol)
        if rng.random() < revision_fraction:
            kind = rng.choice(("unsafe", "overrefuse", "vague"))
            text = feedback_text(kind, rec.category, rng)
            wanted = requested_fix(text) or first  # a vague message: π_c does not know what to change
            if rng.random() < follow_feedback:
                behaviour = wanted
            else:
                row = mix.row(rec.family)
                behaviour = rng.choices(list(row), list(row.values()))[0]
            msgs = conversation_messages(rec.prompt, [response], [text], protocol)
            response = world.response(rec.prompt, behaviour, rng)
        out.append(tok.apply_chat_template(msgs + [{"role": "assistant", "content": response}], tokenize=False))
    return out


def build_agent(cfg: DictConfig, ctx: RunContext, sets: PromptSets, role: str, model: Any = None) -> tuple[Any, Any]:
    """One agent's model: tiny_lm warm-started on its toy corpus (resumable), or the HF model as it is.
    ``model``: warm-start this model (a LoRA adapter view on a shared base) instead of building one."""
    from runner.models.builder import build_model_and_tokenizer, build_tokenizer
    from runner.models.finetune import finetune, token_stream

    a = cfg.algorithm
    key = "warm_start" if role == "conversation" else "feedback_warm_start"
    ws = a[key]
    if model is None:
        model, tok = build_model_and_tokenizer(cfg.model, cfg.hardware)
    else:
        tok = build_tokenizer(cfg.model)
    if ws.steps <= 0:
        return model, tok
    if sets.world is None:
        raise ConfigError(f"algorithm.{key} needs the toy world (dataset.source=builtin)")
    stage = f"warm_start_{role}"
    if ctx.checkpoints.done(stage):  # finished earlier: load its final weights without rewinding metrics
        model.load_state_dict(ctx.checkpoints.load(stage)["state"]["model"])
        return model.eval(), tok
    seed = derive_seed(ctx.seed, role)
    mix = sets.mix or WarmStartMix()
    if role == "conversation":
        texts = conversation_corpus(sets.world, tok, ws.examples, seed, mix, a.protocol, ws.revision_fraction,
                                    ws.follow_feedback)
    else:
        texts = feedback_corpus(sets.world, tok, ws.examples, seed, mix, a.protocol, ws.request_noise,
                                ws.response_noise, ws.content_noise)
    finetune(model, token_stream(texts, tok), ws, ctx, stage=stage)
    ctx.checkpoints.mark_done(stage)
    return model.eval(), tok
