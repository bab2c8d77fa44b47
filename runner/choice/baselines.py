"""Baseline: the plain (homogeneous) logit, β̂ = argmin (1/N) Σ_n ℓ(y_n, x_nᵀβ) — the latent-effect model with
L = 0 and no penalty. (The mixed logit is in ``mixed.py``.)
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import minimize

from runner.choice.data import ChoiceData
from runner.choice.model import LatentLogitProblem, threads_for


# --------------------------------------------------------------------------- plain logit
def fit_plain_logit(data: ChoiceData, columns: np.ndarray | None = None, tol: float = 1e-10) -> np.ndarray:
    """Unpenalised maximum likelihood β (zeros outside ``columns``, all columns if None)."""
    prob = LatentLogitProblem(data)
    cols = np.arange(data.p) if columns is None else np.asarray(columns, dtype=np.int64)
    beta = np.zeros(data.p)
    if cols.size == 0:
        return beta
    L0 = torch.zeros((data.n_ind, data.p), dtype=torch.float64)

    def fun(b: np.ndarray) -> tuple[float, np.ndarray]:
        full = np.zeros(data.p)
        full[cols] = b
        f, gb, _ = prob.loss_and_grad(torch.as_tensor(full), L0)
        return float(f), gb.numpy()[cols]

    with threads_for(data.X.size):
        res = minimize(fun, np.zeros(cols.size), jac=True, method="L-BFGS-B",
                       options={"gtol": tol, "ftol": 1e-15, "maxiter": 10_000})
    beta[cols] = res.x
    return beta
