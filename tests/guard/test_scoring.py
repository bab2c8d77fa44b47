"""Guard scoring on real-data shapes: binary-only labels, categories the data maps to, splits without positives,
conversations longer than the model's context."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from runner.core.errors import ConfigError
from runner.core.report import write_json
from runner.data.moderation import ModerationExample
from runner.guard.evaluate import GuardOutputs, classify, has_category_labels, prompt_categories, score
from runner.guard.format import CATEGORIES_1B, guard_prompt
from runner.guard.train import GuardPrompter
from runner.models.tokenizer import byte_tokenizer


def _xstest_like() -> list[ModerationExample]:
    """Binary-only prompt classification data (XSTest, ToxicChat): labels, no hazard codes."""
    return [ModerationExample(f"prompt {i}", None, i % 3 == 0, [], "xstest") for i in range(30)]


def test_perfect_guard_on_binary_only_data_is_well_formed():
    data = _xstest_like()
    assert not has_category_labels(data)
    outputs = GuardOutputs(["unsafe" if e.unsafe else "safe" for e in data], [float(e.unsafe) for e in data])
    m = score(data, outputs, CATEGORIES_1B, has_category_labels(data))
    assert (m["f1"], m["precision"], m["recall"], m["fpr"], m["auprc"]) == (1.0, 1.0, 1.0, 0.0, 1.0)
    assert m["malformed"] == 0 and "per_category" not in m
    # where categories are expected, the bare verdicts still count for the binary metrics but are incomplete
    strict = score(data, outputs, CATEGORIES_1B, True)
    assert strict["f1"] == 1.0 and strict["malformed"] == sum(e.unsafe for e in data)


def test_prompt_lists_and_metrics_cover_every_category_the_data_maps_to():
    # OpenAI moderation items: sexual/minors (S3) maps to S4 (+ S12), which the toy recipe's list lacks
    data = [ModerationExample("a", None, True, ["S4", "S12"]), ModerationExample("b", None, True, ["S10"]),
            ModerationExample("c", None, False, []), ModerationExample("d", None, True, ["S1"])]
    cats = prompt_categories(["S1", "S2", "S9", "S10", "S11", "S12"], data)
    assert cats == ["S1", "S2", "S4", "S9", "S10", "S11", "S12"]
    assert "S4: Child Exploitation." in guard_prompt("a", None, cats, None, "llama_guard_3_1b")
    outputs = GuardOutputs(["unsafe\nS4,S12", "unsafe\nS10", "safe", "unsafe\nS12"], [0.9, 0.8, 0.1, 0.7])
    m = score(data, outputs, cats, True)
    assert set(m["per_category"]) == set(cats)
    assert m["per_category"]["S4"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "fpr": 0.0, "support": 1}
    assert m["per_category"]["S1"]["recall"] == 0.0 and m["per_category"]["S12"]["precision"] == 0.5
    assert np.isnan(m["per_category"]["S9"]["recall"]) and m["per_category"]["S9"]["support"] == 0
    with pytest.raises(ConfigError, match="S15"):
        prompt_categories(["S1"], [ModerationExample("x", None, True, ["S15"])])


def test_split_without_positives_reports_null_not_zero(tmp_path):
    data = [ModerationExample(f"p{i}", None, False, []) for i in range(5)]
    m = score(data, GuardOutputs(["safe"] * 4 + ["unsafe"], [0.1, 0.2, 0.3, 0.4, 0.9]), CATEGORIES_1B, False)
    assert np.isnan(m["auprc"]) and np.isnan(m["recall"]) and m["f1"] == 0.0 and m["fpr"] == pytest.approx(0.2)
    written = json.loads(write_json(tmp_path / "r.json", {"metrics": m}).read_text())["metrics"]
    assert written["auprc"] is None and written["recall"] is None and written["precision"] == 0.0


def _prompter(max_length: int | None) -> GuardPrompter:
    return GuardPrompter(byte_tokenizer(), ["S1"], "chat_template", max_length=max_length)


def test_long_conversations_are_cut_in_the_middle_and_counted():
    tok = byte_tokenizer()
    frame = len(tok(_prompter(None).prompt(ModerationExample("")), add_special_tokens=False)["input_ids"])
    p = _prompter(frame + 16 + 60)  # room for 60 bytes of conversation and 16 of answer
    short = ModerationExample("How do I bake bread?")
    assert p.fit(short) == (_prompter(None).prompt(short), False)
    long = ModerationExample("QQBEGIN " + "blah " * 200 + "how do I make nerve gas QQFINISH")
    text, cut = p.fit(long)
    assert cut and len(tok(text, add_special_tokens=False)["input_ids"]) <= frame + 60
    full = _prompter(None).prompt(long)
    head, tail = full.split("QQBEGIN")[0], full.split("QQFINISH")[1]
    assert text.startswith(head + "QQBEGIN") and text.endswith("QQFINISH" + tail)  # template kept whole, middle cut
    assert " ... " in text
    # response classification: the judged (agent) turn keeps at least half the room
    resp = ModerationExample("x" * 300, "y" * 300)
    text, cut = p.fit(resp)
    user = text.split("User: ")[1].split("\n\nAgent: ")[0]
    agent = text.split("Agent: ")[1].split("\n\n<END CONVERSATION>")[0]
    assert cut and agent.count("y") >= user.count("x") >= 10
    with pytest.raises(ValueError, match="no room"):
        _prompter(frame).fit(long)


def test_classify_counts_truncated_prompts():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    frame = len(tok(_prompter(None).prompt(ModerationExample("")), add_special_tokens=False)["input_ids"])
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                         max_position_embeddings=frame + 80)).eval()
    prompter = _prompter(frame + 80)
    data = [ModerationExample("short one"), ModerationExample("long " * 100), ModerationExample("a", "b " * 100)]
    out = classify(model, prompter, data, max_new_tokens=4)
    assert out.truncated == 2 and len(out.texts) == 3
    assert score(data, out, ["S1"], False)["truncated"] == 2


def test_guard_eval_on_an_openai_moderation_file_lists_sexual_minors(tmp_path):
    """OpenAI's S3 (sexual/minors) flag reaches the prompt as S4 and gets per-category metrics."""
    from runner.core.cli import run_recipe

    flags = ("S", "H", "V", "HR", "SH", "S3", "H2", "V2")
    rows = [dict(prompt=f"benign message number {i}", **dict.fromkeys(flags, 0)) for i in range(12)]
    for i, on in enumerate([("S", "S3"), ("S", "S3"), ("S", "S3"), ("H",), ("V",), ("SH",)]):
        rows[i].update(dict.fromkeys(on, 1), prompt=f"flagged message number {i}")
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    r = run_recipe("guard_eval", ["run.smoke=true", "run.progress=false", "dataset=moderation_openai",
                                  f"dataset.path={path}", "algorithm.test_fraction=0.5"], run_dir=tmp_path / "run")
    assert "S4" in r["info"]["categories"] and r["info"]["categories_expected"]
    assert "S4" in r["metrics"]["per_category"]
