"""The latent-effect logit as a cvxpy conic program, with λ1, λ2 as DPP parameters.

    minimise  (1/N) Σ_n ℓ(y_n, V_n) + λ1 ‖w∘β‖₁ + λ2 · ½ (Σ_i L_i Z⁻¹ L_iᵀ + tr Z)   over β, L, Z ⪰ 0
    (β_k = 0 where w_k = ∞: the adaptive lasso's zeros)

The nuclear norm uses ‖L‖_* = min_{Z⪰0} ½(Σ_i L_i Z⁻¹ L_iᵀ + tr Z) (minimiser Z = (LᵀL)^{1/2}): one
``cp.matrix_frac`` per individual gives n_ind PSD blocks of size p+1, instead of the single
(n_ind + p)-sized block that ``cp.normNuc`` builds, so it scales to thousands of individuals. Utilities are
a sparse linear map of (β, vec L); the binary loss is ``cp.logistic``, the multinomial one ``cp.log_sum_exp``
over each availability pattern; ``center`` adds Σ_i L_i = 0 (see ``model.py``).
Because λ1, λ2 are parameters (DPP), a λ path compiles the problem once.
"""

from __future__ import annotations

import time
from typing import Any

import cvxpy as cp
import numpy as np
import scipy.sparse as sp

from runner.choice.data import ChoiceData
from runner.choice.model import Fit, LatentLogitProblem, check_weights, finish_fit


def nuclear_norm_matrix_frac(L: cp.Expression, Z: cp.Variable) -> cp.Expression:
    """½(Σ_i L_i Z⁻¹ L_iᵀ + tr Z): equals ‖L‖_* after minimising over Z ⪰ 0."""
    return 0.5 * (cp.sum(cp.hstack([cp.matrix_frac(L[i, :], Z) for i in range(L.shape[0])])) + cp.trace(Z))


def _utility_operator(X: np.ndarray, ind: np.ndarray, n_ind: int) -> sp.csr_matrix:
    """Sparse A (N × n_ind·p) with A vec(L) = (x_nᵀ L_{i(n)})_n, vec column-major (index k·n_ind + i)."""
    N, p = X.shape
    rows = np.repeat(np.arange(N), p)
    cols = (np.arange(p)[None, :] * n_ind + ind[:, None]).ravel()
    return sp.csr_matrix((X.ravel(), (rows, cols)), shape=(N, n_ind * p))


class CvxpyLatentLogit:
    """The compiled-once conic program for one data set; :meth:`solve` at any (λ1, λ2)."""

    def __init__(self, data: ChoiceData, solver: str = "CLARABEL", nuclear: str = "matrix_frac",
                 center: bool = True, solver_options: dict[str, Any] | None = None,
                 weights: np.ndarray | None = None):
        self.data, self.solver, self.solver_options = data, solver, dict(solver_options or {})
        N, J, p = data.X.shape
        n = data.n_ind
        self.lam1 = cp.Parameter(nonneg=True, name="lambda1")
        self.lam2 = cp.Parameter(nonneg=True, name="lambda2")
        self.beta = cp.Variable(p, name="beta")
        self.L = cp.Variable((n, p), name="L")
        vecL = cp.vec(self.L, order="F")

        def utility(Xj: np.ndarray, rows: np.ndarray | slice = slice(None)) -> cp.Expression:
            Xr = Xj[rows]
            return _utility_operator(Xr, data.ind[rows], n) @ vecL + Xr @ self.beta

        if J == 1:
            u = utility(data.X[:, 0, :])
            loss = (cp.sum(cp.logistic(u)) - data.y.astype(float) @ u) / N
        else:
            chosen = utility(data.X[np.arange(N), data.y, :])
            lse = []
            patterns, pattern_of = np.unique(data.avail, axis=0, return_inverse=True)
            for g, pattern in enumerate(patterns):
                rows = np.flatnonzero(pattern_of.ravel() == g)
                cols = [cp.reshape(utility(data.X[:, j, :], rows), (rows.size, 1), order="F")
                        for j in np.flatnonzero(pattern)]
                lse.append(cp.sum(cp.log_sum_exp(cp.hstack(cols), axis=1)))
            loss = (cp.sum(cp.hstack(lse)) - cp.sum(chosen)) / N
        if nuclear == "matrix_frac":
            self.Z = cp.Variable((p, p), PSD=True, name="Z")
            nuc = nuclear_norm_matrix_frac(self.L, self.Z)
        elif nuclear == "normNuc":
            self.Z, nuc = None, cp.normNuc(self.L)
        else:
            raise ValueError(f"nuclear={nuclear!r} must be 'matrix_frac' or 'normNuc'")
        w = check_weights(data, weights)
        fixed = np.flatnonzero(np.isinf(w))
        penalty = self.lam1 * cp.norm1(cp.multiply(np.where(np.isinf(w), 0.0, w), self.beta)) + self.lam2 * nuc
        constraints = [cp.sum(self.L, axis=0) == 0] if center else []
        if fixed.size:
            constraints.append(self.beta[fixed] == 0)
        self.problem = cp.Problem(cp.Minimize(loss + penalty), constraints)
        assert self.problem.is_dpp(), "the latent-logit program must be DPP so a λ path reuses its compilation"
        self._torch_problem = LatentLogitProblem(data, center=center, weights=w)

    def solve(self, lam1: float, lam2: float) -> Fit:
        """Solve at (λ1, λ2); the objective, residual and rank are recomputed by the shared model code."""
        self.lam1.value, self.lam2.value = float(lam1), float(lam2)
        t0 = time.perf_counter()
        self.problem.solve(solver=self.solver, **self.solver_options)
        seconds = time.perf_counter() - t0
        if self.problem.status not in ("optimal", "optimal_inaccurate"):
            raise RuntimeError(f"cvxpy ({self.solver}) returned status {self.problem.status} at λ=({lam1}, {lam2})")
        stats = self.problem.solver_stats
        info: dict[str, Any] = {"status": self.problem.status, "cvxpy_objective": float(self.problem.value),
                                "solve_seconds": stats.solve_time, "setup_seconds": stats.setup_time}
        extra = stats.extra_stats
        for key in ("r_prim", "r_dual"):
            if hasattr(extra, key):
                info[f"solver_{key}"] = float(getattr(extra, key))
        if hasattr(extra, "obj_val") and hasattr(extra, "obj_val_dual"):
            info["solver_duality_gap"] = abs(float(extra.obj_val) - float(extra.obj_val_dual))
        return finish_fit(self._torch_problem, self.beta.value, self.L.value, lam1, lam2, seconds,
                          int(stats.num_iters or 0), f"cvxpy-{self.solver.lower()}", info)
