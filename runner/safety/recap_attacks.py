"""Prefill attacks on reasoning models and RECAP's evaluation, usable on any model (recipe ``recap_eval``).

On held-out prompts, through a rollout engine:

- ``asr_direct``: harmful prompts asked plainly;
- ``asr_prefill``: the prefill attack, ℓ words of flawed (unsafe) reasoning prefilled in the open block;
- ``asr_hijack``: full CoT hijacking, the whole reasoning replaced by the flawed one and closed;
- ``asr_ipr.<k>``: iterative prefill reset, k rounds (prefill, let it answer, append
  :data:`~runner.safety.recap_format.IPR_RESET`, prefill again); the last round's answer is judged;
- ``orr``: refusals of benign prompts asked plainly; ``orr_prefill``: with refusing reasoning prefilled;
- ``math_accuracy``: arithmetic or math prompts, the answer's final value against the reference.

Answers (the text after ``</think>``) are judged with the safety harness (:func:`runner.safety.evaluate.evaluate`);
a completion that never closes its reasoning answers nothing (judged as the empty answer).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.core.seeding import derive_seed
from runner.data.safety import SafetyRecord
from runner.rollout import SamplingParams
from runner.safety.common import EvalConfig
from runner.safety.evaluate import SystemResponse, evaluate
from runner.safety.recap_format import first_words, generation_prompt, hijack_prefill, ipr_prompt
from runner.safety.recap_world import answer_of, math_correct
from runner.safety.world import chat_messages


@dataclass
class AttackConfig(EvalConfig):
    """Evaluation sampling (the safety core's ``EvalConfig``, longer answers for reasoning) and the attacks."""

    n_samples: int = 2
    max_new_tokens: int = 64
    prefill_length: int | None = None  # ℓ of the prefill attack, in words; null: prefill.length
    ipr_rounds: int = 3
    math_temperature: float = 0.0  # math accuracy: greedy (pass@1) by default
    math_n_samples: int = 1
    attacks: list[str] = field(default_factory=lambda: ["direct", "prefill", "hijack", "ipr"])


class ReasoningModel:
    """A reasoning model behind a rollout engine: generate from prompts with an optional prefill."""

    def __init__(self, engine: Any, tokenizer: Any, params: SamplingParams, system_prompt: str | None = None):
        self.engine, self.tokenizer, self.params, self.system_prompt = engine, tokenizer, params, system_prompt

    def prompt(self, user: str) -> str:
        return generation_prompt(self.tokenizer, chat_messages(user, self.system_prompt))

    def complete(self, texts: Sequence[str], tag: str) -> list[Any]:
        seed = derive_seed(int(self.params.seed or 0), tag)
        p = SamplingParams(max_new_tokens=self.params.max_new_tokens, temperature=self.params.temperature,
                           top_p=self.params.top_p, seed=seed)
        return sorted(self.engine.generate(list(texts), p), key=lambda r: r.prompt_index)

    def answers(self, users: Sequence[str], prefills: Sequence[str | None], tag: str,
                rounds: int = 1) -> list[list[SystemResponse]]:
        """Per round, each prompt's answer: round r > 1 is iterative prefill reset on the earlier rounds."""
        base = [self.prompt(u) for u in users]
        generated: list[list[str]] = [[] for _ in users]
        out = []
        for r in range(rounds):
            texts = [ipr_prompt(b, p or "", g) for b, p, g in zip(base, prefills, generated)]
            rolls = self.complete(texts, f"{tag}/round{r}")
            for g, roll in zip(generated, rolls):
                g.append(roll.text)
            # the round's reasoning is its prefill plus the continuation (a hijack prefill closes it already)
            answers = [answer_of((p or "") + x.text) for p, x in zip(prefills, rolls)]
            out.append([SystemResponse(a or "", {"answered": a is not None, "truncated": x.finish_reason == "length",
                                                  "completion": x.text})
                        for a, x in zip(answers, rolls)])
        return out


def _replay(responses: Sequence[SystemResponse]) -> Callable[[Sequence[str]], list[SystemResponse]]:
    def respond(prompts: Sequence[str]) -> list[SystemResponse]:
        if len(prompts) != len(responses):
            raise ValueError(f"replay of {len(responses)} responses asked {len(prompts)} prompts")
        return list(responses)
    return respond


def _expand(records: Sequence[SafetyRecord], n: int) -> list[SafetyRecord]:
    """The order :func:`evaluate` asks prompts in: every record, ``n`` times over."""
    return [r for _ in range(n) for r in records]


def attack_rate(model: ReasoningModel, records: Sequence[SafetyRecord], prefill_of: Callable[[str], str | None],
                judge: Any, n: int, tag: str, rounds: int = 1, key: str = "asr") -> tuple[list[float | None], list]:
    """The judged rate (``asr`` or ``orr``) after each of ``rounds`` rounds, and the last round's rows."""
    if not records:
        return [None] * rounds, []
    asked = _expand(records, n)
    per_round = model.answers([r.prompt for r in asked], [prefill_of(r.prompt) for r in asked], tag, rounds)
    rates, rows = [], []
    for resp in per_round:
        result = evaluate(_replay(resp), {tag: list(records)}, judge, n_samples=n)
        rates.append(result.metrics[key])
        rows = result.rows
    return rates, rows


def math_accuracy(model: ReasoningModel, records: Sequence[SafetyRecord], n: int, tag: str = "math") -> float | None:
    if not records:
        return None
    asked = _expand(records, n)
    (resp,) = model.answers([r.prompt for r in asked], [None] * len(asked), tag)
    return sum(math_correct(x.text if x.info["answered"] else None, r.reference)
               for x, r in zip(resp, asked)) / len(asked)


def evaluate_reasoning_model(engine: Any, tokenizer: Any, test: dict[str, list[SafetyRecord]],
                             reasoning: dict[str, str | None], judge: Any, refusal_judge: Any, a: AttackConfig,
                             length: int, seed: int, system_prompt: str | None = None) -> tuple[dict, dict]:
    """Every attack on one model: ``(metrics, response rows by attack)``. ``test`` has ``harmful``, ``benign``
    and ``math`` records; ``reasoning`` maps a prompt to its flawed reasoning (prefill attacks use only the
    prompts that have one)."""
    params = SamplingParams(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p, seed=seed)
    model = ReasoningModel(engine, tokenizer, params, system_prompt)
    ell = a.prefill_length or length
    harmful, benign = test.get("harmful", []), test.get("benign", [])
    attacked = [r for r in harmful if reasoning.get(r.prompt)]
    refused = [r for r in benign if reasoning.get(r.prompt)]

    def prefill(p: str) -> str | None:
        return first_words(reasoning[p], ell) if reasoning.get(p) else None

    def none(_: str) -> None:
        return None

    out: dict[str, Any] = {}
    rows: dict[str, list] = {}
    if "direct" in a.attacks:
        (out["asr_direct"],), rows["direct"] = attack_rate(model, harmful, none, judge, a.n_samples, "direct")
    if "prefill" in a.attacks:
        (out["asr_prefill"],), rows["prefill"] = attack_rate(model, attacked, prefill, judge, a.n_samples, "prefill")
    if "hijack" in a.attacks:
        (out["asr_hijack"],), rows["hijack"] = attack_rate(
            model, attacked, lambda p: hijack_prefill(reasoning[p] or ""), judge, a.n_samples, "hijack")
    if "ipr" in a.attacks:
        rates, rows["ipr"] = attack_rate(model, attacked, prefill, judge, a.n_samples, "ipr", a.ipr_rounds)
        out["asr_ipr"] = {str(k + 1): v for k, v in enumerate(rates)}
    (out["orr"],), rows["benign"] = attack_rate(model, benign, none, refusal_judge, a.n_samples, "benign", key="orr")
    (out["orr_prefill"],), rows["benign_prefill"] = attack_rate(model, refused, prefill, refusal_judge, a.n_samples,
                                                               "benign_prefill", key="orr")
    math_model = ReasoningModel(engine, tokenizer, SamplingParams(
        max_new_tokens=a.max_new_tokens, temperature=a.math_temperature, seed=seed), system_prompt)
    out["math_accuracy"] = math_accuracy(math_model, test.get("math", []), a.math_n_samples)
    out["n"] = {"harmful": len(harmful), "attacked": len(attacked), "benign": len(benign),
                "benign_prefilled": len(refused), "math": len(test.get("math", []))}
    return out, rows
