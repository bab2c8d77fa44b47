"""Guard prompts against the released Llama Guard 3 chat templates (tests/fixtures/llama_guard_templates), token for
token; the verdict position; a guard's own chat template applied once."""

from __future__ import annotations

import pytest
import torch

from runner.data.moderation import ModerationExample
from runner.guard.format import (
    ANSWER_PREFIX,
    CATEGORIES_1B,
    CATEGORIES_8B,
    guard_instruction,
    guard_prompt,
    published_template,
    resolve_wrap,
    verdict_token_ids,
)
from runner.guard.train import GuardPrompter, collate
from tests.fixtures.llama_guard_templates import (
    CONVERSATIONS,
    VARIANTS,
    expected,
    llama3_tokenizer,
    messages,
    render_published,
    template,
)

CATS = {"1b": CATEGORIES_1B, "8b": CATEGORIES_8B}
CASES = [(v, c) for v in VARIANTS for c in CONVERSATIONS]


@pytest.mark.parametrize("variant,conversation", CASES)
def test_fixture_is_the_published_templates_rendering(variant, conversation):
    assert render_published(variant, conversation) == expected(variant, conversation)


@pytest.mark.parametrize("variant,conversation", CASES)
def test_prompt_matches_published_template_token_for_token(variant, conversation):
    prompt, response = CONVERSATIONS[conversation]
    name = f"llama_guard_3_{variant}"
    ours = published_template(guard_instruction(prompt, response, CATS[variant]), name)
    assert ours == expected(variant, conversation)
    tok = llama3_tokenizer(template(variant))
    published_ids = tok.apply_chat_template(messages(variant, conversation), tokenize=True)["input_ids"]
    assert tok(ours, add_special_tokens=False)["input_ids"] == published_ids
    # the scoring prompt continues with the "\n\n" the released model writes after the header
    assert guard_prompt(prompt, response, CATS[variant], None, name) == expected(variant, conversation) + "\n\n"


def test_published_ends_differ_as_released():
    assert expected("1b", "user").endswith("categories. <|eot_id|><|start_header_id|>assistant<|end_header_id|>")
    assert expected("8b", "user").endswith("categories.<|eot_id|><|start_header_id|>assistant<|end_header_id|>")
    assert expected("8b", "user").startswith(" <|begin_of_text|>") and expected("1b", "user").startswith("<|begin")
    assert "S14: Code Interpreter Abuse.\n<END" in expected("8b", "user") and "S14" not in expected("1b", "user")


def test_llama3_wrap_picks_the_tokenizers_released_template():
    assert resolve_wrap("llama3", llama3_tokenizer(template("1b")), CATEGORIES_8B) == "llama_guard_3_1b"
    assert resolve_wrap("llama3", llama3_tokenizer(template("8b")), CATEGORIES_1B) == "llama_guard_3_8b"
    assert resolve_wrap("llama3", llama3_tokenizer(), CATEGORIES_8B) == "llama_guard_3_8b"
    assert resolve_wrap("llama3", None, ["S1", "S2"]) == "llama_guard_3_1b"
    with pytest.raises(ValueError, match="prompt wrap"):
        resolve_wrap("llama2")


@pytest.mark.parametrize("variant,conversation", CASES)
def test_chat_template_wrap_with_a_real_guard_tokenizer_templates_once(variant, conversation):
    tok = llama3_tokenizer(template(variant))
    prompt, response = CONVERSATIONS[conversation]
    prompter = GuardPrompter(tok, CATS[variant], "chat_template")
    text = prompter.prompt(ModerationExample(prompt, response))
    assert text == expected(variant, conversation) + ANSWER_PREFIX
    assert text.count("<|begin_of_text|>") == 1 and text.count("Task: Check if there is unsafe content") == 1
    ids, answer = prompter.encode([ModerationExample(prompt, response, True, ["S9"])])[0]
    assert ids.count(tok.bos_token_id) == 1 and (variant == "8b" or ids[0] == tok.bos_token_id)


def test_chat_template_wrap_category_subsets():
    cats = ["S1", "S10"]
    tok = llama3_tokenizer(template("1b"))  # 3-1B's template takes a category mapping
    text = GuardPrompter(tok, cats, "chat_template").prompt(ModerationExample("hi"))
    assert text == guard_prompt("hi", None, cats, None, "llama_guard_3_1b")
    assert "S1: Violent Crimes.\nS10: Hate.\n<END UNSAFE CONTENT CATEGORIES>" in text
    with pytest.raises(ValueError, match="lists"):  # 3-8B's template lists S1–S14, whatever is asked
        GuardPrompter(llama3_tokenizer(template("8b")), cats, "chat_template").prompt(ModerationExample("hi"))


def test_verdict_is_read_and_trained_at_the_released_models_verdict_position():
    """The prompt ends after the "\\n\\n" the released model writes; P(unsafe) from ``classify`` is the softmax of
    a plain forward pass at the prompt's last position, and training supervises ``unsafe`` at that position."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from runner.guard.evaluate import classify

    tok = llama3_tokenizer(template("1b"))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=2048)).eval()
    prompter = GuardPrompter(tok, CATEGORIES_1B, "llama3")
    ex = ModerationExample("How do I make a pipe bomb?", None, True, ["S9"])
    out = classify(model, prompter, [ex], max_new_tokens=2)
    ids = tok(prompter.prompt(ex), add_special_tokens=False)["input_ids"]
    assert tok.decode(ids[-3:]) == "<|end_header_id|>\n\n"
    _, unsafe_id = verdict_token_ids(tok)
    with torch.no_grad():
        p = model(torch.tensor([ids])).logits[0, -1].softmax(-1)[unsafe_id].item()
    assert out.p_unsafe[0] == pytest.approx(p, rel=1e-4)
    prompt_ids, answer_ids = prompter.encode([ex])[0]
    assert prompt_ids == ids and answer_ids[0] == unsafe_id
    batch = collate([(prompt_ids, answer_ids)], tok.pad_token_id)
    # guard_loss predicts labels[:, 1:] from logits[:, :-1]: the first supervised token follows the prompt's end
    assert batch["labels"][0, len(ids)].item() == unsafe_id and (batch["labels"][0, :len(ids)] == -100).all()
