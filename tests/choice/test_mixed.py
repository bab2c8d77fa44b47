"""Mixed logit (runner/choice/mixed.py): the simulated likelihood against the plain logit and against xlogit on
the same draws, correlated and lognormal specifications, recovery of a known heterogeneity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import norm

from runner.choice.baselines import fit_plain_logit
from runner.choice.data import make_choice_data
from runner.choice.mixed import _Sim, fit_mixed_logit, halton_normal, parse_spec
from runner.choice.model import predict_log_probs


def _panel(n: int = 150, T: int = 8, seed: int = 0):
    """Three alternatives, two constants (asc1 random, sd 1), x0 normal (1, 0.8²), x1 = −lognormal(−0.2, 0.5²)."""
    rng = np.random.default_rng(seed)
    N, J = n * T, 3
    ind = np.repeat(np.arange(n), T)
    X = np.zeros((N, J, 4))
    X[:, 1, 0] = X[:, 2, 1] = 1.0
    X[:, :, 2:] = rng.standard_normal((N, J, 2))
    B = np.column_stack([0.3 + rng.standard_normal(n), np.full(n, -0.2), 1.0 + 0.8 * rng.standard_normal(n),
                         -np.exp(-0.2 + 0.5 * rng.standard_normal(n))])
    y = np.argmax(np.einsum("njp,np->nj", X, B[ind]) + rng.gumbel(size=(N, J)), axis=1)
    return make_choice_data(X, y, ind, None, None, ["asc1", "asc2", "x0", "x1"], np.array([0, 0, 1, 1], bool))


def test_halton_draws_are_standard_normal():
    d = halton_normal(200, 50, 2, seed=0)
    assert d.shape == (200, 50, 2)
    assert abs(d.mean()) < 0.02 and abs(d.std() - 1) < 0.02


def test_zero_scale_is_plain_logit_and_spec_parameters():
    data = _panel(40, 5)
    spec = parse_spec(None, data.feature_names, correlated=True)
    assert spec.random == (0, 1, 2, 3) and spec.n_params(data.p) == 4 + 10
    assert parse_spec(["x0"], data.feature_names).n_params(data.p) == 5
    with pytest.raises(ValueError, match="unknown feature"):
        parse_spec(["speed"], data.feature_names)
    mu = fit_plain_logit(data)
    sim = _Sim(data, spec, halton_normal(data.n_ind, 5, 4, 0))
    lp = sim.obs_log_probs(torch.as_tensor(np.r_[mu, np.zeros(10)]))
    np.testing.assert_allclose(lp[:, 3].numpy(), predict_log_probs(data, mu, None), atol=1e-12)


def test_matches_xlogit_on_the_same_draws_and_recovers_heterogeneity():
    xlogit = pytest.importorskip("xlogit")
    data = _panel()
    N, J, p = data.X.shape
    R = 100
    spec = parse_spec({"asc1": "normal", "x0": "normal", "x1": "neg_lognormal"}, data.feature_names)
    Xl = data.X.reshape(N * J, p).copy()
    Xl[:, 3] *= -1.0  # xlogit's lognormal is positive: −exp(z) on x1 is exp(z) on −x1
    alts = np.tile(np.arange(J), N)
    xl = xlogit.MixedLogit()
    xl.fit(Xl, alts == np.repeat(data.y, J), data.feature_names, alts, np.repeat(np.arange(N), J),
           {"asc1": "n", "x0": "n", "x1": "ln"}, panels=np.repeat(data.ind, J), n_draws=R, verbose=0)
    draws = norm.ppf(xl._generate_halton_draws(data.n_ind, R, spec.k)).transpose(0, 2, 1)  # xlogit's draws
    ours = fit_mixed_logit(data, spec, draws=draws, max_iter=1000)
    assert abs(ours.loglik - xl.loglikelihood) < 0.5
    np.testing.assert_allclose(ours.theta, xl.coeff_, atol=0.02)  # same optimum, same σ signs
    # the truth: asc1 sd 1, x0 mean 1 sd 0.8, log(−β_x1) mean −0.2 sd 0.5
    sd = ours.summary(data.feature_names)["sd"]
    assert abs(sd["asc1"] - 1.0) < 0.4 and abs(ours.mu[2] - 1.0) < 0.25 and abs(sd["x0"] - 0.8) < 0.35
    assert abs(ours.mu[3] + 0.2) < 0.3
    # full covariance nests the diagonal one: on the same draws its maximum is at least as high
    corr = fit_mixed_logit(data, parse_spec(spec.describe(data.feature_names)["random"], data.feature_names, True),
                           draws=draws, max_iter=1000)
    assert corr.loglik >= ours.loglik - 1e-3 and corr.spec.n_params(p) == p + 6
    assert ours.loglik > predict_log_probs(data, fit_plain_logit(data), None).sum() + 20  # heterogeneity matters
