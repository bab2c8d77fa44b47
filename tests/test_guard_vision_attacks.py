"""PGD against a closed-form optimum, the GCG wrapper against the model's own image path, and nanogcg on it."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from runner.guard.vision_attacks import ImageConditioned, miss_rate, pgd_linf


@pytest.mark.parametrize("random_start", [False, True])
def test_pgd_reaches_the_linf_optimum_of_a_linear_loss(random_start):
    """min_x w·x over ‖x − x0‖∞ ≤ ε, x ∈ [0, 1] is x0 − ε·sign(w) clipped to [0, 1]."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 3, 5, 5, generator=g)
    w = torch.randn(4, 3, 5, 5, generator=g)
    eps = 0.1
    x = pgd_linf(x0, lambda z: (w * z).flatten(1).sum(1), eps, steps=10, step_size=0.05, random_start=random_start,
                 generator=g)
    assert torch.allclose(x, (x0 - eps * w.sign()).clamp(0, 1), atol=1e-6)
    assert (x - x0).abs().max() <= eps + 1e-6 and x.min() >= 0 and x.max() <= 1
    assert torch.equal(pgd_linf(x0, lambda z: z.sum(), 0.0, 5, 0.1), x0)


def test_miss_rate_counts_scores_below_the_threshold():
    assert miss_rate([0.1, 0.49, 0.5, 0.9], 0.5) == 0.5


@pytest.fixture(scope="module")
def tiny_guard():
    from runner.core.config import HardwareConfig
    from runner.data.vision_moderation import toy_vision_moderation
    from runner.guard.vision_model import VisionModelConfig, VisionPrompter, build_vision_guard

    torch.manual_seed(0)
    items = toy_vision_moderation(12, seed=0)
    cats = ["S1", "S9", "S11"]
    probe = VisionPrompter(None, cats)
    corpus = [probe.prompt(e) + probe.answer(e) for e in items]
    cfg = OmegaConf.structured(VisionModelConfig(kind="tiny", tokenizer="bpe", vocab_size=300, hidden_size=32,
                                                 intermediate_size=64, image_size=16, patch_size=4))
    model, processor = build_vision_guard(cfg, OmegaConf.structured(HardwareConfig()), corpus)
    return model, VisionPrompter(processor, cats), items


def test_image_conditioned_wrapper_equals_the_models_image_path(tiny_guard):
    from runner.guard.vision_model import collate

    model, prompter, items = tiny_guard
    ex = next(e for e in items if e.response is not None)
    enc = prompter.encode(ex)
    batch = collate([enc], prompter.tokenizer.pad_token_id, left=True)
    batch.pop("labels")
    with torch.no_grad():
        ref = model(**batch).logits
        ids = torch.tensor([enc.ids])
        got = ImageConditioned(model, enc)(inputs_embeds=model.get_input_embeddings()(ids)).logits
        no_image = model(input_ids=ids).logits
    assert torch.allclose(got, ref, atol=1e-5)
    assert not torch.allclose(no_image[:, -1], ref[:, -1], atol=1e-3)  # the image does reach the verdict


def test_nanogcg_drives_the_guard_on_a_response_suffix(tiny_guard):
    from runner.guard.vision_attacks import gcg_attack
    from runner.guard.vision_model import unsafe_probs

    model, prompter, items = tiny_guard
    ex = next(e for e in items if e.response is not None)
    res = gcg_attack(model, prompter, [ex], steps=2, search_width=8, topk=4, suffix_len=3, seed=0)
    assert len(res.suffixes) == 1 and res.suffixes[0].strip()
    assert not any(t in res.suffixes[0] for t in prompter.tokenizer.get_added_vocab())  # text only, no specials
    attacked = type(ex)(**{**ex.__dict__, "response": f"{ex.response} {res.suffixes[0]}"})
    assert res.p_attacked[0] == pytest.approx(unsafe_probs(model, prompter, [prompter.encode(attacked)])[0])
    assert res.p_clean[0] == pytest.approx(unsafe_probs(model, prompter, [prompter.encode(ex)])[0])
