"""The adaptive lasso on β (weighted ℓ1, Zou 2006): weights, both solvers, λ_max, and support recovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runner.choice.baselines import fit_plain_logit
from runner.choice.cvx import CvxpyLatentLogit
from runner.choice.data import heldout_split, synthetic_panel
from runner.choice.fista import fista
from runner.choice.model import LatentLogitProblem, adaptive_weights, support_weights
from runner.choice.path import select_path


def test_adaptive_weights_formula():
    beta = np.array([0.3, -2.0, 0.0, 0.5, -0.25])
    pen = np.array([False, True, True, True, True])
    w = adaptive_weights(beta, pen, gamma=1.0)
    np.testing.assert_allclose(w, [0.0, 0.5, np.inf, 2.0, 4.0])
    np.testing.assert_allclose(adaptive_weights(beta, pen, gamma=2.0), [0.0, 0.25, np.inf, 4.0, 16.0])


def test_weights_must_match_the_penalised_coordinates():
    data, _ = synthetic_panel(5, 4, 4, n_alternatives=1, seed=0)
    with pytest.raises(ValueError, match="penalised"):
        LatentLogitProblem(data, weights=np.array([1.0, 1.0, 1.0, 1.0]))  # the intercept is unpenalised
    with pytest.raises(ValueError, match="non-negative"):
        LatentLogitProblem(data, weights=np.array([0.0, -1.0, 1.0, 1.0]))


@pytest.mark.parametrize("n_alternatives", [1, 3])
def test_weighted_fista_matches_cvxpy_and_keeps_infinite_weights_at_zero(n_alternatives):
    data, _ = synthetic_panel(20, 8, 5, n_alternatives=n_alternatives, support=2, seed=6)
    pen = np.flatnonzero(data.penalized)
    weights = np.zeros(data.p)
    weights[pen] = np.linspace(0.5, 3.0, pen.size)
    weights[pen[0]] = np.inf  # the adaptive lasso's zero: β_k ≡ 0
    lam1, lam2 = 0.01, 0.01
    prob = LatentLogitProblem(data, weights=weights)
    fit = fista(prob, lam1, lam2, tol=1e-10, max_iter=20000)
    ref = CvxpyLatentLogit(data, weights=weights).solve(lam1, lam2)
    assert fit.info["converged"] and fit.beta[pen[0]] == 0.0 and abs(ref.beta[pen[0]]) < 1e-8
    assert abs(fit.objective - ref.objective) / abs(ref.objective) <= 1e-6
    np.testing.assert_allclose(fit.beta + fit.L, ref.beta + ref.L, atol=1e-3)
    # the weighted penalty, evaluated by hand: λ1 Σ w_k |β_k| over finite weights + λ2 ‖L‖_*
    finite = np.isfinite(weights)
    by_hand = float(prob.loss(torch.as_tensor(fit.beta), torch.as_tensor(fit.L))) + \
        lam1 * np.sum(weights[finite] * np.abs(fit.beta[finite])) + lam2 * np.linalg.svd(fit.L, compute_uv=False).sum()
    assert fit.objective == pytest.approx(by_hand, rel=1e-12)


def test_weighted_lambda_max_gives_the_null_model():
    data, _ = synthetic_panel(20, 10, 5, n_alternatives=1, seed=4)
    weights = np.where(data.penalized, [0.0, 0.5, 4.0, 1.0, 2.0], 0.0)
    prob = LatentLogitProblem(data, weights=weights)
    beta_u = fit_plain_logit(data, np.flatnonzero(~data.penalized))
    _, _, gL = prob.loss_and_grad(torch.as_tensor(beta_u), torch.zeros(data.n_ind, data.p, dtype=torch.float64))
    gb = gL.sum(0).numpy()
    l1, l2 = prob.lambda_max(torch.as_tensor(beta_u))
    assert l1 == pytest.approx(np.max(np.abs(gb[data.penalized]) / weights[data.penalized]))  # KKT at β_pen = 0
    at = fista(prob, l1 * 1.001, l2 * 1.001, beta_u, tol=1e-10)
    assert np.all(at.beta[data.penalized] == 0)
    below = fista(prob, l1 * 0.8, l2 * 1.001, beta_u, tol=1e-10)
    assert np.any(below.beta[data.penalized] != 0)


def test_adaptive_lasso_recovers_the_support_the_cv_lasso_over_selects():
    """Reduced default problem (multinomial, one true zero among four penalised β's), the recipe's two stages.
    The CV-tuned lasso (1-SE rule) never misses a true coefficient but keeps a small spurious one on some
    seeds; the adaptive second stage, tuned by the same rule on a λ1 path at the first stage's λ2, selects
    exactly the generating support on every seed, and so does the unpenalised refit on it."""
    over_selected = 0
    for seed in range(4):
        data, truth = synthetic_panel(60, 40, 6, n_alternatives=3, support=3, rank=2, latent_scale=1.5, seed=seed)
        train, _ = heldout_split(data, 0.2, 0)
        pen = train.penalized
        true_support = set(np.flatnonzero((truth.beta != 0) & pen))
        kw = dict(n_lambdas=6, min_ratio=0.02, n_lambda2=4, n_folds=3, seed=0, one_se=True,
                  cv_tol=1e-6, tol=1e-8)
        lasso = select_path(train, **kw)
        lasso_support = set(lasso.selected.support()) & set(np.flatnonzero(pen))
        assert lasso_support >= true_support, seed
        over_selected += lasso_support != true_support
        adaptive = select_path(train, weights=adaptive_weights(lasso.best.beta, pen), lambda2=lasso.selected.lam2,
                               **kw)
        assert len({lam2 for _, lam2 in adaptive.grid}) == 1  # a path in λ1 alone
        chosen = np.intersect1d(adaptive.selected.support(), np.flatnonzero(pen))
        assert set(chosen) == true_support, seed
        refit = fista(LatentLogitProblem(train, weights=support_weights(chosen, pen)), 0.0, adaptive.selected.lam2,
                      adaptive.selected.beta, adaptive.selected.L, tol=1e-8)
        assert set(refit.support()) & set(np.flatnonzero(pen)) == true_support, seed
        assert refit.objective <= adaptive.selected.objective  # no λ1 penalty: a better fit on the same support
    assert over_selected >= 1  # the case the adaptive stage is for occurs in this problem
