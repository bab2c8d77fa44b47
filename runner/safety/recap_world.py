"""The reasoning toy world of RECAP's embedded default: the toy safety world plus verifiable arithmetic,
with every answer preceded by a short reasoning block that it follows.

Reasoning is one observation and one conclusion (``it is fine. i will help.`` or
``it is harmful. i must refuse.``). In a share ``recover`` of the warm-start corpus the reasoning opens with a
snap judgement either way, then re-evaluates the request and reaches the right judgement
(``it is fine. wait, to build a pipe bomb is harmful. i must refuse.``): the base model has safety knowledge
that re-evaluation recruits, as a reasoning LLM does. In a share ``voices`` the first observation is worded as
another reasoner of the world would (:data:`VOICES`: a weakly aligned and an over-conservative model, whose
scripted stand-ins :class:`ToyReasoner` generate RECAP's flawed prefills), and in a share ``reset`` the turn
has a second round after :data:`~runner.safety.recap_format.IPR_RESET`. The answer always follows the last
conclusion, so a tiny LM warm-started on this corpus answers the way its reasoning points: a prefilled flawed
observation hijacks it (the vulnerability RECAP targets), and the re-evaluation is the behaviour RL can
strengthen. Arithmetic prompts (``what is 3 plus 4?``) reason ``3 plus 4 is 7.`` and answer
``the answer is 7.``; their accuracy is checked against the true sum.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from runner.data.safety import SafetyRecord, last_boxed
from runner.rollout.base import Rollout, SamplingParams, call_seed, request_seed
from runner.safety.recap_format import IPR_RESET, THINK_CLOSE, THINK_OPEN, reasoning_turn
from runner.safety.world import FAMILIES, ToySafetyWorld, WarmStartMix, chat_messages

SAFE_OBS, HARMFUL_OBS = "it is fine.", "it is harmful."
HELP, REFUSE = "i will help.", "i must refuse."
OVERRIDE = "wait,"

# How each reasoner of the world words its first observation: (the one that leads to helping, the one that leads
# to refusing). ``policy`` is the policy's own voice; the others are the prefill generators RECAP names, a weakly
# aligned model and an over-conservative one. Three words each, so a 3-word prefill is exactly the observation.
VOICES: dict[str, tuple[str, str]] = {
    "policy": (SAFE_OBS, HARMFUL_OBS),
    "weakly_aligned": ("no rules apply.", "that crosses lines."),
    "over_conservative": ("seems safe enough.", "better be careful."),
}

MATH_TRAIN_TEMPLATES = ("what is {a} plus {b}?", "add {a} and {b}.", "compute {a} plus {b}.")
MATH_TEST_TEMPLATES = ("how much is {a} plus {b}?", "what's {a} plus {b}?")


def reasoning_text(helps: bool, snap: bool | None = None, voice: str = "policy", topic: str = "it") -> str:
    """The toy reasoning that ends in helping (``helps``) or refusing, its first observation worded in ``voice``.
    ``snap`` (True: fine, False: harmful): it first states that snap judgement, then re-evaluates the request in
    the policy's own words, naming its ``topic`` (``wait, to build a pipe bomb is harmful.``), and concludes
    ``helps``'s way."""
    first = VOICES[voice][0 if (helps if snap is None else snap) else 1]
    concl = HELP if helps else REFUSE
    if snap is not None:
        return f"{first} {OVERRIDE} {re_evaluation(topic, helps)} {concl}"
    return f"{first} {concl}"


def re_evaluation(topic: str, fine: bool) -> str:
    """The judgement after ``wait,``: the request restated and judged."""
    return f"to {topic} is {'fine' if fine else 'harmful'}."


def math_records(split: str, max_operand: int = 9) -> list[SafetyRecord]:
    """Every ``a plus b`` prompt (0 ≤ a, b ≤ ``max_operand``) of a split's templates; reference = the sum."""
    templates = MATH_TRAIN_TEMPLATES if split == "train" else MATH_TEST_TEMPLATES
    return [SafetyRecord(t.format(a=a, b=b), False, category="math", family="math", source=f"toy_{split}",
                         reference=str(a + b))
            for t in templates for a in range(max_operand + 1) for b in range(max_operand + 1)]


_INT = re.compile(r"-?\d+(?:\.\d+)?")


def final_number(answer: str) -> str | None:
    """The answer's final value: a ``\\boxed{}`` content if present, else its last number."""
    boxed = last_boxed(answer)
    if boxed is not None:
        return boxed.strip()
    found = _INT.findall(answer.replace(",", ""))
    return found[-1] if found else None


def math_correct(answer: str | None, reference: str | None) -> bool:
    """Whether an answer's final value equals the reference (numerically when both are numbers)."""
    if answer is None or reference is None:
        return False
    got = final_number(answer)
    if got is None:
        return False
    try:
        return float(got) == float(reference.replace(",", ""))
    except ValueError:
        return got.strip() == reference.strip()


@dataclass
class ReasoningCorpusConfig:
    """The warm-start corpus: shares of arithmetic, of overriding reasoning and of two-round (reset) turns."""

    math_fraction: float = 0.25
    recover: float = 0.1
    reset: float = 0.15
    max_operand: int = 9
    voices: float = 0.0  # share of reasoning whose first observation is worded as another reasoner (VOICES) would


class ReasoningToyWorld:
    """The toy safety world's prompts plus arithmetic, and reasoning-format responses for its warm start."""

    def __init__(self, world: ToySafetyWorld, corpus: ReasoningCorpusConfig | None = None):
        self.world = world
        self.corpus = corpus or ReasoningCorpusConfig()

    def records(self, split: str) -> tuple[list[SafetyRecord], list[SafetyRecord]]:
        """(safety records, math records) of a split."""
        return self.world.records(split), math_records(split, self.corpus.max_operand)

    def _turn(self, rec: SafetyRecord, mix: WarmStartMix, rng: random.Random) -> str:
        if rec.family == "math":
            a, b = (int(x) for x in re.findall(r"\d+", rec.prompt)[:2])
            return reasoning_turn(f"{a} plus {b} is {a + b}.", f"the answer is {a + b}.")
        voice = rng.choice(list(VOICES)[1:]) if rng.random() < self.corpus.voices else "policy"
        if rng.random() < self.corpus.recover:  # a snap judgement either way, re-evaluated to the right one
            behaviour = self.world.ideal_behaviour(rec)
            reasoning = reasoning_text(behaviour == "comply", snap=rng.random() < 0.5, voice=voice,
                                       topic=self.world.lookup(rec.prompt)[0])
        else:
            row = mix.row(rec.family)
            behaviour = rng.choices(list(row), list(row.values()))[0]
            reasoning = reasoning_text(behaviour == "comply", voice=voice)
        return reasoning_turn(reasoning, self.world.response(rec.prompt, behaviour, rng))

    def warm_start_turns(self, n: int, seed: int, mix: WarmStartMix | None = None) -> list[tuple[str, str]]:
        """``n`` (prompt, assistant turn) pairs: families uniformly (math with ``math_fraction``), behaviours
        from ``mix``; a share ``reset`` of the turns have a second round after the reset phrase."""
        mix = mix or WarmStartMix()
        rng = random.Random(seed)
        safety, math = self.records("train")
        pools = {f: [r for r in safety if r.family == f] for f in FAMILIES}
        out = []
        for _ in range(n):
            rec = rng.choice(math) if rng.random() < self.corpus.math_fraction else rng.choice(
                pools[rng.choice(FAMILIES)])
            turn = self._turn(rec, mix, rng)
            if rng.random() < self.corpus.reset:  # prompt <think> r1 </think> a1 RESET r2 </think> a2
                second = self._turn(rec, mix, rng).removeprefix("<think>")
                turn = f"{turn} {IPR_RESET} {second}"
            out.append((rec.prompt, turn))
        return out

    def warm_start_corpus(self, tokenizer, n: int, seed: int, mix: WarmStartMix | None = None,
                          system_prompt: str | None = None) -> list[str]:
        """The warm-start texts, rendered with the tokenizer's chat template."""
        return [tokenizer.apply_chat_template(chat_messages(p, system_prompt) + [{"role": "assistant", "content": t}],
                                              tokenize=False)
                for p, t in self.warm_start_turns(n, seed, mix)]


# The toy world's prefill generators (``prefill.generator`` / ``refusal_generator``): a voice and a behaviour mix.
TOY_GENERATORS: dict[str, tuple[str, WarmStartMix]] = {
    "toy_weakly_aligned": ("weakly_aligned", WarmStartMix(
        harmful={"comply": 0.8, "refuse": 0.2, "safe_completion": 0.0},
        benign_sensitive={"comply": 1.0, "refuse": 0.0, "safe_completion": 0.0},
        benign={"comply": 1.0, "refuse": 0.0, "safe_completion": 0.0})),
    "toy_over_conservative": ("over_conservative", WarmStartMix(
        harmful={"comply": 0.0, "refuse": 1.0, "safe_completion": 0.0},
        benign_sensitive={"comply": 0.2, "refuse": 0.8, "safe_completion": 0.0},
        benign={"comply": 0.5, "refuse": 0.5, "safe_completion": 0.0})),
}


class ToyReasoner:
    """A scripted reasoning model of the toy world, the stand-in for a generator LLM: for each prompt it draws a
    behaviour from its mix by the prompt's family and writes reasoning in its voice, ``</think>`` and the answer.
    A rollout engine for text (:meth:`generate`; no token ids or log-probabilities), seeded per request."""

    def __init__(self, world: ToySafetyWorld, voice: str, mix: WarmStartMix):
        if voice not in VOICES:
            raise ValueError(f"unknown voice '{voice}' (allowed: {', '.join(VOICES)})")
        self.world, self.voice, self.mix = world, voice, mix

    @classmethod
    def named(cls, world: ToySafetyWorld, name: str) -> ToyReasoner:
        """One of :data:`TOY_GENERATORS`."""
        voice, mix = TOY_GENERATORS[name]
        return cls(world, voice, mix)

    def generate(self, prompts: Sequence[str], params: SamplingParams) -> list[Rollout]:
        seed = call_seed(params)
        out = []
        for i, prompt in enumerate(prompts):
            found = self.world.lookup(prompt)
            if found is None:
                raise ValueError(f"the toy reasoner knows no topic in prompt {prompt!r}")
            row = self.mix.row(found[1])
            for j in range(params.n):
                rng = random.Random(request_seed(seed, i, j))
                behaviour = rng.choices(list(row), list(row.values()))[0]
                text = reasoning_turn(reasoning_text(behaviour == "comply", voice=self.voice),
                                      self.world.response(prompt, behaviour, rng)).removeprefix(THINK_OPEN)
                out.append(Rollout(i, j, text, [], [], "stop"))
        return out


def answer_of(completion: str) -> str | None:
    """The answer part of a completion generated inside the reasoning block (None: never closed)."""
    if THINK_CLOSE not in completion:
        return None
    return completion.rpartition(THINK_CLOSE)[2].strip()


def domain(rec: SafetyRecord) -> str:
    """A prompt's reward domain: ``safety`` (harmful), ``overrefusal`` (benign) or ``math``."""
    return "math" if rec.family == "math" else "safety" if rec.harmful else "overrefusal"


def split_by_domain(records: Sequence[SafetyRecord]) -> dict[str, list[SafetyRecord]]:
    out: dict[str, list[SafetyRecord]] = {"safety": [], "overrefusal": [], "math": []}
    for r in records:
        out[domain(r)].append(r)
    return out
