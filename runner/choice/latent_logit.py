"""Recipe ``latent_logit``: the convex latent-effect logit against plain and mixed logit.

1. Load a panel (synthetic with ground truth, or a local Swissmetro file); hold out a share of every
   individual's observations.
2. 2-D λ grid from λ_max down (a λ1 path per λ2); K-fold CV split within individuals selects (λ1, λ2)
   (``path.py``), with warm-started paths on the training part (accelerated proximal gradient, ``fista.py``).
3. ``beta_penalty=adaptive_lasso`` (default): a second stage re-weights the ℓ1 penalty by
   w_k = 1/|β̃_k|^γ, β̃ the CV-minimising first-stage fit (Zou, 2006; Bühlmann & van de Geer, 2011, §2.8),
   and cross-validates again with those weights. CV-tuned lasso is prediction-optimal and keeps small spurious
   coefficients (a large λ1 would also shrink the true ones); the weights penalise small coefficients
   heavily and large ones lightly, which makes the selection consistent. λ2 stays at the first stage's
   selection (the nuclear norm is not re-weighted) and λ1 gets its own path. Same convex problem, both solvers.
4. ``refit`` (default): the final model is solved at the selected λ2 with λ1 = 0 on the selected support and
   β_k = 0 off it (relaxed lasso with φ = 0, Meinshausen 2007): the penalty selects, the refit estimates
   without its shrinkage. FISTA solves it warm-started from the selected path fit, cvxpy from scratch, and
   the two optima are compared.
5. Baselines: plain logit (``baselines.py``) and panel mixed logits by simulated maximum likelihood
   (``mixed.py``), each as ``mixed_models`` specifies it; the default ``mixed_logit`` gives every coefficient
   (alternative-specific constants included) a correlated normal individual deviation, the same coverage as
   β + L_i, so the comparison is like for like.
6. Report held-out log-likelihood, accuracy, specification (which coefficients vary by individual) and number
   of parameters of each model, parameter recovery on synthetic data (support of β, rank and error of L),
   runtimes, and plots of the λ path and the singular values.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from omegaconf import DictConfig

from runner.choice.baselines import fit_plain_logit
from runner.choice.data import ChoiceData, Truth, heldout_split, load_swissmetro, resolve_path, synthetic_panel
from runner.choice.fista import fista
from runner.choice.mixed import DISTRIBUTIONS, fit_mixed_logit, parse_spec
from runner.choice.model import (
    Fit,
    LatentLogitProblem,
    accuracy,
    adaptive_weights,
    predict_log_probs,
    ratio_rank,
    support_weights,
)
from runner.choice.path import PathSelection, select_path
from runner.core.context import RunContext
from runner.core.errors import ConfigError
from runner.core.seeding import derive_seed


@dataclass
class LatentLogitConfig:
    """The ``latent_logit`` algorithm (keys of ``conf/algorithm/latent_logit.yaml``)."""

    name: str = "latent_logit"
    center: bool = True  # constrain Σ_i L_i = 0 (β = population mean); see runner/choice/model.py
    n_lambdas: int = 8  # points per λ path
    lambda_min_ratio: float = 0.02  # smallest t in (λ1, λ2) = t·(λ1_max, c·λ2_max)
    n_lambda2: int = 6  # λ2 values of the 2-D grid (geometric from λ2_max down to lambda_min_ratio·λ2_max)
    cv_folds: int = 3
    selection: str = "cv_1se"  # cv (minimum CV loss) | cv_1se (most parsimonious within one SE)
    beta_penalty: str = "adaptive_lasso"  # lasso (one stage) | adaptive_lasso (re-weighted second stage)
    adaptive_gamma: float = 1.0  # adaptive-lasso weights 1/|β̃_k|^γ
    refit: bool = True  # final fit: λ1 = 0 on the selected support, β_k = 0 off it, same λ2 (relaxed lasso, φ=0)
    heldout_fraction: float = 0.2  # share of each individual's observations held out for evaluation
    tol: float = 1e-9  # FISTA gradient-mapping tolerance of the final fit at the selected (λ1, λ2)
    cv_tol: float = 1e-6  # looser tolerance inside cross-validation and along the λ paths
    max_iter: int = 20000
    rank_ratio_floor: float = 0.1  # labelled extra only: the eigenvalue-ratio rank heuristic (ratio_rank)
    support_tol: float = 1e-4  # |β_k| above support_tol·max(1, max|β|) is in the support
    compare_cvxpy: bool = True  # re-solve the selected (λ1, λ2) with cvxpy and compare objectives
    cvxpy_solver: str = "CLARABEL"
    cvxpy_max_individuals: int = 2000  # skip the cvxpy comparison above this many individuals
    plain_logit: bool = True
    mixed_logit: bool = True
    mixed_draws: int = 100  # Halton draws per individual
    mixed_max_iter: int = 300
    # name -> {random: null (every coefficient) | [features] | {feature: normal|lognormal|neg_lognormal},
    #          correlated: bool}
    mixed_models: dict[str, Any] = field(default_factory=lambda: {
        "mixed_logit": {"random": None, "correlated": True}})

    @staticmethod
    def validate(cfg: DictConfig) -> None:
        a, d = cfg.algorithm, cfg.dataset
        for name, m in a.mixed_models.items():
            extra = set(m) - {"random", "correlated"}
            if extra:
                raise ConfigError(f"algorithm.mixed_models.{name} has unknown keys {sorted(extra)} "
                                  "(allowed: random, correlated)")
            r = m.get("random")
            dists = set(r.values()) if hasattr(r, "values") else set()
            if dists - set(DISTRIBUTIONS):
                raise ConfigError(f"algorithm.mixed_models.{name}.random: unknown distribution(s) "
                                  f"{sorted(dists - set(DISTRIBUTIONS))} (allowed: {', '.join(DISTRIBUTIONS)})")
        for key in ("n_lambdas", "n_lambda2", "max_iter", "mixed_draws", "mixed_max_iter"):
            if a[key] < 1:
                raise ConfigError(f"algorithm.{key}={a[key]} must be >= 1")
        if a.cv_folds < 2:
            raise ConfigError(f"algorithm.cv_folds={a.cv_folds} must be >= 2")
        if not 0.0 < a.lambda_min_ratio < 1.0:
            raise ConfigError(f"algorithm.lambda_min_ratio={a.lambda_min_ratio} must be in (0, 1)")

        if a.selection not in ("cv", "cv_1se"):
            raise ConfigError(f"algorithm.selection={a.selection} must be one of: cv, cv_1se")
        if a.beta_penalty not in ("lasso", "adaptive_lasso"):
            raise ConfigError(f"algorithm.beta_penalty={a.beta_penalty} must be one of: lasso, adaptive_lasso")
        if a.adaptive_gamma <= 0:
            raise ConfigError(f"algorithm.adaptive_gamma={a.adaptive_gamma} must be > 0")
        if not 0.0 < a.heldout_fraction < 0.5:
            raise ConfigError(f"algorithm.heldout_fraction={a.heldout_fraction} must be in (0, 0.5)")
        if a.tol <= 0 or a.cv_tol <= 0:
            raise ConfigError("algorithm.tol and algorithm.cv_tol must be > 0")
        if not 0.0 < a.rank_ratio_floor < 1.0:
            raise ConfigError(f"algorithm.rank_ratio_floor={a.rank_ratio_floor} must be in (0, 1)")
        if d.source == "file":
            resolve_path(d.path, "dataset.path")
        elif d.source != "builtin":
            raise ConfigError(f"dataset.source={d.source} is not supported by latent_logit (use builtin or file)")


# --------------------------------------------------------------------------- data
def load_choice_dataset(d: DictConfig, seed: int) -> tuple[ChoiceData, Truth | None]:
    """``source=builtin``: :func:`synthetic_panel` with ``dataset.params``; ``source=file``: Swissmetro at
    ``dataset.path`` (params: ``purposes``, ``max_individuals``)."""
    params = dict(d.params)
    if d.source == "builtin":
        try:
            return synthetic_panel(**params, seed=derive_seed(seed, "choice-data"))
        except TypeError as e:
            raise ConfigError(f"dataset.params: {e}") from None
    data = load_swissmetro(resolve_path(d.path, "dataset.path"), params.get("purposes"))
    cap = params.get("max_individuals")
    if cap and cap < data.n_ind:
        keep = np.random.default_rng(derive_seed(seed, "subsample")).choice(data.n_ind, cap, replace=False)
        remap = np.full(data.n_ind, -1)
        remap[np.sort(keep)] = np.arange(cap)
        rows = np.flatnonzero(remap[data.ind] >= 0)
        data = ChoiceData(data.X[rows], data.y[rows], remap[data.ind[rows]], cap, data.avail[rows],
                          data.feature_names, data.penalized, data.alternatives)
    return data, None


# --------------------------------------------------------------------------- evaluation helpers
def _heldout(test: ChoiceData, log_probs: np.ndarray, acc: float, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"heldout_loglik": float(log_probs.sum()), "heldout_loglik_per_obs": float(log_probs.mean()),
            "accuracy": acc, "seconds": seconds, **extra}


def _recovery(fit: Fit, truth: Truth, penalized: np.ndarray, support_tol: float, rank_ratio_floor: float
              ) -> dict[str, Any]:
    """Support of β on the penalised coordinates (constants always in), rank and error of L vs the truth. The
    rank is the estimator's numerical rank; the eigenvalue-ratio heuristic is a labelled extra."""
    est_support = set(fit.support(support_tol).tolist()) & set(np.flatnonzero(penalized).tolist())
    true_support = set(np.flatnonzero((truth.beta != 0) & penalized).tolist())
    tp = len(est_support & true_support)
    s = fit.singular_values()
    return {
        "support_true": sorted(true_support), "support_estimated": sorted(est_support),
        "support_recovered": est_support == true_support,
        "support_precision": tp / max(1, len(est_support)), "support_recall": tp / max(1, len(true_support)),
        "rank_true": truth.rank, "rank_estimated": fit.rank, "rank_recovered": fit.rank == truth.rank,
        "rank_ratio_heuristic": ratio_rank(s, rank_ratio_floor),
        "rank_above_10pct": int(np.sum(s > 0.1 * s[0])) if s.size else 0,
        "L_relative_error": float(np.linalg.norm(fit.L - truth.L) / np.linalg.norm(truth.L)),
        "L_subspace_cosine": subspace_cosine(fit.L, truth.L, truth.rank),
        "beta_relative_error": float(np.linalg.norm(fit.beta - truth.beta) / np.linalg.norm(truth.beta)),
        "singular_values_estimated": s[: max(4, truth.rank + 2)].tolist(),
        "singular_values_true": np.linalg.svd(truth.L, compute_uv=False)[: max(4, truth.rank + 2)].tolist(),
    }


def subspace_cosine(L_hat: np.ndarray, L_true: np.ndarray, r: int) -> float:
    """cos of the largest principal angle between the top-r right singular subspaces (coefficient directions in
    which individuals differ) of the estimate and the truth: 1 = the same subspace, 0 = an orthogonal direction."""
    V_hat = np.linalg.svd(L_hat, full_matrices=False)[2][:r].T
    V_true = np.linalg.svd(L_true, full_matrices=False)[2][:r].T
    return float(np.linalg.svd(V_true.T @ V_hat, compute_uv=False).min()) if r else 1.0


def latent_n_params(fit: Fit, support_tol: float) -> int:
    """Free parameters of the fitted latent model: the non-zero β_k plus the dimension r(n − 1 + p − r) of the
    rank-r n × p matrices with Σ_i L_i = 0 (L = U Vᵀ with 1ᵀU = 0)."""
    n, p = fit.L.shape
    return int(fit.support(support_tol).size + fit.rank * (n - 1 + p - fit.rank))


def latent_spec(fit: Fit, data: ChoiceData, support_tol: float) -> dict[str, Any]:
    """Which coefficients vary by individual in the latent model: all of them (β + L_i), within a rank-r
    subspace; β's support is the population part."""
    return {"random": {n: "latent (rank-r L)" for n in data.feature_names}, "rank": fit.rank,
            "population_support": [data.feature_names[k] for k in fit.support(support_tol)],
            "n_params": latent_n_params(fit, support_tol)}


def _fit_summary(fit: Fit) -> dict[str, Any]:
    return {"objective": fit.objective, "optimality_residual": fit.residual, "rank": fit.rank,
            "seconds": fit.seconds, "iterations": fit.iterations,
            **{k: v for k, v in fit.info.items() if isinstance(v, (int, float, str, bool))}}


def _select(train: ChoiceData, a: DictConfig, ctx: RunContext, device: str, desc: str,
            weights: np.ndarray | None = None, lambda2: float | None = None) -> PathSelection:
    return select_path(train, a.n_lambdas, a.lambda_min_ratio, a.n_lambda2, a.cv_folds,
                       derive_seed(ctx.seed, "cv"), a.selection == "cv_1se", device, a.center, weights, lambda2,
                       lambda it: ctx.progress(it, desc=desc), cv_tol=a.cv_tol, tol=a.tol, max_iter=a.max_iter)


# --------------------------------------------------------------------------- the recipe
def run_latent_logit(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """Fit the convex latent-effect logit with λ selection, the baselines, and report (see module docstring)."""
    a = cfg.algorithm
    device = str(ctx.device)
    data, truth = load_choice_dataset(cfg.dataset, ctx.seed)
    train, test = heldout_split(data, a.heldout_fraction, derive_seed(ctx.seed, "heldout"))
    results: dict[str, Any] = {"dataset": {
        "name": cfg.dataset.name, "kind": "binary" if data.binary else "multinomial",
        "n_individuals": data.n_ind, "n_obs_train": train.n_obs, "n_obs_heldout": test.n_obs,
        "n_features": data.p, "features": data.feature_names, "alternatives": data.alternatives}}
    models: dict[str, Any] = {}

    # λ grid, cross-validation within individuals, warm-started path; adaptive lasso: a re-weighted second stage
    t0 = time.perf_counter()
    lasso = path = _select(train, a, ctx, device, "cv")
    weights = None
    if a.beta_penalty == "adaptive_lasso":
        initial = lasso.best  # the prediction-optimal (CV-minimising) lasso: the initial estimator β̃
        weights = adaptive_weights(initial.beta, train.penalized, a.adaptive_gamma)
        results["initial_lasso"] = {"lambda1": initial.lam1, "lambda2": initial.lam2,
                                    "cv_nll": float(lasso.cv.mean[lasso.cv.best]),
                                    "beta": dict(zip(data.feature_names, initial.beta.tolist())),
                                    "support": [data.feature_names[k] for k in initial.support(a.support_tol)]}
        if truth is not None:
            results["initial_lasso"]["recovery"] = _recovery(initial, truth, train.penalized, a.support_tol,
                                                             a.rank_ratio_floor)
        # λ2 (the nuclear norm is not re-weighted) stays at the first stage's selection; λ1 gets its own path
        path = _select(train, a, ctx, device, "adaptive cv", weights, lasso.selected.lam2)
    grid, cv, fits = path.grid, path.cv, path.fits
    selection_seconds = time.perf_counter() - t0
    for stage, sp in (("path", lasso), ("adaptive_path", path if path is not lasso else None)):
        for k, (f, (l1, l2)) in enumerate(zip(sp.fits, sp.grid) if sp is not None else ()):
            ctx.log({"lambda1": l1, "lambda2": l2, "cv_nll": sp.cv.mean[k], "cv_se": sp.cv.se[k],
                     "objective": f.objective, "rank": f.rank, "support_size": int(f.support(a.support_tol).size),
                     "iterations": f.iterations, "seconds": f.seconds}, step=k, stage=stage)
    sel = fits[cv.selected]
    results["selection"] = {"index": cv.selected, "best_index": cv.best, "rule": a.selection,
                            "beta_penalty": a.beta_penalty, "lambda1": sel.lam1,
                            "lambda2": sel.lam2, "cv_nll": float(cv.mean[cv.selected]),
                            "cv_nll_best": float(cv.mean[cv.best]), "grid_size": len(grid),
                            "grid": f"{a.n_lambdas} λ1 × {a.n_lambda2} λ2" if path is lasso else
                            f"{a.n_lambdas} λ1 × {a.n_lambda2} λ2, then {a.n_lambdas} λ1 (adaptive, λ2 fixed)",
                            "seconds": selection_seconds}
    if weights is not None:
        results["selection"]["adaptive_weights"] = dict(zip(data.feature_names,
                                                            [float(w) if np.isfinite(w) else "inf" for w in weights]))

    # the selected (λ1, λ2) solved from scratch by both solvers; refit: unpenalised β on the selected support
    lam1 = sel.lam1
    if a.refit:
        support = np.intersect1d(sel.support(a.support_tol), np.flatnonzero(train.penalized))
        weights, lam1 = support_weights(support, train.penalized), 0.0
        results["selection"]["refit_support"] = [data.feature_names[k] for k in support]
    problem = LatentLogitProblem(train, device, a.center, weights)
    # warm start from the selected point of the path (a first-order method's advantage along a λ path;
    # the interior-point solver starts from scratch): the same optimum, to the final tolerance
    first = fista(problem, lam1, sel.lam2, sel.beta, sel.L, max_iter=a.max_iter, tol=a.tol)
    solvers: dict[str, Any] = {"fista": {**_fit_summary(first), "warm_start": "selected path fit"}}
    if a.compare_cvxpy and train.n_ind <= a.cvxpy_max_individuals:
        from runner.choice.cvx import CvxpyLatentLogit

        t1 = time.perf_counter()
        conic = CvxpyLatentLogit(train, a.cvxpy_solver, center=a.center, weights=weights)
        cfit = conic.solve(lam1, sel.lam2)
        solvers["cvxpy"] = {**_fit_summary(cfit), "seconds_with_compile": time.perf_counter() - t1}
        solvers["relative_objective_gap"] = (first.objective - cfit.objective) / abs(cfit.objective)
        solvers["speedup_fista_vs_cvxpy"] = cfit.seconds / max(first.seconds, 1e-9)
    results["solvers"] = solvers

    lp = predict_log_probs(test, first.beta, first.L)
    models["latent_logit"] = _heldout(test, lp, accuracy(test, first.beta, first.L), selection_seconds,
                                      fit_seconds=first.seconds, rank=first.rank,
                                      spec=latent_spec(first, data, a.support_tol),
                                      n_params=latent_n_params(first, a.support_tol),
                                      rank_ratio_heuristic=ratio_rank(first.singular_values(), a.rank_ratio_floor),
                                      support=[data.feature_names[k] for k in first.support(a.support_tol)],
                                      beta=dict(zip(data.feature_names, first.beta.tolist())))
    if truth is not None:
        results["recovery"] = _recovery(first, truth, train.penalized, a.support_tol, a.rank_ratio_floor)

    # baselines
    if a.plain_logit:
        t1 = time.perf_counter()
        b = fit_plain_logit(train)
        secs = time.perf_counter() - t1
        models["plain_logit"] = _heldout(test, predict_log_probs(test, b, None), accuracy(test, b, None), secs,
                                         spec={"random": {}, "fixed": data.feature_names}, n_params=data.p,
                                         beta=dict(zip(data.feature_names, b.tolist())))
    if a.mixed_logit:
        for name, m in a.mixed_models.items():
            try:
                spec = parse_spec(m.get("random"), data.feature_names, bool(m.get("correlated", False)))
            except ValueError as e:
                raise ConfigError(f"algorithm.mixed_models.{name}.random: {e}") from None
            ml = fit_mixed_logit(train, spec, a.mixed_draws, derive_seed(ctx.seed, "halton"), a.mixed_max_iter)
            models[name] = _heldout(test, ml.heldout_log_probs(train, test), ml.heldout_accuracy(train, test),
                                    ml.seconds, spec=spec.describe(data.feature_names),
                                    n_params=spec.n_params(data.p), draws=a.mixed_draws, iterations=ml.iterations,
                                    converged=ml.converged, simulated_loglik_train=ml.loglik,
                                    **ml.summary(data.feature_names))
    results["models"] = models

    # plots: the λ path (CV loss and rank; the adaptive stage's λ1 path too) and the singular values
    series_cv, series_rank = {}, {}
    n_path = a.n_lambdas
    for j in range(a.n_lambda2):
        idx = range(j * n_path, (j + 1) * n_path)
        xs = [lasso.grid[k][0] for k in idx]
        label = f"λ2 = {lasso.grid[idx[0]][1]:.3g}"
        series_cv[label] = (xs, [float(lasso.cv.mean[k]) for k in idx])
        series_rank[label] = (xs, [lasso.fits[k].rank for k in idx])
    if path is not lasso:
        xs = [g[0] for g in grid]
        series_cv["adaptive, λ2 fixed"] = (xs, [float(v) for v in cv.mean])
        series_rank["adaptive, λ2 fixed"] = (xs, [f.rank for f in fits])
    ctx.plot("lambda_path_cv", series_cv, "λ1", "CV held-out NLL per obs", title="λ path: cross-validation")
    ctx.plot("lambda_path_rank", series_rank, "λ1", "rank of L", title="λ path: rank")
    s = first.singular_values()
    sv_series = {"selected L": (list(range(1, s.size + 1)), s.tolist())}
    if truth is not None:
        st = np.linalg.svd(truth.L, compute_uv=False)
        sv_series["true L"] = (list(range(1, st.size + 1)), st.tolist())
    ctx.plot("singular_values", sv_series, "index", "singular value", title="singular values of L", kind="scatter")
    return results
