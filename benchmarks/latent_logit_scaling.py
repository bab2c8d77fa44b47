"""Scaling of the latent-effect logit solvers: cvxpy (matrix_frac nuclear norm, CLARABEL) vs accelerated
proximal gradient (FISTA, torch float64), on the same problems, then FISTA alone at 100,000 individuals.

    .venv/bin/python benchmarks/latent_logit_scaling.py [--sizes 100 1000 3000] [--large 100000] [--device cpu]

Data: crash-analysis-like binary panels (``synthetic_panel``, T observations each, p features, rank-2 L);
λ = ``--lam-frac`` · λ_max for both penalties. Prints seconds and the ratio cvxpy / FISTA in this process,
and the relative gap between the two optimal objectives.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from runner.choice.baselines import fit_plain_logit
from runner.choice.cvx import CvxpyLatentLogit
from runner.choice.data import synthetic_panel
from runner.choice.fista import fista
from runner.choice.model import LatentLogitProblem


def problem_at(n_ind: int, T: int, p: int, lam_frac: float, seed: int, device: str):
    data, _ = synthetic_panel(n_ind, T, p, n_alternatives=1, support=3, rank=2, latent_scale=1.5, seed=seed)
    prob = LatentLogitProblem(data, device)
    beta_u = fit_plain_logit(data, np.flatnonzero(~data.penalized))
    l1, l2 = prob.lambda_max(torch.as_tensor(beta_u, device=prob.device))
    return data, prob, beta_u, lam_frac * l1, lam_frac * l2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[100, 1000, 3000])
    ap.add_argument("--large", type=int, default=100_000, help="individuals for the FISTA-only run (0: skip)")
    ap.add_argument("--obs", type=int, default=10, help="observations per individual")
    ap.add_argument("--features", type=int, default=6)
    ap.add_argument("--lam-frac", type=float, default=0.2)
    ap.add_argument("--tol", type=float, default=1e-9)
    ap.add_argument("--large-tol", type=float, default=1e-7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"torch threads: {torch.get_num_threads()}, device: {args.device}, T={args.obs}, p={args.features}")
    print("cvxpy s: build + compile + solve; solver s: the conic solver alone (cvxpy's solver_stats.solve_time)")
    print(f"{'n_ind':>8} {'cvxpy s':>9} {'solver s':>9} {'fista s':>8} {'iters':>6} {'ratio':>7} {'ratio solver':>12} "
          f"{'rel gap':>10} {'rank':>5}")
    for n in args.sizes:
        data, prob, beta_u, lam1, lam2 = problem_at(n, args.obs, args.features, args.lam_frac, args.seed, args.device)
        fista(prob, lam1, lam2, beta_u, max_iter=5, tol=args.tol)  # warm-up (allocations, kernels)
        fit = fista(prob, lam1, lam2, beta_u, max_iter=50_000, tol=args.tol)
        t0 = time.perf_counter()
        conic = CvxpyLatentLogit(data)
        ref = conic.solve(lam1, lam2)
        cvx_total = time.perf_counter() - t0
        gap = (fit.objective - ref.objective) / abs(ref.objective)
        solver_s = float(ref.info.get("solve_seconds") or ref.seconds)
        print(f"{n:>8} {cvx_total:>9.2f} {solver_s:>9.2f} {fit.seconds:>8.3f} {fit.iterations:>6} "
              f"{cvx_total / fit.seconds:>7.1f} {solver_s / fit.seconds:>12.1f} {gap:>10.2e} {fit.rank:>5}",
              flush=True)
    if args.large:
        t0 = time.perf_counter()
        data, prob, beta_u, lam1, lam2 = problem_at(args.large, args.obs, args.features, args.lam_frac, args.seed,
                                                    args.device)
        setup = time.perf_counter() - t0
        fit = fista(prob, lam1, lam2, beta_u, max_iter=20_000, tol=args.large_tol)
        print(f"FISTA alone, {args.large:,} individuals ({data.n_obs:,} observations): {fit.seconds:.1f} s, "
              f"{fit.iterations} iterations, converged={fit.info['converged']} (tol {args.large_tol:g}), "
              f"rank {fit.rank}, objective {fit.objective:.8f}, residual {fit.residual:.1e}; data+λ_max {setup:.1f} s")


if __name__ == "__main__":
    main()
