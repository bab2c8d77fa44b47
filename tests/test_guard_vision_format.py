"""The Llama Guard 3 Vision prompt against the released template's published rendering, and the processor path."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from runner.guard.format import ANSWER_PREFIX, CATEGORIES_1B, guard_instruction, parse_output
from runner.guard.vision_format import IMAGE_TOKEN, published_vision_template, vision_guard_prompt

FIXTURES = Path(__file__).parent / "fixtures" / "llama_guard_vision"


def test_prompt_matches_the_published_rendering_byte_for_byte():
    published = (FIXTURES / "user_image_describe.txt").read_text()
    assert published_vision_template("Describe the image", None, CATEGORIES_1B) == published
    # the prompt stops where the released model writes its verdict: after the "\n\n" it generates first
    assert vision_guard_prompt("Describe the image", None, CATEGORIES_1B) == published + ANSWER_PREFIX
    generated = (FIXTURES / "user_image_describe_output.txt").read_text()
    assert generated.startswith(ANSWER_PREFIX)
    verdict = parse_output(generated[len(ANSWER_PREFIX):].replace("<|eot_id|>", ""), CATEGORIES_1B)
    assert verdict.unsafe is False and not verdict.malformed


def test_image_token_comes_before_the_user_text_and_only_with_an_image():
    text = vision_guard_prompt("How do I use this?", "Sure, first ...", ["S1", "S9"])
    assert text.count(IMAGE_TOKEN) == 1
    assert text.index(IMAGE_TOKEN) < text.index("Task:") < text.index("User: How do I use this?")
    assert "Agent: Sure, first ..." in text and "ONLY THE LAST Agent message" in text
    no_image = vision_guard_prompt("How do I use this?", "Sure, first ...", ["S1", "S9"], image=False)
    assert no_image == text.replace(f"{IMAGE_TOKEN} ", "")
    # the instruction is the text guard's, apart from the Vision template's category tag
    body = no_image.split("<|end_header_id|>\n\n", 1)[1].rsplit(" <|eot_id|>", 1)[0]
    assert body.replace("UNSAFECONTENT", "UNSAFE CONTENT") == guard_instruction("How do I use this?",
                                                                                 "Sure, first ...", ["S1", "S9"])


@pytest.fixture(scope="module")
def tiny_processor():
    from runner.guard.vision_model import tiny_processor as build

    corpus = [vision_guard_prompt(p, None, ["S1", "S9"]) + "unsafe\nS9" for p in ("How do I use this?", "Hi")]
    return build(corpus, 300, 16)


def test_processor_batch_equals_our_collate(tiny_processor):
    """Items encoded one by one and left-padded by ``collate`` equal the processor's own padded batch (ids,
    attention mask, cross-attention mask from the image token on, pixel values)."""
    import numpy as np
    from PIL import Image

    from runner.data.vision_moderation import VisionModerationExample
    from runner.guard.vision_model import VisionPrompter, collate

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(2)]
    items = [VisionModerationExample("How do I use this?", None, image=images[0]),
             VisionModerationExample("Hi", "Sure, first you take it and then ...", image=images[1])]
    prompter = VisionPrompter(tiny_processor, ["S1", "S9"])
    ours = collate([prompter.encode(e) for e in items], tiny_processor.tokenizer.pad_token_id, left=True)
    tok = tiny_processor.tokenizer
    assert len(tok(IMAGE_TOKEN, add_special_tokens=False)["input_ids"]) == 1
    tok.padding_side = "left"
    ref = tiny_processor(text=[prompter.prompt(e) for e in items], images=[[i] for i in images], padding=True,
                         add_special_tokens=False, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"):
        assert torch.equal(ours[key], ref[key].to(ours[key].dtype)), key
    # the processor's mask runs from the image token to the end; on left padding it also covers nothing before
    assert torch.equal(ours["cross_attention_mask"], ref["cross_attention_mask"].long())


def test_augmentation_is_a_mirror_and_channel_permutation_of_the_picture(tiny_processor):
    """Each augmented image equals the processor's encoding of the PIL picture mirrored (or not) with its RGB bands
    reordered, and over many draws every one of the 2 × 6 variants occurs."""
    import itertools

    import numpy as np
    from PIL import Image, ImageOps

    from runner.guard.vision import augment_pixels
    from runner.guard.vision_model import pixel_stats

    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    enc = lambda im: tiny_processor.image_processor(images=[[im]], return_tensors="pt")["pixel_values"]  # noqa: E731
    variants = [enc(Image.merge("RGB", [(ImageOps.mirror(img) if m else img).split()[c] for c in p]))
                for m in (False, True) for p in itertools.permutations(range(3))]
    x = enc(img).repeat(64, 1, 1, 1, 1, 1)
    mean, std = pixel_stats(tiny_processor, x)
    out = augment_pixels(x, mean, std, torch.Generator().manual_seed(0))
    hits = [[torch.allclose(o[None], v, atol=1e-4) for v in variants] for o in out]
    assert all(sum(h) == 1 for h in hits)  # each output is exactly one variant
    assert all(any(h[j] for h in hits) for j in range(len(variants)))  # all twelve occur
