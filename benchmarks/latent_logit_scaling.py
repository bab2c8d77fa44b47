"""Speed of the latent-effect logit solvers at the λ users select: cvxpy (matrix_frac nuclear norm, CLARABEL) vs
accelerated proximal gradient (FISTA, torch float64), then FISTA alone at 100,000 individuals.

    .venv/bin/python benchmarks/latent_logit_scaling.py [--sizes 100 1000] [--large 100000] [--json]

For each size: crash-analysis-like binary panels (``synthetic_panel``, T observations each, p features, rank-2
L); (λ1, λ2) selected by the recipe's first-stage rule (2-D grid, K-fold CV within individuals, 1-SE); then,
along the λ1 path at the selected λ2 (``--path`` points from λ1_max down to the selected λ1), each λ solved by

- FISTA warm-started from the previous λ (as in the path), and cold from the unpenalised constants,
- CLARABEL through cvxpy, compiled once (λ are DPP parameters; interior-point methods do not warm-start);
  its seconds are the wall time of cvxpy's solve after that compile (the solver's own solve_time is kept too),

reporting iterations and seconds of both at each λ and the relative gap of their objectives. The headline is
the speed ratio at the selected λ (CLARABEL solve seconds / FISTA cold-start seconds). ``--json``: one JSON
object with every row and ``selected_lambda_speedup_1000`` (at 1,000 individuals).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from runner.choice.baselines import fit_plain_logit
from runner.choice.cvx import CvxpyLatentLogit
from runner.choice.data import synthetic_panel
from runner.choice.fista import fista
from runner.choice.model import LatentLogitProblem
from runner.choice.path import select_path


def benchmark_size(n: int, args: argparse.Namespace) -> dict[str, Any]:
    """Select λ by CV, then time both solvers along the λ1 path at the selected λ2."""
    data, _ = synthetic_panel(n, args.obs, args.features, n_alternatives=1, support=3, rank=2, latent_scale=1.5,
                              seed=args.seed)
    t0 = time.perf_counter()
    sel = select_path(data, args.n_lambdas, 0.02, args.n_lambda2, 3, args.seed, True, args.device,
                      cv_tol=1e-6, tol=args.tol)
    select_s = time.perf_counter() - t0
    lam1_sel, lam2_sel = sel.selected.lam1, sel.selected.lam2
    lam1s = [l1 for l1, l2 in sel.grid if l2 == lam2_sel and l1 >= lam1_sel]
    lam1s = lam1s[-args.path:] if args.path else [lam1_sel]
    prob = LatentLogitProblem(data, args.device)
    fista(prob, lam1s[0], lam2_sel, sel.beta_start, max_iter=5, tol=args.tol)  # warm-up (allocations, kernels)
    t0 = time.perf_counter()
    conic = CvxpyLatentLogit(data, args.solver)
    conic.solve(lam1s[0], lam2_sel)  # the first solve canonicalises (cvxpy's DPP compile): not timed below
    compile_s = time.perf_counter() - t0
    rows, prev = [], None
    for lam1 in lam1s:
        warm = fista(prob, lam1, lam2_sel, sel.beta_start if prev is None else prev.beta,
                     None if prev is None else prev.L, max_iter=100_000, tol=args.tol)
        cold = fista(prob, lam1, lam2_sel, sel.beta_start, None, max_iter=100_000, tol=args.tol)
        ref = conic.solve(lam1, lam2_sel)
        prev = warm
        rows.append({"n_ind": n, "lambda1": lam1, "lambda2": lam2_sel, "selected": lam1 == lam1_sel,
                     "fista_warm_iters": warm.iterations, "fista_warm_s": warm.seconds,
                     "fista_cold_iters": cold.iterations, "fista_cold_s": cold.seconds,
                     "clarabel_iters": ref.iterations, "clarabel_s": ref.seconds,
                     "clarabel_solver_s": float(ref.info.get("solve_seconds") or ref.seconds),
                     "rel_gap": (cold.objective - ref.objective) / abs(ref.objective), "rank": cold.rank})
    at = rows[-1]
    return {"n_ind": n, "select_s": select_s, "clarabel_compile_s": compile_s, "rows": rows,
            "selected_lambda": [lam1_sel, lam2_sel],
            "selected_speedup_cold": at["clarabel_s"] / at["fista_cold_s"],
            "selected_speedup_warm": at["clarabel_s"] / at["fista_warm_s"],
            "path_speedup_warm": sum(r["clarabel_s"] for r in rows) / sum(r["fista_warm_s"] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[100, 1000])
    ap.add_argument("--large", type=int, default=100_000, help="individuals for the FISTA-only run (0: skip)")
    ap.add_argument("--obs", type=int, default=10, help="observations per individual")
    ap.add_argument("--features", type=int, default=6)
    ap.add_argument("--n-lambdas", type=int, default=6, help="λ1 values per λ2 in the CV grid")
    ap.add_argument("--n-lambda2", type=int, default=4, help="λ2 values in the CV grid")
    ap.add_argument("--path", type=int, default=3, help="λ1 path points benchmarked, ending at the selected λ1")
    ap.add_argument("--tol", type=float, default=1e-9, help="FISTA gradient-mapping tolerance")
    ap.add_argument("--large-tol", type=float, default=1e-7)
    ap.add_argument("--solver", default="CLARABEL")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = ap.parse_args()
    out: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "device": args.device, "T": args.obs,
                           "p": args.features, "tol": args.tol, "sizes": []}
    if not args.json:
        print(f"torch threads: {torch.get_num_threads()}, device: {args.device}, T={args.obs}, p={args.features}; "
              "λ selected by CV (2-D grid, 1-SE); CLARABEL s: cvxpy's solve after its one-off compile")
        print(f"{'n_ind':>7} {'λ1':>9} {'λ2':>9} {'sel':>3} {'warm it':>7} {'warm s':>7} {'cold it':>7} "
              f"{'cold s':>7} {'CLAR it':>7} {'CLAR s':>7} {'ratio':>6} {'rel gap':>9} {'rank':>4}")
    for n in args.sizes:
        res = benchmark_size(n, args)
        out["sizes"].append(res)
        if n == 1000:
            out["selected_lambda_speedup_1000"] = res["selected_speedup_cold"]
        if not args.json:
            for r in res["rows"]:
                print(f"{n:>7} {r['lambda1']:>9.3g} {r['lambda2']:>9.3g} {'*' if r['selected'] else '':>3} "
                      f"{r['fista_warm_iters']:>7} {r['fista_warm_s']:>7.3f} {r['fista_cold_iters']:>7} "
                      f"{r['fista_cold_s']:>7.3f} {r['clarabel_iters']:>7} {r['clarabel_s']:>7.2f} "
                      f"{r['clarabel_s'] / r['fista_cold_s']:>6.1f} {r['rel_gap']:>9.1e} {r['rank']:>4}", flush=True)
            print(f"{n:>7}: at the selected λ CLARABEL / FISTA = {res['selected_speedup_cold']:.1f}× (cold start), "
                  f"{res['selected_speedup_warm']:.1f}× (warm start on the path); along the path "
                  f"{res['path_speedup_warm']:.1f}×; CV selection {res['select_s']:.1f} s, "
                  f"cvxpy compile {res['clarabel_compile_s']:.1f} s", flush=True)
    if args.large:
        n = args.large
        data, _ = synthetic_panel(n, args.obs, args.features, n_alternatives=1, support=3, rank=2, latent_scale=1.5,
                                  seed=args.seed)
        ref = next((r for r in out["sizes"] if r["n_ind"] == max(args.sizes)), None) if args.sizes else None
        prob = LatentLogitProblem(data, args.device)
        beta_u = fit_plain_logit(data, np.flatnonzero(~data.penalized))
        l1max, l2max = prob.lambda_max(torch.as_tensor(beta_u, device=prob.device))
        # the selected λ of the largest benchmarked size, as a fraction of its λ_max, carried over
        frac = (0.2, 0.2) if ref is None else _fractions(ref, args)
        fit = fista(prob, frac[0] * l1max, frac[1] * l2max, beta_u, max_iter=50_000, tol=args.large_tol)
        out["large"] = {"n_ind": n, "seconds": fit.seconds, "iterations": fit.iterations,
                        "converged": fit.info["converged"], "rank": fit.rank, "lambda_fraction": list(frac)}
        if not args.json:
            print(f"FISTA alone, {n:,} individuals ({data.n_obs:,} observations) at λ = {frac[0]:.3g}·λ1_max, "
                  f"{frac[1]:.3g}·λ2_max: {fit.seconds:.1f} s, {fit.iterations} iterations, "
                  f"converged={fit.info['converged']} (tol {args.large_tol:g}), rank {fit.rank}")
    if args.json:
        print(json.dumps(out))


def _fractions(res: dict[str, Any], args: argparse.Namespace) -> tuple[float, float]:
    """The selected (λ1, λ2) of a benchmarked size as fractions of that problem's λ_max."""
    data, _ = synthetic_panel(res["n_ind"], args.obs, args.features, n_alternatives=1, support=3, rank=2,
                              latent_scale=1.5, seed=args.seed)
    beta_u = fit_plain_logit(data, np.flatnonzero(~data.penalized))
    l1max, l2max = LatentLogitProblem(data).lambda_max(torch.as_tensor(beta_u))
    return res["selected_lambda"][0] / l1max, res["selected_lambda"][1] / l2max


if __name__ == "__main__":
    main()
