"""What makes the tiny vision guard read the image: VLM pretraining on fresh renders teaches the vision tower the
objects on the held-out palette, and the guard stage leaves that tower as pretrained.

(The full effect, prompt F1 with the image ≥ the same guard without it + 0.1, needs the embedded default's
~4 minutes; a 45-second reduction of it does not learn the guard yet, so these tests check its two causes.)"""

from __future__ import annotations

import torch

from runner.core.cli import compose_recipe
from runner.core.context import RunContext
from runner.data.vision_moderation import HARMLESS, HAZARDS, toy_object_images, toy_vision_moderation
from runner.guard.vision import CAPTION_PROMPT, VISION_TOWER, caption_data, train_vision_guard
from runner.guard.vision_model import VisionPrompter, build_vision_guard, collate, model_inputs

OBJECTS = list(HAZARDS) + HARMLESS


def _guard(tmp_path, steps, extra=()):
    cfg = compose_recipe("guard_vision", ["run.progress=false", f"algorithm.pretrain_steps={steps}",
                                          "algorithm.warmup_steps=20", f"algorithm.checkpoint_every={steps}", *extra])
    torch.manual_seed(0)
    renders = toy_object_images(cfg.algorithm.pretrain_images, seed=0)
    corpus = [f"{CAPTION_PROMPT} {o}" for o in OBJECTS] + ["safe", "unsafe"]
    model, processor = build_vision_guard(cfg.model, cfg.hardware, corpus)
    return cfg, RunContext.open(cfg, tmp_path / "run"), model, VisionPrompter(processor, ["S1", "S9", "S11"]), renders


@torch.no_grad()
def _caption_accuracy(model, prompter, items) -> float:
    """Share of images whose most likely first caption token after "A picture of a" is their object's."""
    tok = prompter.tokenizer
    first = torch.tensor([tok(f" {o}", add_special_tokens=False)["input_ids"][0] for o in OBJECTS])
    batch = collate([prompter.encode(e, prompt=CAPTION_PROMPT) for e in items], tok.pad_token_id, left=True)
    pred = model(**model_inputs(batch, model.device)).logits[:, -1][:, first].argmax(-1)
    return sum(OBJECTS[int(p)] == e.image_label for p, e in zip(pred, items)) / len(items)


def test_pretraining_on_fresh_renders_teaches_the_objects_on_the_heldout_palette(tmp_path):
    cfg, ctx, model, prompter, renders = _guard(tmp_path, 700, ["algorithm.pretrain_images=3000"])
    heldout = [e for e in toy_vision_moderation(400, seed=1) if e.source == "toy-heldout"]
    before = _caption_accuracy(model, prompter, heldout)
    train_vision_guard(model, caption_data(prompter, renders), 700, cfg.algorithm, ctx,
                       prompter.tokenizer.pad_token_id, "pretrain", prompter.processor)
    after = _caption_accuracy(model, prompter, heldout)
    assert after >= 0.45 and after > before + 0.25, (before, after)  # chance: 1/7; 0.18 → 0.63 at one thread


def test_guard_stage_leaves_the_vision_tower_as_pretrained(tmp_path):
    cfg, ctx, model, prompter, renders = _guard(tmp_path, 3, ["algorithm.pretrain_images=16",
                                                              "algorithm.warmup_steps=1"])
    data = [prompter.encode(e, answer=True) for e in toy_vision_moderation(16, seed=0)]
    for scale, vision_moves in ((0.0, False), (1.0, True)):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        train_vision_guard(model, data, 3, cfg.algorithm, ctx, prompter.tokenizer.pad_token_id, f"train{scale}",
                           prompter.processor, vision_lr_scale=scale)
        moved = {n: not torch.equal(before[n], p) for n, p in model.named_parameters()}
        assert any(m for n, m in moved.items() if not n.startswith(VISION_TOWER))
        assert any(m for n, m in moved.items() if n.startswith(VISION_TOWER)) == vision_moves
        assert all(p.requires_grad for p in model.parameters())  # restored after the stage
