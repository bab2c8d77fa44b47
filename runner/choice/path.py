"""Model selection: a λ path from λ_max downward with warm starts, and cross-validation within individuals.

    λ_max: (λ1_max, λ2_max) at which β_pen = 0, L = 0 is optimal (unpenalised constants fitted);
    path:  (λ1, λ2)_k = t_k · (λ1_max, c·λ2_max),  t_k geometric from 1 down to ``min_ratio``, for each
           scale c in ``lambda2_scales``; each fit starts from the previous one (warm start).
    CV:    every individual's observations are dealt into K folds (so each fold's training part still has
           every individual, which L_i needs); the held-out mean negative log-likelihood is averaged over
           folds; the selected λ minimises it, or with ``one_se`` is the most parsimonious grid point within
           one standard error of the minimum (largest λ2, then largest λ1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from runner.choice.baselines import fit_plain_logit
from runner.choice.data import ChoiceData, split_within_individuals
from runner.choice.fista import fista
from runner.choice.model import Fit, LatentLogitProblem, predict_log_probs


def lambda_grid(data: ChoiceData, n_lambdas: int, min_ratio: float, lambda2_scales: list[float],
                center: bool = True) -> tuple[list[tuple[float, float]], np.ndarray]:
    """The (λ1, λ2) grid (one geometric path per scale, each from large to small) and the unpenalised fit."""
    beta_u = fit_plain_logit(data, np.flatnonzero(~data.penalized))
    problem = LatentLogitProblem(data, center=center)
    l1max, l2max = problem.lambda_max(torch.as_tensor(beta_u))
    ts = np.geomspace(1.0, min_ratio, n_lambdas)
    grid = [(float(t * l1max), float(t * c * l2max)) for c in lambda2_scales for t in ts]
    return grid, beta_u


def fit_path(data: ChoiceData, grid: list[tuple[float, float]], n_per_path: int, beta_start: np.ndarray,
             solve: Callable[..., Fit] | None = None, device: str = "cpu", center: bool = True,
             **fista_kw) -> list[Fit]:
    """Fit every grid point; within each path (``n_per_path`` consecutive points) warm-start from the last fit.
    ``solve(lam1, lam2)`` overrides the solver (e.g. a compiled :class:`CvxpyLatentLogit`)."""
    problem = LatentLogitProblem(data, device, center)
    fits: list[Fit] = []
    for k, (lam1, lam2) in enumerate(grid):
        if solve is not None:
            fits.append(solve(lam1, lam2))
            continue
        warm = k % n_per_path != 0
        beta0 = fits[-1].beta if warm else beta_start
        L0 = fits[-1].L if warm else None
        fits.append(fista(problem, lam1, lam2, beta0, L0, **fista_kw))
    return fits


@dataclass
class CVResult:
    """Held-out mean negative log-likelihood per grid point: mean and standard error over folds."""

    mean: np.ndarray
    se: np.ndarray
    best: int
    selected: int


def cross_validate(data: ChoiceData, grid: list[tuple[float, float]], n_per_path: int, n_folds: int, seed: int,
                   one_se: bool = True, device: str = "cpu", center: bool = True, progress: Callable | None = None,
                   **fista_kw) -> CVResult:
    """K-fold CV with folds split within individuals; warm-started paths on each training part."""
    folds = split_within_individuals(data.ind, n_folds, seed)
    losses = np.zeros((n_folds, len(grid)))
    for k in progress(range(n_folds)) if progress else range(n_folds):
        train, test = data.subset(np.flatnonzero(folds != k)), data.subset(np.flatnonzero(folds == k))
        beta_u = fit_plain_logit(train, np.flatnonzero(~train.penalized))
        fits = fit_path(train, grid, n_per_path, beta_u, device=device, center=center, **fista_kw)
        losses[k] = [-predict_log_probs(test, f.beta, f.L).mean() for f in fits]
    mean, se = losses.mean(0), losses.std(0, ddof=1) / np.sqrt(n_folds)
    best = int(np.argmin(mean))
    selected = best
    if one_se:  # the most parsimonious point within one SE: largest λ2 (rank), then largest λ1 (support)
        within = [j for j in range(len(grid)) if mean[j] <= mean[best] + se[best]]
        selected = max(within, key=lambda j: (grid[j][1], grid[j][0]))
    return CVResult(mean, se, best, selected)
