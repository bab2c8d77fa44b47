"""Baselines: the plain (homogeneous) logit and the mixed logit by simulated maximum likelihood.

Plain logit: β̂ = argmin (1/N) Σ_n ℓ(y_n, x_nᵀβ), the latent-effect model with L = 0 and no penalty.

Mixed logit (panel, normal random coefficients, Halton draws):
    β_i = μ + σ ∘ ξ_i on the random columns (fixed coefficients elsewhere), ξ_i ~ N(0, I)
    SLL(μ, σ) = Σ_i log (1/R) Σ_r Π_{n∈i} P(y_n | x_n, μ + σ ∘ ξ_ir),   ξ_ir = Φ⁻¹(scrambled Halton point)
maximised with L-BFGS (torch autograd gradients). Held-out predictions condition on each individual's
training choices (posterior weights over the draws), the counterpart of the convex model's fitted L_i.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.stats import norm, qmc

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


# --------------------------------------------------------------------------- mixed logit
def halton_normal(n_ind: int, n_draws: int, dim: int, seed: int) -> np.ndarray:
    """(n_ind, n_draws, dim) standard-normal draws from one scrambled Halton sequence (burn-in skipped)."""
    h = qmc.Halton(d=dim, scramble=True, seed=seed)
    h.fast_forward(10)
    u = h.random(n_ind * n_draws).reshape(n_ind, n_draws, dim)
    return norm.ppf(np.clip(u, 1e-12, 1 - 1e-12))


@dataclass
class MixedLogit:
    """Fitted mixed logit: means μ (p,), scales σ on ``random`` columns (the standard deviation is |σ|;
    σ is kept signed because the Halton draws are not exactly symmetric), the draws used."""

    mu: np.ndarray
    sigma: np.ndarray
    random: np.ndarray
    draws: np.ndarray
    loglik: float
    seconds: float
    iterations: int

    def _draw_log_probs(self, data: ChoiceData) -> torch.Tensor:
        return _obs_log_probs(data, torch.as_tensor(self.mu), torch.as_tensor(self.sigma), self.random,
                              torch.as_tensor(self.draws))

    def heldout_log_probs(self, train: ChoiceData, test: ChoiceData) -> np.ndarray:
        """log P(y_n | individual's training choices) for each test observation (posterior over the draws)."""
        lp_train = self._draw_log_probs(train)  # (N_train, R)
        R = lp_train.shape[1]
        per_ind = torch.zeros((train.n_ind, R), dtype=torch.float64).index_add_(0, torch.as_tensor(train.ind), lp_train)
        log_w = per_ind - torch.logsumexp(per_ind, dim=1, keepdim=True)  # posterior weights over draws
        lp_test = self._draw_log_probs(test)
        return torch.logsumexp(lp_test + log_w[torch.as_tensor(test.ind)], dim=1).numpy()

    def heldout_accuracy(self, train: ChoiceData, test: ChoiceData) -> float:
        """Share of test observations whose posterior-predictive most probable outcome is the observed one."""
        lp_train = self._draw_log_probs(train)
        per_ind = torch.zeros((train.n_ind, lp_train.shape[1]), dtype=torch.float64)
        per_ind.index_add_(0, torch.as_tensor(train.ind), lp_train)
        w = torch.softmax(per_ind, dim=1)[torch.as_tensor(test.ind)]  # (N_test, R)
        V = _draw_utilities(test, torch.as_tensor(self.mu), torch.as_tensor(self.sigma), self.random,
                            torch.as_tensor(self.draws))  # (N, R, J)
        if test.binary:
            p1 = (torch.sigmoid(V[..., 0]) * w).sum(1)
            pred = (p1 > 0.5).long()
        else:
            Vm = V.masked_fill(~torch.as_tensor(test.avail)[:, None, :], float("-inf"))
            pred = (torch.softmax(Vm, dim=2) * w[..., None]).sum(1).argmax(1)
        return float((pred == torch.as_tensor(test.y)).double().mean())


def _draw_utilities(data: ChoiceData, mu: torch.Tensor, sigma: torch.Tensor, random: np.ndarray,
                    draws: torch.Tensor) -> torch.Tensor:
    """V (N, R, J) for coefficients μ + σ ∘ ξ_{i(n), r} on the random columns."""
    X = torch.as_tensor(data.X)
    ind = torch.as_tensor(data.ind)
    base = torch.einsum("njp,p->nj", X, mu)
    rand = torch.as_tensor(random)
    dev = draws.index_select(0, ind) * sigma  # (N, R, k)
    return base[:, None, :] + torch.einsum("njk,nrk->nrj", X[:, :, rand], dev)


def _obs_log_probs(data: ChoiceData, mu: torch.Tensor, sigma: torch.Tensor, random: np.ndarray,
                   draws: torch.Tensor) -> torch.Tensor:
    """log P(y_n | draw r) (N, R)."""
    V = _draw_utilities(data, mu, sigma, random, draws)
    y = torch.as_tensor(data.y)
    if data.binary:
        u = V[..., 0]
        return torch.where(y[:, None] == 1, torch.nn.functional.logsigmoid(u), torch.nn.functional.logsigmoid(-u))
    V = V.masked_fill(~torch.as_tensor(data.avail)[:, None, :], float("-inf"))
    logp = V - torch.logsumexp(V, dim=2, keepdim=True)
    return logp.gather(2, y[:, None, None].expand(-1, V.shape[1], 1))[..., 0]


def fit_mixed_logit(data: ChoiceData, random: np.ndarray, n_draws: int = 100, seed: int = 0,
                    max_iter: int = 500, mu0: np.ndarray | None = None) -> MixedLogit:
    """Maximise the panel simulated log-likelihood over (μ, σ); starts at the plain logit unless ``mu0``."""
    random = np.asarray(random, dtype=np.int64)
    t0 = time.perf_counter()
    draws = torch.as_tensor(halton_normal(data.n_ind, n_draws, max(1, random.size), seed)[..., : random.size])
    ind = torch.as_tensor(data.ind)
    p, k = data.p, random.size
    mu_init = fit_plain_logit(data) if mu0 is None else np.asarray(mu0, dtype=np.float64)

    def neg_sll(params: np.ndarray) -> tuple[float, np.ndarray]:
        x = torch.as_tensor(params).requires_grad_(True)
        lp = _obs_log_probs(data, x[:p], x[p:], random, draws)  # (N, R)
        per_ind = torch.zeros((data.n_ind, n_draws), dtype=torch.float64).index_add(0, ind, lp)
        sll = (torch.logsumexp(per_ind, dim=1) - np.log(n_draws)).sum()
        loss = -sll / data.n_obs
        (g,) = torch.autograd.grad(loss, x)
        return float(loss.detach()), g.numpy()

    x0 = np.r_[mu_init, np.full(k, 0.1)]
    with threads_for(data.n_obs * n_draws * data.X.shape[1]):
        res = minimize(neg_sll, x0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter, "gtol": 1e-8})
    return MixedLogit(res.x[:p], res.x[p:], random, draws.numpy(), -float(res.fun) * data.n_obs,
                      time.perf_counter() - t0, int(res.nit))
