"""The convex latent-effect logit (arXiv 2108.09859): individual coefficients β + L_i, β sparse, L low rank.

    minimise  F(β, L) = f(β, L) + λ1 Σ_k w_k |β_k| + λ2 ‖L‖_*,
    f(β, L)   = (1/N) Σ_n ℓ(y_n, V_n),   V_nj = x_njᵀ (β + L_{i(n)})

with the binary logistic loss ℓ = log(1 + e^V) − yV (one utility per observation) or the multinomial loss
ℓ = log Σ_{j available} e^{V_nj} − V_{n,y_n}. ``w_k = 0`` leaves intercepts / alternative constants
unpenalised. With ``center=True`` (default) L is constrained to Σ_i L_i = 0, so β is the population mean of
the individual coefficients and L holds deviations; without it the common part of β + L_i is not
identified and the nuclear norm (sub-additive over overlapping row spaces) pulls the mean into L, shrinking
β's support to nothing along the path. (The constraint is our reading of "rows of L are individual
deviations"; unverified against the paper, so it is a config option.)
Everything here is torch float64 (CPU or GPU); the two solvers (``fista.py``, ``cvx.py``)
and the model selection (``path.py``) share it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from runner.choice.data import ChoiceData


class LatentLogitProblem:
    """The smooth part f and its gradient for one data set, as tensors on ``device``.

    ``weights`` are the ℓ1 weights w_k (default: 1 on penalised coordinates, 0 on constants); ``inf`` fixes
    β_k = 0 (the adaptive lasso's weight for a coordinate its initial estimate set to zero)."""

    def __init__(self, data: ChoiceData, device: str | torch.device = "cpu", center: bool = True,
                 weights: np.ndarray | None = None):
        self.data = data
        self.center = center
        self.device = torch.device(device)
        dt = torch.float64
        self.X = torch.as_tensor(data.X, dtype=dt, device=self.device)
        self.y = torch.as_tensor(data.y, device=self.device)
        self.ind = torch.as_tensor(data.ind, device=self.device)
        self.avail = torch.as_tensor(data.avail, device=self.device)
        w = check_weights(data, weights)
        self.fixed_zero = torch.as_tensor(np.isinf(w), device=self.device)  # β_k ≡ 0 (infinite weight)
        self.w = torch.as_tensor(np.where(np.isinf(w), 0.0, w), dtype=dt, device=self.device)  # finite part
        self.N, self.J, self.p = data.X.shape
        self.n_ind = data.n_ind
        self.binary = self.J == 1
        self.all_avail = bool(self.avail.all())

    # ------------------------------------------------------------------ smooth part
    def utilities(self, beta: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
        """V (N, J): V_nj = x_njᵀ(β + L_{i(n)})."""
        theta = beta + L.index_select(0, self.ind)
        return torch.einsum("njp,np->nj", self.X, theta)

    def log_probs(self, V: torch.Tensor) -> torch.Tensor:
        """Log-probabilities (N, J) of each alternative (binary: log P(y=1)), unavailable ones −inf."""
        if self.binary:
            return torch.nn.functional.logsigmoid(V)
        if not self.all_avail:
            V = V.masked_fill(~self.avail, float("-inf"))
        return V - torch.logsumexp(V, dim=1, keepdim=True)

    def nll_terms(self, V: torch.Tensor) -> torch.Tensor:
        """ℓ(y_n, V_n) for every observation."""
        if self.binary:
            u = V[:, 0]
            return torch.nn.functional.softplus(u) - self.y * u
        return -self.log_probs(V).gather(1, self.y[:, None])[:, 0]

    def loss(self, beta: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
        """f(β, L): mean negative log-likelihood."""
        return self.nll_terms(self.utilities(beta, L)).mean()

    def loss_and_grad(self, beta: torch.Tensor, L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(f, ∇_β f, ∇_L f). With r_nj = P_nj − 1[y_n = j]: ∇_{L_i} f = (1/N) Σ_{n∈i} Σ_j r_nj x_nj and
        ∇_β f = Σ_i ∇_{L_i} f (β enters every individual's coefficients)."""
        V = self.utilities(beta, L)
        if self.binary:
            u = V[:, 0]
            f = (torch.nn.functional.softplus(u) - self.y * u).mean()
            g_obs = (torch.sigmoid(u) - self.y)[:, None] * self.X[:, 0, :]
        else:
            logp = self.log_probs(V)
            f = -logp.gather(1, self.y[:, None]).mean()
            r = logp.exp()
            r[torch.arange(self.N, device=self.device), self.y] -= 1.0
            g_obs = torch.einsum("nj,njp->np", r, self.X)
        gL = torch.zeros((self.n_ind, self.p), dtype=V.dtype, device=self.device).index_add_(0, self.ind, g_obs)
        gL /= self.N
        return f, gL.sum(0), gL

    # ------------------------------------------------------------------ penalty and its prox
    def penalty(self, beta: torch.Tensor, L: torch.Tensor, lam1: float, lam2: float) -> torch.Tensor:
        """λ1 Σ_k w_k|β_k| + λ2‖L‖_* (coordinates fixed at zero contribute nothing; feasibility is the prox's)."""
        return lam1 * (self.w * beta.abs()).sum() + lam2 * nuclear_norm(L)

    def prox_beta(self, v: torch.Tensor, t: float) -> torch.Tensor:
        """prox of t·λ1‖w∘β‖₁ (t already holds λ1): weighted soft-threshold, infinite-weight coordinates → 0."""
        return soft_threshold(v, t * self.w).masked_fill(self.fixed_zero, 0.0)

    def objective(self, beta: torch.Tensor, L: torch.Tensor, lam1: float, lam2: float) -> float:
        """F(β, L)."""
        return float(self.loss(beta, L) + self.penalty(beta, L, lam1, lam2))

    def prox(self, beta: torch.Tensor, L: torch.Tensor, step: float, lam1: float, lam2: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """prox of step·(λ1‖w∘β‖₁ + λ2‖L‖_* [+ ι{Σ_i L_i = 0}]): soft-threshold β; singular-value-threshold L
        (after centring its columns: for the subspace constraint, SVT of the centred matrix is the exact prox,
        since its left singular vectors are orthogonal to 1)."""
        if self.center:
            L = L - L.mean(dim=0, keepdim=True)
        return self.prox_beta(beta, step * lam1), singular_value_threshold(L, step * lam2)[0]

    def optimality_residual(self, beta: torch.Tensor, L: torch.Tensor, lam1: float, lam2: float) -> float:
        """‖(β, L) − prox_h((β, L) − ∇f(β, L))‖_F: zero exactly at a minimiser (prox-gradient fixed point)."""
        _, gb, gL = self.loss_and_grad(beta, L)
        b1, L1 = self.prox(beta - gb, L - gL, 1.0, lam1, lam2)
        return float(torch.sqrt(((beta - b1) ** 2).sum() + ((L - L1) ** 2).sum()))

    # ------------------------------------------------------------------ λ_max
    def lambda_max(self, beta_unpenalized: torch.Tensor) -> tuple[float, float]:
        """Smallest (λ1, λ2) at which β_pen = 0, L = 0 is optimal, given the fitted unpenalised coefficients:
        λ1_max = max_k |∇_β f|_k / w_k over penalised k, λ2_max = ‖∇_L f‖_op (the dual norm of ‖·‖_*; of the
        column-centred gradient when L is centred)."""
        L0 = torch.zeros((self.n_ind, self.p), dtype=torch.float64, device=self.device)
        _, gb, gL = self.loss_and_grad(beta_unpenalized, L0)
        pen = (self.w > 0) & ~self.fixed_zero
        lam1 = float((gb[pen].abs() / self.w[pen]).max()) if bool(pen.any()) else 0.0
        if self.center:
            gL = gL - gL.mean(dim=0, keepdim=True)
        lam2 = float(torch.linalg.matrix_norm(gL, ord=2))
        return lam1, lam2


def check_weights(data: ChoiceData, weights: np.ndarray | None) -> np.ndarray:
    """ℓ1 weights as a float array: ``data.penalized`` if None; else shape (p,), ≥ 0 (``inf`` allowed), and
    zero exactly on the unpenalised coordinates."""
    if weights is None:
        return data.penalized.astype(np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (data.p,) or np.isnan(w).any() or (w < 0).any():
        raise ValueError(f"penalty weights must be {data.p} non-negative numbers (inf allowed), got {w}")
    if ((w > 0) != data.penalized).any():
        raise ValueError("penalty weights must be > 0 exactly on the penalised coordinates")
    return w


def adaptive_weights(beta_init: np.ndarray, penalized: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """Adaptive-lasso weights (Zou, 2006): w_k = 1/|β̃_k|^γ on penalised coordinates (``inf`` where β̃_k = 0,
    which keeps β_k at zero), 0 on unpenalised ones."""
    b = np.abs(np.asarray(beta_init, dtype=np.float64))
    with np.errstate(divide="ignore"):
        w = np.where(b > 0, b ** -float(gamma), np.inf)
    return np.where(penalized, w, 0.0)


def support_weights(support: np.ndarray, penalized: np.ndarray) -> np.ndarray:
    """ℓ1 weights that restrict β to a selected ``support`` (indices): ``inf`` off it, 1 on it, 0 on unpenalised
    coordinates; solved at λ1 = 0 this is the unpenalised refit on the support (relaxed lasso, φ = 0)."""
    on = np.zeros(penalized.shape, dtype=bool)
    on[np.asarray(support, dtype=np.int64)] = True
    return np.where(penalized, np.where(on, 1.0, np.inf), 0.0)


SMALL_PROBLEM_NUMEL = 2_000_000


@contextmanager
def threads_for(numel: int, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run small CPU problems single-threaded (restoring the setting after): for tensors of ~1e4-1e6 elements
    every op is microseconds, and intra-op thread hand-offs cost more than they save (on a busy 2-core
    machine they made each op ~30 ms)."""
    if torch.device(device).type != "cpu" or numel >= SMALL_PROBLEM_NUMEL or torch.get_num_threads() == 1:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def nuclear_norm(L: torch.Tensor) -> torch.Tensor:
    """‖L‖_* = Σ singular values (LAPACK via numpy on CPU: torch's CPU SVD is slow for tall thin matrices)."""
    if L.device.type == "cpu":
        return torch.as_tensor(np.linalg.svd(L.numpy(), compute_uv=False).sum(), dtype=L.dtype)
    return torch.linalg.svdvals(L).sum()


def soft_threshold(v: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    return torch.sign(v) * torch.clamp(v.abs() - t, min=0.0)


def singular_value_threshold(L: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U diag(max(σ − t, 0)) Vᵀ, σ): the prox of t‖·‖_* and L's singular values.

    L is tall and thin (n_ind × p), so the SVD comes from the p × p Gram matrix LᵀL = V diag(σ²) Vᵀ and
    the result is L V_k diag(1 − t/σ_k) V_kᵀ over σ_k > t: O(n p²) instead of a LAPACK SVD of L. Squaring
    only loses accuracy for σ ≲ 1e-8 σ_1, which the threshold sets to zero anyway."""
    ev, V = torch.linalg.eigh(L.T @ L)
    s = ev.clamp(min=0.0).sqrt()
    keep = s > t
    Vk = V[:, keep]
    return L @ (Vk * (1.0 - t / s[keep])) @ Vk.T, s.flip(0)


def numerical_rank(L: np.ndarray | torch.Tensor, rel_tol: float = 1e-4) -> int:
    """Number of singular values above ``rel_tol``·max(σ_1, 1) (interior-point solutions have tiny tails)."""
    s = np.linalg.svd(np.asarray(L, dtype=np.float64), compute_uv=False)
    return int(np.sum(s > rel_tol * max(float(s[0]) if s.size else 0.0, 1.0)))


def ratio_rank(s: np.ndarray, floor: float = 0.1) -> int:
    """Eigenvalue-ratio rank estimate (Ahn & Horenstein, 2013): argmax_k σ_k / σ_{k+1}, with σ_{k+1} floored
    at ``floor``·σ_1 (directions weaker than that count as noise; without a floor the step from the last
    non-zero σ to 0 always wins), so an exactly low-rank estimate counts its non-zero σ's. The CV-selected
    nuclear-norm fit keeps small noise directions (shrinkage trades them against bias on the signal), so the
    count of non-zero singular values over-states the rank; the largest gap in the spectrum does not."""
    s = np.sort(np.asarray(s, dtype=np.float64))[::-1]
    if s.size == 0 or s[0] <= 0:
        return 0
    lo = np.maximum(s, floor * s[0])
    ratios = s[:-1] / lo[1:]
    if s.size == 1 or ratios.size == 0:
        return 1
    return int(np.argmax(ratios)) + 1 if ratios.max() > 1 else int(np.sum(s > floor * s[0]))


@dataclass
class Fit:
    """A solution of the convex latent-effect logit at one (λ1, λ2), from either solver."""

    beta: np.ndarray
    L: np.ndarray
    lam1: float
    lam2: float
    objective: float
    residual: float  # prox-gradient optimality residual (see LatentLogitProblem.optimality_residual)
    rank: int
    seconds: float
    iterations: int
    solver: str
    info: dict[str, Any] = field(default_factory=dict)

    def singular_values(self) -> np.ndarray:
        return np.linalg.svd(self.L, compute_uv=False)

    def support(self, tol: float = 1e-4) -> np.ndarray:
        return np.flatnonzero(np.abs(self.beta) > tol * max(1.0, float(np.abs(self.beta).max(initial=0.0))))


def finish_fit(problem: LatentLogitProblem, beta: np.ndarray, L: np.ndarray, lam1: float, lam2: float,
               seconds: float, iterations: int, solver: str, info: dict[str, Any] | None = None) -> Fit:
    """Evaluate objective, residual and rank of a solution with the same code for both solvers."""
    tb = torch.as_tensor(beta, dtype=torch.float64, device=problem.device)
    tL = torch.as_tensor(L, dtype=torch.float64, device=problem.device)
    return Fit(np.asarray(beta, dtype=np.float64), np.asarray(L, dtype=np.float64), lam1, lam2,
               problem.objective(tb, tL, lam1, lam2), problem.optimality_residual(tb, tL, lam1, lam2),
               numerical_rank(L), seconds, iterations, solver, info or {})


def predict_log_probs(data: ChoiceData, beta: np.ndarray, L: np.ndarray | None) -> np.ndarray:
    """Log-probability of the observed outcome of each observation under coefficients β + L_i."""
    prob = LatentLogitProblem(data)
    tb = torch.as_tensor(beta, dtype=torch.float64)
    tL = torch.zeros((data.n_ind, data.p), dtype=torch.float64) if L is None else torch.as_tensor(L)
    return -prob.nll_terms(prob.utilities(tb, tL)).numpy()


def accuracy(data: ChoiceData, beta: np.ndarray, L: np.ndarray | None) -> float:
    """Share of observations whose most probable outcome (binary: P > 1/2) is the observed one."""
    prob = LatentLogitProblem(data)
    tb = torch.as_tensor(beta, dtype=torch.float64)
    tL = torch.zeros((data.n_ind, data.p), dtype=torch.float64) if L is None else torch.as_tensor(L)
    V = prob.utilities(tb, tL)
    pred = (V[:, 0] > 0).long() if prob.binary else prob.log_probs(V).argmax(dim=1)
    return float((pred == prob.y).double().mean())
