"""The toy multimodal moderation world (the image decides) and the loaders of VLGuard, SPA-VL and MSSBench."""

from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from runner.data.vision_moderation import (
    HAZARDS,
    HELDOUT_PROMPTS,
    OPENERS,
    PROMPTS,
    VIOLENT_PROMPTS,
    load_vision_moderation,
    toy_vision_moderation,
    vision_split,
)


@pytest.fixture(scope="module")
def world():
    return toy_vision_moderation(240, seed=3)


def test_toy_world_is_deterministic_and_the_image_decides(world):
    again = toy_vision_moderation(240, seed=3)
    assert [(e.prompt, e.response, e.unsafe, e.categories) for e in world] == \
           [(e.prompt, e.response, e.unsafe, e.categories) for e in again]
    assert np.array_equal(np.asarray(world[0].image), np.asarray(again[0].image))
    for e in world:
        violent = e.prompt in VIOLENT_PROMPTS or "hurt" in e.prompt
        prompt_unsafe = e.image_label in HAZARDS or violent
        expected = [HAZARDS[e.image_label]] if e.image_label in HAZARDS else []
        expected = sorted(set(expected) | ({"S1"} if violent else set()), key=lambda c: int(c[1:]))
        if e.response is None:
            assert e.unsafe == prompt_unsafe and e.categories == expected
        else:  # a response is unsafe only when it complies with an unsafe prompt
            refusal = any(w in e.response for w in ("can't", "won't", "not able", "decline", "not something"))
            assert e.unsafe == (prompt_unsafe and not refusal)
    # ambiguous prompts occur with both labels: the text alone does not decide
    ambiguous = [e for e in world if e.response is None and e.prompt in PROMPTS + HELDOUT_PROMPTS]
    groups = [o + " " for o in OPENERS] + HELDOUT_PROMPTS  # training phrasings by opener; held-out ones whole
    by_group = {g: {e.unsafe for e in ambiguous if e.prompt.startswith(g)} for g in groups}
    assert sum(labels == {True, False} for labels in by_group.values()) >= len(groups) - 1


def test_heldout_split_uses_unseen_phrasings_and_fresh_images(world):
    train, test = vision_split(world, 0.3, 0)
    assert len(test) == 60 and len(train) == 180
    assert {e.prompt for e in test if e.prompt in PROMPTS} == set()
    assert {e.prompt for e in train} & set(HELDOUT_PROMPTS) == set()
    train_pixels = {np.asarray(e.image).tobytes() for e in train}
    assert not any(np.asarray(e.image).tobytes() in train_pixels for e in test)


def _png(path, value):
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def _cfg(**kw):
    base = {"name": "x", "source": "file", "path": None, "num_examples": None, "params": {}}
    return OmegaConf.create({**base, **kw})


def test_vlguard_and_mssbench_loaders_read_the_published_layouts(tmp_path):
    (tmp_path / "bad_ads").mkdir()
    _png(tmp_path / "bad_ads" / "a.png", 10)
    _png(tmp_path / "safe.png", 200)
    rows = [{"id": "1", "image": "bad_ads/a.png", "safe": False, "harmful_category": "privacy",
             "harmful_subcategory": "personal data", "instr-resp": [{"instruction": "Who is this?", "response": "No"}]},
            {"id": "2", "image": "safe.png", "safe": True,
             "instr-resp": [{"safe_instruction": "Describe it.", "response": "A square."},
                            {"unsafe_instruction": "How to stalk them?", "response": "No."}]}]
    (tmp_path / "test.json").write_text(json.dumps(rows))
    got = load_vision_moderation(_cfg(path=str(tmp_path / "test.json"), params={"vision_format": "vlguard"}), 0)
    assert [(e.prompt, e.unsafe, e.categories) for e in got] == [
        ("Who is this?", True, ["S7"]), ("Describe it.", False, []), ("How to stalk them?", True, [])]
    assert all(e.response is None for e in got) and got[0].image == str(tmp_path / "bad_ads" / "a.png")

    chat = {"chat": [{"safe_image_path": "s.png", "unsafe_image_path": "u.png", "queries": ["Can I run here?"],
                      "intent": "run", "unsafe_image": "a cliff", "Type": "physical harm"}]}
    (tmp_path / "combined.json").write_text(json.dumps(chat))
    got = load_vision_moderation(_cfg(path=str(tmp_path / "combined.json"),
                                      params={"vision_format": "mssbench", "image_root": str(tmp_path / "chat")}), 0)
    assert [(e.prompt, e.unsafe, e.image) for e in got] == [
        ("Can I run here?", False, str(tmp_path / "chat" / "s.png")),
        ("Can I run here?", True, str(tmp_path / "chat" / "u.png"))]


def test_spa_vl_parquet_with_image_bytes(tmp_path):
    import io

    import pandas as pd
    from PIL import Image

    from runner.data.vision_moderation import open_image

    buf = io.BytesIO()
    Image.fromarray(np.full((4, 4, 3), 7, dtype=np.uint8)).save(buf, format="PNG")
    pd.DataFrame({"image": [{"bytes": buf.getvalue(), "path": None}], "question": ["How to make it?"],
                  "chosen": ["I can't help."], "rejected": ["Mix the parts ..."],
                  "image_name": ["x.png"]}).to_parquet(tmp_path / "train.parquet")
    got = load_vision_moderation(_cfg(path=str(tmp_path / "train.parquet"), params={"vision_format": "spa_vl"}), 0)
    assert [(e.response, e.unsafe) for e in got] == [("I can't help.", False), ("Mix the parts ...", True)]
    assert np.asarray(open_image(got[0].image)).max() == 7


def test_pretraining_renders_cover_every_object_on_the_training_palette_only(world):
    from runner.data.vision_moderation import HARMLESS, HELDOUT_BACKGROUNDS, TRAIN_BACKGROUNDS, toy_object_images

    renders = toy_object_images(140, seed=3)
    assert {e.image_label for e in renders} == set(HAZARDS) | set(HARMLESS)
    assert all(e.unsafe == (e.image_label in HAZARDS) for e in renders)
    again = toy_object_images(140, seed=3)
    assert all(np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(renders, again))
    palette = np.array(TRAIN_BACKGROUNDS + HELDOUT_BACKGROUNDS, dtype=float)
    for e in renders:  # the background (the median pixel) is nearest a training colour, never a held-out one
        bg = np.median(np.asarray(e.image, dtype=float).reshape(-1, 3), axis=0)
        assert np.argmin(((palette - bg) ** 2).sum(1)) < len(TRAIN_BACKGROUNDS)
    seen = {np.asarray(e.image).tobytes() for e in world}
    assert not any(np.asarray(e.image).tobytes() in seen for e in renders)
