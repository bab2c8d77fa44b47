"""The embedded moderation task is not a lookup: disjoint held-out split, labels that follow the stated
compositional rule, and a bag-of-words baseline that solves the lexical items but not the compositional ones."""

from __future__ import annotations

import re

import pytest

from runner.data.moderation import (
    BENIGN,
    CLAUSES,
    HARMFUL,
    HELDOUT_OPENERS,
    OPENERS,
    toy_moderation,
    toy_split,
)
from runner.guard.baselines import bow_baseline, majority_baseline
from runner.guard.metrics import binary_metrics

HARM_ACTS = {a for acts in HARMFUL.values() for a in acts}


def _speaker_act(prompt: str) -> str | None:
    """The act the speaker asks to do in a compositional prompt (None for other prompts), parsed independently
    of the generator: the text between the opener and " the <person> <clause>"."""
    clause = "|".join(re.escape(c) for c in CLAUSES)
    opener = "|".join(re.escape(o) for o in sorted(OPENERS + HELDOUT_OPENERS, key=len, reverse=True))
    m = re.match(rf"^(?:{opener}) (.+?) the \w+ (?:{clause}) ", prompt)
    return m.group(1) if m else None


@pytest.mark.parametrize("seed", range(5))
def test_split_is_disjoint_and_held_out(seed):
    train, test = toy_split(toy_moderation(800, seed))
    assert (len(train), len(test)) == (600, 200)
    assert not {(e.prompt, e.response) for e in train} & {(e.prompt, e.response) for e in test}
    # test phrasings never occur in training, and vice versa
    assert all(not any(e.prompt.startswith(o + " ") for o in HELDOUT_OPENERS) for e in train)
    assert all(any(e.prompt.startswith(o + " ") for o in HELDOUT_OPENERS) for e in test)
    assert 0.3 < sum(e.unsafe for e in test) / len(test) < 0.65


def test_toy_split_rejects_leaks():
    examples = toy_moderation(100, 0)
    leaked = examples[0]
    examples[-1].prompt, examples[-1].response = leaked.prompt, leaked.response
    with pytest.raises(ValueError, match="also occur in training"):
        toy_split(examples)


def test_labels_follow_the_speakers_act_and_every_act_is_in_both_classes():
    examples = toy_moderation(3000, 1)
    compositional = [(e, _speaker_act(e.prompt)) for e in examples]
    compositional = [(e, act) for e, act in compositional if act is not None]
    assert len(compositional) > 0.5 * len(examples)
    for e, act in compositional:
        assert act in HARM_ACTS or act in BENIGN, act
        prompt_unsafe = act in HARM_ACTS
        complied = e.response is None or not any(w in e.response for w in ("can't", "cannot", "won't", "not something"))
        assert e.unsafe == (prompt_unsafe and complied), e
    # every act word occurs in an unsafe and in a safe compositional prompt
    for act in sorted(HARM_ACTS):
        if "myself" in act or "my life" in act:
            continue  # written as "themselves" inside the clause
        labels = {e.unsafe for e, _ in compositional if e.response is None and f" {act} the " in e.prompt}
        assert labels == {True, False}, act


def test_bow_baseline_solves_lexical_items_but_not_word_order():
    examples = toy_moderation(1600, 2)
    train, test = toy_split(examples)
    lexical = [e for e in test if _speaker_act(e.prompt) is None]
    mixed = [e for e in test if (a := _speaker_act(e.prompt)) is not None and e.response is None
             and (a in HARM_ACTS) != any(f" {h} the " in e.prompt.split(" who ")[1] for h in HARM_ACTS)]
    bow_lexical = bow_baseline(train, lexical, seed=0)
    bow_mixed = bow_baseline(train, mixed, seed=0)
    assert bow_lexical["f1"] > 0.9
    # one hazardous and one benign act: the bag is the same for both orders, so the baseline is near chance
    oracle = binary_metrics([e.unsafe for e in mixed], [_speaker_act(e.prompt) in HARM_ACTS for e in mixed])
    assert oracle["f1"] == 1.0
    assert bow_mixed["f1"] < 0.75
    assert bow_baseline(train, test, seed=0)["C"] in (0.01, 0.1, 1.0, 10.0, 100.0)


def test_majority_baseline():
    train, test = toy_split(toy_moderation(400, 3))
    m = majority_baseline(train, test)
    positives = sum(e.unsafe for e in test)
    assert m["all_unsafe_f1"] == pytest.approx(2 * positives / (positives + len(test)))
    assert m["f1"] == (m["all_unsafe_f1"] if m["predicts"] == "unsafe" else 0.0)
