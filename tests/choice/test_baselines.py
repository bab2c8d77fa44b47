"""Plain and mixed logit baselines, the Swissmetro loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import runner
from runner.choice.baselines import _obs_log_probs, fit_mixed_logit, fit_plain_logit, halton_normal
from runner.choice.data import load_swissmetro, make_choice_data, synthetic_panel
from runner.choice.model import predict_log_probs

SWISSMETRO = Path(runner.PROJECT_ROOT).parent / "shared" / "data" / "swissmetro.dat"


def test_plain_logit_matches_sklearn():
    from sklearn.linear_model import LogisticRegression

    data, _ = synthetic_panel(40, 10, 5, n_alternatives=1, seed=2)
    beta = fit_plain_logit(data)
    ref = LogisticRegression(C=np.inf, fit_intercept=False, tol=1e-12, max_iter=10_000)
    ref.fit(data.X[:, 0, :], data.y)
    np.testing.assert_allclose(beta, ref.coef_[0], atol=1e-5)


def test_halton_draws_are_standard_normal():
    d = halton_normal(200, 50, 2, seed=0)
    assert d.shape == (200, 50, 2)
    assert abs(d.mean()) < 0.02 and abs(d.std() - 1) < 0.02


def test_mixed_logit_likelihood_and_recovery():
    rng = np.random.default_rng(0)
    n, T = 150, 12
    ind = np.repeat(np.arange(n), T)
    X = rng.standard_normal((n * T, 3, 2))
    b = np.array([1.0, -1.0]) + np.array([1.5, 0.0]) * rng.standard_normal((n, 1))  # x0 random, sd 1.5
    y = np.argmax(np.einsum("njp,np->nj", X, b[ind]) + rng.gumbel(size=(n * T, 3)), axis=1)
    data = make_choice_data(X, y, ind)
    # with σ = 0 the simulated likelihood is the plain logit likelihood
    mu = fit_plain_logit(data)
    lp = _obs_log_probs(data, torch.as_tensor(mu), torch.zeros(1, dtype=torch.float64), np.array([0]),
                        torch.as_tensor(halton_normal(n, 5, 1, 0)))
    np.testing.assert_allclose(lp[:, 0].numpy(), predict_log_probs(data, mu, None), atol=1e-12)
    ml = fit_mixed_logit(data, np.array([0]), n_draws=50, seed=1, max_iter=200)
    assert abs(abs(ml.sigma[0]) - 1.5) < 0.5 and abs(ml.mu[0] - 1.0) < 0.35
    assert ml.loglik > predict_log_probs(data, mu, None).sum() + 20  # heterogeneity is worth the extra parameter


@pytest.mark.skipif(not SWISSMETRO.exists(), reason="../shared/data/swissmetro.dat not present")
def test_swissmetro_loader():
    data = load_swissmetro(SWISSMETRO)
    assert data.n_obs == 10_728 - 9 and data.n_ind == 1191  # one respondent has only CHOICE = 0 rows
    assert data.X.shape == (data.n_obs, 3, 5) and data.alternatives == ["train", "swissmetro", "car"]
    assert np.all(data.avail[np.arange(data.n_obs), data.y])
    assert data.X[:, :, 2].max() < 20 and data.X[:, :, 3].max() < 60  # times, costs scaled by 1/100
