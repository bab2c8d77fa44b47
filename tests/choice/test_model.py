"""Math of the convex latent-effect logit against independent references."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

from runner.choice.cvx import CvxpyLatentLogit, nuclear_norm_matrix_frac
from runner.choice.data import DesignError, make_choice_data, split_within_individuals, synthetic_panel
from runner.choice.fista import fista
from runner.choice.model import LatentLogitProblem, nuclear_norm, singular_value_threshold


def _multinomial_with_availability(seed: int = 0):
    data, _ = synthetic_panel(12, 6, 5, n_alternatives=3, support=2, rank=2, seed=seed)
    avail = data.avail.copy()
    rng = np.random.default_rng(seed)
    drop = rng.random(data.n_obs) < 0.3
    alt = np.where(data.y == 2, 1, 2)  # never drop the chosen alternative
    avail[np.flatnonzero(drop), alt[drop]] = False
    return make_choice_data(data.X, data.y, data.ind, data.n_ind, avail, data.feature_names, data.penalized)


@pytest.mark.parametrize("kind", ["binary", "multinomial"])
def test_gradient_matches_finite_differences(kind):
    data = synthetic_panel(10, 5, 4, n_alternatives=1, seed=3)[0] if kind == "binary" else \
        _multinomial_with_availability()
    prob = LatentLogitProblem(data)
    rng = np.random.default_rng(1)
    beta = torch.as_tensor(rng.standard_normal(data.p) * 0.5)
    L = torch.as_tensor(rng.standard_normal((data.n_ind, data.p)) * 0.5)
    _, gb, gL = prob.loss_and_grad(beta, L)
    h = 1e-6
    fd_b = np.array([(prob.loss(beta + h * e, L) - prob.loss(beta - h * e, L)).item() / (2 * h)
                     for e in torch.eye(data.p, dtype=torch.float64)])
    np.testing.assert_allclose(gb.numpy(), fd_b, rtol=1e-6, atol=1e-9)
    for i, k in [(0, 0), (3, 2), (data.n_ind - 1, data.p - 1)]:
        E = torch.zeros_like(L)
        E[i, k] = h
        fd = (prob.loss(beta, L + E) - prob.loss(beta, L - E)).item() / (2 * h)
        assert gL[i, k].item() == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_nuclear_norm_reformulation_matches_svd():
    rng = np.random.default_rng(0)
    L = rng.standard_normal((15, 2)) @ rng.standard_normal((2, 4)) + 0.1 * rng.standard_normal((15, 4))
    svd_norm = np.linalg.svd(L, compute_uv=False).sum()
    Z = cp.Variable((4, 4), PSD=True)
    value = cp.Problem(cp.Minimize(nuclear_norm_matrix_frac(cp.Constant(L), Z))).solve(solver="CLARABEL")
    assert value == pytest.approx(svd_norm, rel=1e-6)
    assert float(nuclear_norm(torch.as_tensor(L))) == pytest.approx(svd_norm, rel=1e-12)


def test_singular_value_threshold_matches_numpy_svd():
    rng = np.random.default_rng(2)
    L = rng.standard_normal((40, 6)) @ np.diag([5, 3, 1, 0.5, 0.1, 0.01])
    U, s, Vt = np.linalg.svd(L, full_matrices=False)
    for t in (0.05, 0.7, 2.0):
        ref = (U * np.maximum(s - t, 0)) @ Vt
        out, sv = singular_value_threshold(torch.as_tensor(L), t)
        np.testing.assert_allclose(out.numpy(), ref, atol=1e-10)
        np.testing.assert_allclose(sv.numpy(), s, rtol=1e-8)


@pytest.mark.parametrize("kind,center", [("binary", True), ("multinomial", True), ("binary", False)])
def test_fista_matches_cvxpy_optimum(kind, center):
    data = synthetic_panel(25, 8, 4, n_alternatives=1, seed=5)[0] if kind == "binary" else \
        _multinomial_with_availability(7)
    prob = LatentLogitProblem(data, center=center)
    lam1, lam2 = 0.02, 0.01
    conic = CvxpyLatentLogit(data, center=center)
    ref = conic.solve(lam1, lam2)
    fit = fista(prob, lam1, lam2, tol=1e-10, max_iter=20000)
    assert fit.info["converged"]
    assert abs(fit.objective - ref.objective) / abs(ref.objective) <= 1e-6
    assert fit.residual < 1e-7
    np.testing.assert_allclose(fit.beta + fit.L, ref.beta + ref.L, atol=1e-3)
    again = conic.solve(2 * lam1, 2 * lam2)  # DPP: the compiled problem is reused for a new λ
    assert again.objective > ref.objective - 1e-9


def test_lambda_max_gives_the_null_model():
    from runner.choice.baselines import fit_plain_logit

    data, _ = synthetic_panel(20, 10, 5, n_alternatives=1, seed=4)
    prob = LatentLogitProblem(data)
    beta_u = fit_plain_logit(data, np.flatnonzero(~data.penalized))
    l1, l2 = prob.lambda_max(torch.as_tensor(beta_u))
    at = fista(prob, l1 * 1.001, l2 * 1.001, beta_u, tol=1e-10)
    assert np.all(at.beta[data.penalized] == 0) and at.rank == 0
    below = fista(prob, l1 * 0.8, l2 * 0.8, beta_u, tol=1e-10)
    assert np.any(below.beta[data.penalized] != 0) and below.rank >= 1


def test_bad_design_matrices_give_clear_errors():
    X = np.random.default_rng(0).standard_normal((6, 3))
    y = np.array([0, 1, 0, 1, 1, 0])
    ind = np.array([0, 0, 1, 1, 2, 2])
    bad = X.copy()
    bad[2, 1] = np.nan
    with pytest.raises(DesignError, match="NaN"):
        make_choice_data(bad, y, ind)
    with pytest.raises(DesignError, match="shape"):
        make_choice_data(X[:5], y, ind)
    with pytest.raises(DesignError, match="shape"):
        make_choice_data(X[None], y, ind[None])
    with pytest.raises(DesignError, match="no observations.*individual 1"):
        make_choice_data(X, y, np.array([0, 0, 2, 2, 3, 3]))
    with pytest.raises(DesignError, match="0 or 1"):
        make_choice_data(X, y + 1, ind)


def test_folds_split_within_individuals():
    ind = np.repeat(np.arange(30), 9)
    fold = split_within_individuals(ind, 3, seed=0)
    for k in range(3):
        assert set(ind[fold != k]) == set(range(30))  # every individual is in every training part
        assert np.all(np.bincount(ind[fold == k], minlength=30) == 3)
