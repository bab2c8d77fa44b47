"""Model selection: a λ path from λ_max downward with warm starts, and cross-validation within individuals.

    λ_max: (λ1_max, λ2_max) at which β_pen = 0, L = 0 is optimal (unpenalised constants fitted);
    grid:  the 2-D product λ1 ∈ t·λ1_max, λ2 ∈ u·λ2_max, t (``n_lambdas`` values) and u (``n_lambda2``) geometric
           from 1 down to ``min_ratio``; ordered as one λ1 path (large to small) per λ2 (large to small). Each
           fit warm-starts from the previous one on its λ1 path; the first of a path from the first of the
           previous path (the neighbouring λ2).
    CV:    every individual's observations are dealt into K folds (so each fold's training part still has
           every individual, which L_i needs); the held-out mean negative log-likelihood is averaged over
           folds; the selected λ minimises it, or with ``one_se`` is the most parsimonious grid point within
           one standard error of the minimum (largest λ2, then largest λ1).
    ℓ1 weights: every step takes the penalty weights w_k of λ1 Σ w_k|β_k| (``weights``; default 1 on the
           penalised coordinates), so the same code runs the adaptive lasso's second stage
           (w_k = 1/|β̃_k|^γ, Zou 2006; see ``runner/choice/latent_logit.py``), whose path is in λ1 alone
           (t_k·λ1_max(w), λ2 fixed).
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


def lambda_grid(data: ChoiceData, n_lambdas: int, min_ratio: float, n_lambda2: int = 1,
                center: bool = True, weights: np.ndarray | None = None, lambda2: float | None = None
                ) -> tuple[list[tuple[float, float]], np.ndarray]:
    """The (λ1, λ2) grid (one geometric λ1 path per λ2, both from large to small) and the unpenalised fit;
    ``weights``: the ℓ1 weights (see :class:`LatentLogitProblem`), which set λ1_max. With ``lambda2`` given,
    one path in λ1 alone, (t_k·λ1_max, lambda2)."""
    beta_u = fit_plain_logit(data, np.flatnonzero(~data.penalized))
    problem = LatentLogitProblem(data, center=center, weights=weights)
    l1max, l2max = problem.lambda_max(torch.as_tensor(beta_u))
    ts = np.geomspace(1.0, min_ratio, n_lambdas)
    if lambda2 is not None:
        return [(float(t * l1max), float(lambda2)) for t in ts], beta_u
    us = np.geomspace(1.0, min_ratio, n_lambda2)
    return [(float(t * l1max), float(u * l2max)) for u in us for t in ts], beta_u


def fit_path(data: ChoiceData, grid: list[tuple[float, float]], n_per_path: int, beta_start: np.ndarray,
             solve: Callable[..., Fit] | None = None, device: str = "cpu", center: bool = True,
             weights: np.ndarray | None = None, **fista_kw) -> list[Fit]:
    """Fit every grid point; within each path (``n_per_path`` consecutive points) warm-start from the last fit.
    ``solve(lam1, lam2)`` overrides the solver (e.g. a compiled :class:`CvxpyLatentLogit`)."""
    problem = LatentLogitProblem(data, device, center, weights)
    fits: list[Fit] = []
    for k, (lam1, lam2) in enumerate(grid):
        if solve is not None:
            fits.append(solve(lam1, lam2))
            continue
        start = fits[-1] if k % n_per_path else (fits[k - n_per_path] if k else None)
        beta0 = beta_start if start is None else start.beta
        L0 = None if start is None else start.L
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
                   weights: np.ndarray | None = None, **fista_kw) -> CVResult:
    """K-fold CV with folds split within individuals; warm-started paths on each training part."""
    folds = split_within_individuals(data.ind, n_folds, seed)
    losses = np.zeros((n_folds, len(grid)))
    for k in progress(range(n_folds)) if progress else range(n_folds):
        train, test = data.subset(np.flatnonzero(folds != k)), data.subset(np.flatnonzero(folds == k))
        beta_u = fit_plain_logit(train, np.flatnonzero(~train.penalized))
        fits = fit_path(train, grid, n_per_path, beta_u, device=device, center=center, weights=weights, **fista_kw)
        losses[k] = [-predict_log_probs(test, f.beta, f.L).mean() for f in fits]
    mean, se = losses.mean(0), losses.std(0, ddof=1) / np.sqrt(n_folds)
    best = int(np.argmin(mean))
    selected = best
    if one_se:  # the most parsimonious point within one SE: largest λ2 (rank), then largest λ1 (support)
        within = [j for j in range(len(grid)) if mean[j] <= mean[best] + se[best]]
        selected = max(within, key=lambda j: (grid[j][1], grid[j][0]))
    return CVResult(mean, se, best, selected)


@dataclass
class PathSelection:
    """A CV-tuned path: the grid, its fits on the whole training data and the CV result."""

    grid: list[tuple[float, float]]
    fits: list[Fit]
    cv: CVResult
    beta_start: np.ndarray  # the unpenalised fit every path starts from

    @property
    def selected(self) -> Fit:
        return self.fits[self.cv.selected]

    @property
    def best(self) -> Fit:
        return self.fits[self.cv.best]


def select_path(data: ChoiceData, n_lambdas: int, min_ratio: float, n_lambda2: int, n_folds: int,
                seed: int, one_se: bool = True, device: str = "cpu", center: bool = True,
                weights: np.ndarray | None = None, lambda2: float | None = None, progress: Callable | None = None,
                cv_tol: float = 1e-6, **fista_kw) -> PathSelection:
    """λ grid for the ℓ1 ``weights`` (a λ1-only path at a fixed ``lambda2`` if given), K-fold CV within
    individuals and the warm-started path on all of ``data``, both at ``cv_tol`` (``fista_kw``: iterations;
    the caller re-solves the selected point at its final tolerance)."""
    grid, beta_u = lambda_grid(data, n_lambdas, min_ratio, n_lambda2, center, weights, lambda2)
    cv_kw = {**fista_kw, "tol": cv_tol}
    cv = cross_validate(data, grid, n_lambdas, n_folds, seed, one_se, device, center, progress, weights, **cv_kw)
    fits = fit_path(data, grid, n_lambdas, beta_u, device=device, center=center, weights=weights, **cv_kw)
    return PathSelection(grid, fits, cv, beta_u)
