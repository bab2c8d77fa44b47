"""The latent_logit recipe end to end (smoke sizes), model selection and recovery, config errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import runner
from runner.choice.data import heldout_split, synthetic_panel
from runner.choice.model import ratio_rank
from runner.choice.path import cross_validate, fit_path, lambda_grid
from runner.core.cli import compose_recipe, run_recipe
from runner.core.errors import ConfigError

SWISSMETRO = Path(runner.PROJECT_ROOT).parent / "shared" / "data" / "swissmetro.dat"


def test_selected_model_recovers_rank_and_support():
    data, truth = synthetic_panel(80, 50, 6, n_alternatives=3, support=3, rank=2, latent_scale=1.5, seed=11)
    train, _ = heldout_split(data, 0.2, 0)
    grid, beta_u = lambda_grid(train, 6, 0.03, 3)
    assert len(grid) == 18 and len({g[1] for g in grid}) == 3  # 2-D: a λ1 path for each of three λ2 values
    cv = cross_validate(train, grid, 6, 3, seed=0, one_se=True, tol=1e-6)
    fits = fit_path(train, grid, 6, beta_u, tol=1e-8)
    assert fits[0].rank == 0 and fits[0].support().tolist() == [0, 1]  # at λ_max: L = 0, only the constants
    fit = fits[cv.selected]
    s = fit.singular_values()
    assert s[1] > 4 * s[2] and ratio_rank(s) == 2  # two signal directions, then a clear gap (ratio heuristic)
    pen = train.penalized
    assert set(fit.support()) & set(np.flatnonzero(pen)) == set(np.flatnonzero((truth.beta != 0) & pen))


def test_ratio_rank():
    assert ratio_rank(np.array([10.0, 8.0, 0.0, 0.0])) == 2
    assert ratio_rank(np.array([13.1, 10.7, 1.67, 1.54, 0.5, 0.0])) == 2
    assert ratio_rank(np.array([5.0, 0.0])) == 1 and ratio_rank(np.zeros(3)) == 0


def test_recipe_smoke(tmp_path):
    r = run_recipe("latent_logit", ["run.smoke=true", "run.progress=false"], run_dir=tmp_path)
    assert abs(r["solvers"]["relative_objective_gap"]) <= 1e-6
    uniform = r["dataset"]["n_obs_heldout"] * -np.log(3)  # held-out log-likelihood of guessing uniformly
    for name in ("latent_logit", "plain_logit", "mixed_logit", "mixed_logit_independent"):
        m = r["models"][name]
        assert m["heldout_loglik"] > uniform, name
        assert m["accuracy"] > 1 / 3 + 0.1 and m["seconds"] > 0, name  # three alternatives: chance is 1/3
    p = r["dataset"]["n_features"]
    assert r["models"]["mixed_logit"]["n_params"] == p + p * (p + 1) // 2  # means + Cholesky factor
    assert r["models"]["mixed_logit_independent"]["n_params"] == 2 * p and r["models"]["plain_logit"]["n_params"] == p
    assert set(r["models"]["mixed_logit"]["spec"]["random"]) == set(r["dataset"]["features"])  # constants too
    latent = r["models"]["latent_logit"]
    assert latent["n_params"] == len(latent["support"]) + latent["rank"] * (r["dataset"]["n_individuals"] - 1 + p
                                                                           - latent["rank"])
    assert r["recovery"]["rank_estimated"] == latent["rank"]  # the selected estimator's numerical rank
    latent, plain = r["models"]["latent_logit"], r["models"]["plain_logit"]
    assert latent["heldout_loglik"] > plain["heldout_loglik"] and latent["accuracy"] > plain["accuracy"]
    assert {"support_recovered", "rank_estimated", "L_relative_error"} <= set(r["recovery"])
    assert (tmp_path / "lambda_path_cv.png").exists() and (tmp_path / "singular_values.png").exists()
    assert (tmp_path / "results.json").exists()


@pytest.mark.skipif(not SWISSMETRO.exists(), reason="../shared/data/swissmetro.dat not present")
def test_recipe_swissmetro_smoke(tmp_path):
    r = run_recipe("latent_logit_swissmetro", ["run.smoke=true", "run.progress=false", f"dataset.path={SWISSMETRO}"],
                   run_dir=tmp_path)
    assert r["dataset"]["n_individuals"] == 40 and r["dataset"]["alternatives"] == ["train", "swissmetro", "car"]
    assert set(r["models"]) == {"latent_logit", "plain_logit", "mixed_logit", "mixed_logit_independent",
                                "mixed_logit_lognormal"}
    spec = r["models"]["mixed_logit"]["spec"]
    assert {"asc_train", "asc_car"} <= set(spec["random"]) and spec["covariance"] == "full (Cholesky)"
    assert r["models"]["mixed_logit_lognormal"]["spec"]["random"]["cost"] == "neg_lognormal"


def test_missing_dataset_file_names_dataset_path(tmp_path):
    with pytest.raises(ConfigError, match="dataset.path=.*does not exist"):
        compose_recipe("latent_logit_swissmetro", [f"dataset.path={tmp_path / 'nope.dat'}"])


def test_bad_algorithm_values_are_config_errors():
    with pytest.raises(ConfigError, match="algorithm.selection"):
        compose_recipe("latent_logit", ["algorithm.selection=aic"])
    with pytest.raises(ConfigError, match="algorithm.cv_folds"):
        compose_recipe("latent_logit", ["algorithm.cv_folds=1"])
    with pytest.raises(ConfigError, match="algorithm.beta_penalty"):
        compose_recipe("latent_logit", ["algorithm.beta_penalty=scad"])
    with pytest.raises(ConfigError, match="algorithm.adaptive_gamma"):
        compose_recipe("latent_logit", ["algorithm.adaptive_gamma=0"])
    with pytest.raises(ConfigError, match="mixed_models.m.random: unknown distribution"):
        compose_recipe("latent_logit", ["+algorithm.mixed_models.m={random: {x0: gamma}}"])
    with pytest.raises(ConfigError, match="algorithm.nonsense"):
        compose_recipe("latent_logit", ["+algorithm.nonsense=1"])
