"""The fedbuff and papaya recipes: composition, config errors, and smoke runs of the embedded defaults."""

from __future__ import annotations

import json

import pytest

from runner.core.cli import compose_recipe, run_recipe
from runner.core.errors import ConfigError
from runner.core.report import comparable_results

FIELDS = ("time_to_target", "updates_to_target", "bytes_to_target", "final_accuracy")


def test_recipes_compose():
    cfg = compose_recipe("fedbuff")
    assert set(cfg.algorithm.servers) == {"fedbuff", "fedavgm", "fedasync"}
    assert compose_recipe("papaya").dataset.num_clients == 10**8


@pytest.mark.parametrize("override, key", [
    ("algorithm.servers.fedbuff.mode=fedsgd", "algorithm.servers.fedbuff.mode"),
    ("algorithm.servers.fedbuff.staleness=linear", "algorithm.servers.fedbuff.staleness"),
    ("algorithm.concurrency=0", "algorithm.concurrency"),
    ("dataset.kind=femnist", "dataset.kind=femnist needs dataset.path"),
])
def test_bad_configs_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose_recipe("fedbuff", [override])


def test_fedbuff_recipe_smoke(tmp_path):
    r = run_recipe("fedbuff", ["run.smoke=true"], run_dir=tmp_path)
    assert set(r["algorithms"]) == {"fedbuff", "fedavgm", "fedasync"}
    for name, a in r["algorithms"].items():
        assert all(k in a for k in FIELDS), name
        assert a["client_updates"] == 150 and a["global_model_finite"]
        assert a["reached_target"] and a["best_accuracy"] > a["initial_accuracy"] + 0.2, name  # chance is 0.1
    assert r["target_accuracy"] == 0.4
    curves = json.loads((tmp_path / "curves.json").read_text())
    for name, a in r["algorithms"].items():  # one evaluation per server step, plus the initial and final model
        assert {p["server_steps"] for p in curves[name]} == set(range(a["server_steps"] + 1)), name
    assert (tmp_path / "accuracy_vs_time.png").exists() and (tmp_path / "accuracy_vs_bytes.png").exists()


def test_same_seed_same_results_other_seed_other_results(tmp_path):
    """Determinism: one seed and one thread give the same results.json (but for timing keys) and curves."""
    runs = [run_recipe("papaya", ["run.smoke=true", f"seed={s}"], run_dir=tmp_path / f"{i}")
            for i, s in enumerate((3, 3, 4))]
    assert comparable_results(runs[0]) == comparable_results(runs[1])
    assert (tmp_path / "0" / "curves.json").read_text() == (tmp_path / "1" / "curves.json").read_text()
    assert comparable_results(runs[0]) != comparable_results(runs[2])


def test_papaya_recipe_smoke(tmp_path):
    r = run_recipe("papaya", ["run.smoke=true"], run_dir=tmp_path)
    assert set(r["by_concurrency"]) == {"5", "20"}
    for c, level in r["by_concurrency"].items():
        assert all(k in level["sync"] for k in FIELDS) and all(k in level["async"] for k in FIELDS)
        assert level["async"]["buffer_size"] == max(1, round(int(c) / 10))  # Papaya's K = C/10
        assert level["sync"]["reached_target"] and level["async"]["reached_target"], c
        assert level["speedup"] == pytest.approx(level["sync"]["time_to_target"] / level["async"]["time_to_target"])
        assert level["communication_ratio"] == pytest.approx(
            level["sync"]["bytes_to_target"] / level["async"]["bytes_to_target"])
    assert r["by_concurrency"]["20"]["speedup"] > 1  # async reaches the target first at the higher concurrency
    assert r["by_concurrency"]["20"]["async"]["realised_concurrency"] == pytest.approx(20.0)


@pytest.mark.parametrize("name", ["fedbuff_celeba", "fedbuff_sent140", "fedbuff_cifar10"])
def test_paper_scale_recipes_compose_and_need_a_path(name, tmp_path):
    cfg = compose_recipe(name, [f"dataset.path={tmp_path}"])
    assert cfg.algorithm.concurrency == 1000 and cfg.algorithm.backend.name == "ray"
    with pytest.raises(ConfigError, match="dataset.path"):
        compose_recipe(name)
