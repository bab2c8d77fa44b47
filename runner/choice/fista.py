"""Accelerated proximal gradient (FISTA with backtracking and adaptive restart) for the latent-effect logit.

Algorithm (x = (β, L), metric D = diag(s·I_β, s·ρ·I_L)):

    y ← x_0, t ← 1
    repeat
        (f_y, g) ← f(y), ∇f(y)
        x⁺ ← ( soft-threshold(y_β − s g_β, s λ1 w),  SVT(y_L − sρ g_L, sρ λ2) )        # prox step
        while f(x⁺) > f_y + ⟨g, x⁺ − y⟩ + ‖x⁺ − y‖²_{D⁻¹}/2:  s ← s/2, redo the prox step  # backtracking
        if ⟨y − x⁺, x⁺ − x⟩_{D⁻¹} > 0:  t ← 1                                          # adaptive restart
        t⁺ ← (1 + √(1 + 4t²))/2;  y ← x⁺ + (t − 1)/t⁺ (x⁺ − x);  x ← x⁺;  t ← t⁺
    until ‖x⁺ − y‖_{D⁻¹} ≤ tol                                                        # gradient-mapping norm

ρ = N / max_i T_i rescales the L block: the curvature of f in L_i is ~T_i/N of that in β, so one common
step would make the L block n_ind times slower. With ``problem.center`` the L prox first centres the
columns (the exact prox of λ2‖L‖_* restricted to Σ_i L_i = 0). The prox stays separable, so the block metric is exact.
Runs in torch float64 on the problem's device (CPU or GPU).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from runner.choice.model import (
    Fit,
    LatentLogitProblem,
    finish_fit,
    singular_value_threshold,
    threads_for,
)


def fista(problem: LatentLogitProblem, lam1: float, lam2: float, beta0: np.ndarray | None = None,
          L0: np.ndarray | None = None, max_iter: int = 5000, tol: float = 1e-8, step: float = 1.0,
          restart: bool = True) -> Fit:
    """Minimise F(β, L) at (λ1, λ2) from (β0, L0) (zeros if None); returns a :class:`Fit` (its ``info``
    holds the final step and whether ``tol`` was reached)."""
    with threads_for(problem.X.numel(), problem.device):
        return _fista(problem, lam1, lam2, beta0, L0, max_iter, tol, step, restart)


def _fista(problem: LatentLogitProblem, lam1: float, lam2: float, beta0: np.ndarray | None, L0: np.ndarray | None,
           max_iter: int, tol: float, step: float, restart: bool) -> Fit:
    dev, dt = problem.device, torch.float64
    t0 = time.perf_counter()
    beta = torch.zeros(problem.p, dtype=dt, device=dev) if beta0 is None else torch.as_tensor(beta0, device=dev)
    L = torch.zeros((problem.n_ind, problem.p), dtype=dt, device=dev) if L0 is None else torch.as_tensor(L0, device=dev)
    beta, L = beta.to(dt).clone(), L.to(dt).clone()
    counts = torch.bincount(problem.ind, minlength=problem.n_ind)
    rho = problem.N / float(counts.max())
    yb, yL = beta.clone(), L.clone()
    t, s = 1.0, float(step)
    converged, res, iterations = False, math.inf, 0
    for _ in range(max_iter):
        iterations += 1
        f_y, gb, gL = problem.loss_and_grad(yb, yL)
        while True:
            nb = problem.prox_beta(yb - s * gb, s * lam1)
            zL = yL - (s * rho) * gL
            if problem.center:  # prox of λ2‖L‖_* on the subspace Σ_i L_i = 0 (see LatentLogitProblem.prox)
                zL = zL - zL.mean(dim=0, keepdim=True)
            nL, _ = singular_value_threshold(zL, s * rho * lam2)
            db, dL = nb - yb, nL - yL
            sq = float((db * db).sum() + (dL * dL).sum() / rho)
            lin = float((gb * db).sum() + (gL * dL).sum())
            if float(problem.loss(nb, nL)) <= float(f_y) + lin + sq / (2 * s) + 1e-15 * abs(float(f_y)):
                break
            s *= 0.5
        res = math.sqrt(sq) / s
        if res <= tol:
            beta, L, converged = nb, nL, True
            break
        if restart and float(((yb - nb) * (nb - beta)).sum() + ((yL - nL) * (nL - L)).sum() / rho) > 0:
            t = 1.0
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        mom = (t - 1) / t_next
        yb, yL = nb + mom * (nb - beta), nL + mom * (nL - L)
        beta, L, t = nb, nL, t_next
        s *= 1.05  # let the step grow back after backtracking
    seconds = time.perf_counter() - t0
    return finish_fit(problem, beta.cpu().numpy(), L.cpu().numpy(), lam1, lam2, seconds, iterations, "fista",
                      {"converged": converged, "gradient_mapping": res, "step": s, "rho": rho})
