"""The vision guard recipes compose and pass preflight; the embedded default runs end to end in a smoke setting."""

from __future__ import annotations

import json
import math

import pytest

from runner.core.cli import compose_recipe, preflight, run_recipe
from runner.core.errors import ConfigError


def test_paper_recipe_composes_and_passes_preflight():
    cfg = compose_recipe("guard_vision_paper")
    assert cfg.model.hf_id == "meta-llama/Llama-Guard-3-11B-Vision" and cfg.model.kind == "hf"
    assert cfg.dataset.params.vision_format == "vlguard" and cfg.hardware.device == "cuda"
    assert list(cfg.algorithm.categories) == [f"S{i}" for i in range(1, 14)]
    assert len(preflight(["+recipe=guard_vision_paper", "dataset=mssbench"])) == 1
    assert compose_recipe("guard_vision_eval").algorithm.pgd.enabled is False


@pytest.mark.parametrize("override,key", [
    ("model=tiny_guard", "model=tiny_guard"),  # a text-only model is not a vision guard
    ("algorithm.pgd.steps=0", "algorithm.pgd"),
    ("algorithm.categories=[S1,S15]", "algorithm.categories"),
    ("dataset=moderation_toy", "vision_format"),
])
def test_bad_config_names_the_problem(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose_recipe("guard_vision", [override])


def test_gcg_without_nanogcg_fails_at_config_check(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "nanogcg" else real(name, *a))
    with pytest.raises(ConfigError, match=r'algorithm\.gcg\.enabled.*pip install --no-deps "nanogcg==0\.3\.0"'):
        compose_recipe("guard_vision")
    assert compose_recipe("guard_vision", ["algorithm.gcg.enabled=false"]).algorithm.gcg.enabled is False


def test_smoke_run_writes_every_result_and_figure(tmp_path):
    out = run_recipe("guard_vision", ["run.smoke=true", "run.progress=false"], tmp_path / "run")
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    for task in ("prompt", "response"):
        m = res["tasks"][task]
        assert set(m) >= {"precision", "recall", "f1", "fpr", "auprc", "per_category"}
        assert 0.0 <= m["f1"] <= 1.0 and m["n"] > 0
        assert "f1" in res["baselines"]["text_only"][task] and "f1" in res["baselines"]["bow"][task]
    pgd = res["robustness"]["pgd"]
    assert pgd["eps"] == pytest.approx(8 / 255) and 0.0 <= pgd["miss_rate_clean"] <= 1.0
    assert set(pgd["miss_rate_by_eps"]) == {"0/255", "8/255"}
    assert not math.isnan(pgd["mean_p_unsafe_attacked"])
    # PGD only lowers P(unsafe) on unsafe items (sign descent from the clean image, random start aside)
    assert pgd["mean_p_unsafe_attacked"] <= pgd["mean_p_unsafe_clean"] + 1e-3
    assert set(out["claims"]) == {"image_matters", "text_alone_not_enough", "pgd_raises_misses"}
    for name in ("examples.png", "pgd_examples.png", "pgd_miss_rate.png", "threshold_curves_prompt.png"):
        assert (tmp_path / "run" / name).is_file(), name
    assert "![examples](examples.png)" in (tmp_path / "run" / "summary.md").read_text()
