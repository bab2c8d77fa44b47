"""RECAP's prefill construction stage: counter-aligned reasoning for safety and overrefusal prompts.

For a harmful prompt the prefill is *unsafe* reasoning from a weakly aligned generator; for a benign one,
*refusing* reasoning from an over-conservative generator (math prompts are never prefilled). Each generator
is sampled ``tries`` times per prompt through any rollout engine, and the reasoning of the first sample whose
answer the judge finds flawed (unsafe for a harmful prompt, a refusal for a benign one) is kept; a prompt with
none stays unprefilled and is counted. Prefills are ℓ_pre words of that reasoning
(:func:`~runner.safety.recap_format.first_words`); the full reasoning serves the CoT-hijack attack.

The stage is cached and resumable: finished chunks of prompts are appended to ``<run dir>/<name>.jsonl``,
and a rerun keeps them and generates only the rest.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runner.core.context import RunContext
from runner.core.seeding import derive_seed
from runner.data.safety import SafetyRecord
from runner.rollout import SamplingParams
from runner.safety.recap_format import first_words, generation_prompt, split_reasoning
from runner.safety.world import chat_messages


@dataclass
class PrefillConfig:
    """α (share of safety/overrefusal training prompts prefilled), ℓ_pre (words) and the generators."""

    alpha: float = 0.5
    length: int = 3  # ℓ_pre, in words
    generator: str | None = None  # weakly aligned generator of unsafe reasoning (conf/model option); null: base policy
    refusal_generator: str | None = None  # over-conservative generator (refusing reasoning); null: the base policy
    generator_path: str | None = None
    refusal_generator_path: str | None = None
    tries: int = 8  # samples per prompt to find a flawed one
    temperature: float = 1.0
    max_new_tokens: int = 64
    chunk: int = 64  # prompts per resumable chunk


def flawed(v: Any, harmful: bool) -> bool:
    """Whether a judged answer goes the counter-aligned way: unsafe for a harmful prompt, a refusal for a benign one."""
    return bool(v.valid and (v.unsafe if harmful else v.refusal and v.label != "unclear"))


def generate_flawed(engine: Any, tokenizer: Any, records: Sequence[SafetyRecord], judge: Any, p: PrefillConfig,
                    seed: int, system_prompt: str | None = None) -> list[str | None]:
    """For each record, the reasoning of the first of ``tries`` samples whose answer is flawed, or None."""
    if not records:
        return []
    prompts = [generation_prompt(tokenizer, chat_messages(r.prompt, system_prompt)) for r in records]
    params = SamplingParams(max_new_tokens=p.max_new_tokens, temperature=p.temperature, n=p.tries, seed=seed)
    rollouts = sorted(engine.generate(prompts, params), key=lambda r: (r.prompt_index, r.sample_index))
    parts = [split_reasoning(r.text) for r in rollouts]
    users = [records[r.prompt_index].prompt for r in rollouts]
    answered = [i for i, (_, a) in enumerate(parts) if a is not None]
    verdicts = dict(zip(answered, judge.judge([users[i] for i in answered], [parts[i][1] for i in answered])))
    out: list[str | None] = [None] * len(records)
    for i, r in enumerate(rollouts):
        k = r.prompt_index
        if out[k] is None and i in verdicts and flawed(verdicts[i], records[k].harmful) and parts[i][0].strip():
            out[k] = parts[i][0].strip()
    return out


def build_prefills(ctx: RunContext, name: str, records: Sequence[SafetyRecord], generators: dict[bool, tuple],
                   judge: Any, p: PrefillConfig, system_prompt: str | None = None) -> dict[str, str | None]:
    """Prompt → flawed reasoning (None: none found) for every safety record, from the generator of its kind
    (``generators[harmful] = (engine, tokenizer)``); cached in ``<name>.jsonl`` chunk by chunk."""
    path = ctx.path(f"{name}.jsonl")
    done: dict[str, str | None] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["prompt"]] = row["reasoning"]
    todo = [r for r in dict.fromkeys(records) if r.prompt not in done and r.family != "math"]
    for harmful in (True, False):
        kind = [r for r in todo if r.harmful == harmful]
        engine, tok = generators[harmful]
        for start in range(0, len(kind), p.chunk):
            chunk = kind[start:start + p.chunk]
            got = generate_flawed(engine, tok, chunk, judge, p, derive_seed(ctx.seed, name, harmful, start),
                                  system_prompt)
            rows = [{"prompt": r.prompt, "harmful": r.harmful, "reasoning": g} for r, g in zip(chunk, got)]
            if ctx.is_main:
                with path.open("a", encoding="utf-8") as f:
                    f.writelines(json.dumps(row) + "\n" for row in rows)
            done.update({r.prompt: g for r, g in zip(chunk, got)})
    return done


def choose_prefilled(records: Sequence[SafetyRecord], reasoning: dict[str, str | None], alpha: float,
                     length: int, seed: int) -> list[str | None]:
    """The prefill of each training record: for a seeded share ``alpha`` of the safety and overrefusal
    records that have flawed reasoning, its first ``length`` words; None for the rest and for math."""
    eligible = [i for i, r in enumerate(records) if r.family != "math" and reasoning.get(r.prompt)]
    rng = random.Random(derive_seed(seed, "prefill_choice"))
    chosen = set(rng.sample(eligible, round(alpha * len(eligible))))
    return [first_words(reasoning[r.prompt], length) if i in chosen else None  # type: ignore[arg-type]
            for i, r in enumerate(records)]
