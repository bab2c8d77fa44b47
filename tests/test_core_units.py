"""Units of the core: registry, checkpoints, seeding, reports, metric logs."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from runner.core import registry
from runner.core.checkpoint import Checkpointer, rng_state, set_rng_state
from runner.core.errors import ConfigError, MissingExtraError
from runner.core.logging import JsonlLogger
from runner.core.report import flatten, write_json
from runner.core.seeding import derive_seed, seed_everything


def test_registry_is_lazy_and_names_the_missing_extra(monkeypatch):
    monkeypatch.setitem(registry.REGISTRY, "rollout", dict(registry.REGISTRY["rollout"]))
    registry.register("rollout", "fake", "tests.fixtures.needs_missing_pkg:Engine", extra="gpu")
    with pytest.raises(MissingExtraError) as e:
        registry.get("rollout", "fake")
    assert "pip install -e '.[gpu]'" in str(e.value) and "definitely_not_installed_pkg" in str(e.value)
    with pytest.raises(ConfigError, match="registered: .*hf"):
        registry.get("rollout", "nope")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("rollout", "hf", "somewhere.else:Engine")


def test_vllm_engine_without_vllm_names_the_gpu_extra():
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm is installed")
    except ImportError:
        pass
    cls = registry.get("rollout", "vllm")
    with pytest.raises(MissingExtraError, match=r"\.\[gpu\]"):
        cls("some/model")


def test_every_registry_entry_points_to_an_importable_attribute():
    """Catches typos in the table; entries that need an optional extra may be missing here."""
    for kind, table in registry.REGISTRY.items():
        for name in table:
            try:
                assert registry.get(kind, name) is not None
            except MissingExtraError:
                assert table[name].extra is not None


def test_checkpointer_keeps_the_newest_and_rewinds_metrics(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    log = JsonlLogger(metrics)
    ck = Checkpointer(tmp_path / "ck", keep=2, metrics_path=metrics)
    for step in (1, 2, 3):
        log.log({"x": step}, step)
        ck.save("s", step, {"w": torch.tensor([float(step)])})
    log.log({"x": 4}, 4)
    assert ck.steps("s") == [2, 3]
    assert not list((tmp_path / "ck" / "s").glob("*.tmp"))
    latest = ck.load("s")
    assert latest["step"] == 3 and latest["state"]["w"].item() == 3.0 and latest["n_metric_records"] == 3
    JsonlLogger.truncate(metrics, latest["n_metric_records"])
    log.log({"x": 4.5}, 4)
    assert [r["x"] for r in JsonlLogger.read(metrics)] == [1, 2, 3, 4.5]
    log.close()
    assert ck.load("other") is None
    ck.mark_done("stage_a", {"f1": 0.5})
    assert ck.done("stage_a") == {"f1": 0.5} and ck.done("stage_b") is None


def test_rng_state_round_trip():
    seed_everything(3)
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_seed_everything_is_reproducible_and_derived_seeds_are_stable():
    seed_everything(11)
    a = torch.randn(3), np.random.rand(3), random.random()
    seed_everything(11)
    b = torch.randn(3), np.random.rand(3), random.random()
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert derive_seed(1, "client", 5) == derive_seed(1, "client", 5) != derive_seed(1, "client", 6)
    assert 0 <= derive_seed(0, "x") < 2**63


def test_write_json_cleans_numpy_torch_and_non_finite(tmp_path):
    p = write_json(tmp_path / "r.json", {"a": np.float32(1.5), "b": torch.tensor(2), "c": [math.nan, math.inf],
                                         "d": {"e": np.arange(2)}})
    assert json.loads(p.read_text()) == {"a": 1.5, "b": 2, "c": [None, "inf"], "d": {"e": [0, 1]}}
    assert flatten({"a": {"b": 1, "c": {"d": 2}}}) == {"a.b": 1, "a.c.d": 2}


def test_restoring_a_finished_stage_keeps_later_stages_records(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    log = JsonlLogger(metrics)
    ck = Checkpointer(tmp_path / "ck", keep=1, metrics_path=metrics)
    log.log({"x": 1}, 1, "a")
    ck.save("a", 1, {})
    log.log({"x": 2}, 2, "a")  # logged after a's checkpoint: a crashed mid-stage
    log.log({"y": 1}, 1, "b")
    JsonlLogger.truncate(metrics, ck.load("a")["n_metric_records"], "a")
    assert [(r["stage"], r["step"]) for r in JsonlLogger.read(metrics)] == [("a", 1), ("b", 1)]
    log.close()
