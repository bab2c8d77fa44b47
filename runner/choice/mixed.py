"""Panel mixed logit by simulated maximum likelihood, specified as users specify it.

Individual i's coefficients: fixed ones β_k = μ_k; random ones (``MixedSpec.random``, alternative-specific
constants included) from

    z_ir = μ_R + C ξ_ir,   ξ_ir = Φ⁻¹(Halton point) ~ N(0, I_k)
    C = diag(σ) (independent normals) or lower-triangular with free diagonal (correlated: Σ = C Cᵀ, Cholesky)
    β_irk = z_irk (normal) | exp(z_irk) (lognormal, β > 0) | −exp(z_irk) (neg_lognormal, β < 0)

    SLL(μ, C) = Σ_i log (1/R) Σ_r Π_{n∈i} P(y_n | x_n, β_ir)

maximised with L-BFGS (torch autograd gradients; by default R scrambled-Halton draws per individual). Held-out
predictions condition on each individual's training choices (posterior weights over the draws), the counterpart
of the convex model's fitted L_i. Cross-checked against ``xlogit`` on the same draws (tests/choice).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.stats import norm, qmc

from runner.choice.baselines import fit_plain_logit
from runner.choice.data import ChoiceData
from runner.choice.model import threads_for

DISTRIBUTIONS = ("normal", "lognormal", "neg_lognormal")


@dataclass(frozen=True)
class MixedSpec:
    """Which coefficients vary by individual (feature indices, in order), their mixing distributions, and whether
    the underlying normals are correlated (full covariance via its Cholesky factor) or independent."""

    random: tuple[int, ...]
    distributions: tuple[str, ...]
    correlated: bool = False

    def __post_init__(self) -> None:
        if len(self.random) != len(self.distributions):
            raise ValueError("one distribution per random coefficient")
        if len(set(self.random)) != len(self.random):
            raise ValueError(f"random coefficients repeat an index: {self.random}")
        bad = [d for d in self.distributions if d not in DISTRIBUTIONS]
        if bad:
            raise ValueError(f"unknown mixing distribution(s) {bad} (allowed: {', '.join(DISTRIBUTIONS)})")

    @property
    def k(self) -> int:
        return len(self.random)

    def n_scale_params(self) -> int:
        """k(k+1)/2 Cholesky entries (correlated) or k standard deviations (independent)."""
        return self.k * (self.k + 1) // 2 if self.correlated else self.k

    def n_params(self, p: int) -> int:
        """Means of all p coefficients plus the scale parameters."""
        return p + self.n_scale_params()

    def describe(self, feature_names: Sequence[str]) -> dict[str, Any]:
        """The specification in words for results.json / summary.md."""
        rand = [feature_names[j] for j in self.random]
        return {"random": dict(zip(rand, self.distributions)),
                "fixed": [n for j, n in enumerate(feature_names) if j not in self.random],
                "covariance": ("full (Cholesky)" if self.correlated else "diagonal") if self.k else "none",
                "n_params": self.n_params(len(feature_names))}


def parse_spec(random: Sequence[str] | Mapping[str, str] | None, feature_names: Sequence[str],
               correlated: bool = False) -> MixedSpec:
    """A spec from user input: ``None`` → every coefficient (constants included) normal; a list of names →
    those normal; a mapping name → distribution. Raises ``ValueError`` naming unknown features."""
    if random is None:
        items = [(n, "normal") for n in feature_names]
    elif isinstance(random, Mapping):
        items = [(str(n), str(d)) for n, d in random.items()]
    else:
        items = [(str(n), "normal") for n in random]
    unknown = [n for n, _ in items if n not in feature_names]
    if unknown:
        raise ValueError(f"unknown feature(s) {unknown} (features: {', '.join(feature_names)})")
    idx = [list(feature_names).index(n) for n, _ in items]
    order = np.argsort(idx, kind="stable")  # feature order, so draws line up with xlogit's convention
    return MixedSpec(tuple(idx[i] for i in order), tuple(items[i][1] for i in order), bool(correlated))


def halton_normal(n_ind: int, n_draws: int, dim: int, seed: int) -> np.ndarray:
    """(n_ind, n_draws, dim) standard-normal draws from one scrambled Halton sequence (burn-in skipped)."""
    h = qmc.Halton(d=max(1, dim), scramble=True, seed=seed)
    h.fast_forward(10)
    u = h.random(n_ind * n_draws).reshape(n_ind, n_draws, max(1, dim))[..., :dim]
    return norm.ppf(np.clip(u, 1e-12, 1 - 1e-12))


# --------------------------------------------------------------------------- likelihood
def scale_matrix(scale: torch.Tensor, spec: MixedSpec) -> torch.Tensor:
    """C (k, k) from the scale parameters: lower-triangular, row-major (correlated) or diagonal (independent)."""
    if spec.correlated:
        rows, cols = torch.tril_indices(spec.k, spec.k)
        return torch.zeros((spec.k, spec.k), dtype=scale.dtype).index_put((rows, cols), scale)
    return torch.diag(scale)


class _Sim:
    """Tensors of one data set and spec: utilities and log-probabilities per draw, parameters as one vector
    θ = (μ (p), scale (k or k(k+1)/2))."""

    def __init__(self, data: ChoiceData, spec: MixedSpec, draws: np.ndarray):
        self.data, self.spec = data, spec
        self.X = torch.as_tensor(data.X)
        self.y = torch.as_tensor(data.y)
        self.ind = torch.as_tensor(data.ind)
        self.avail = torch.as_tensor(data.avail)
        self.rand = torch.as_tensor(np.asarray(spec.random, dtype=np.int64))
        self.draws = torch.as_tensor(draws)  # (n_ind, R, k)
        self.p, self.k = data.p, spec.k
        dist = np.asarray(spec.distributions)
        self.sign = torch.as_tensor(np.where(dist == "neg_lognormal", -1.0, 1.0))
        self.logn = torch.as_tensor(dist != "normal")

    def coefficients(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, β_R (n_ind, R, k)): the fixed means and the random coefficients of every draw."""
        mu = theta[: self.p]
        z = mu[self.rand] + self.draws @ scale_matrix(theta[self.p:], self.spec).T
        return mu, torch.where(self.logn, self.sign * torch.exp(z), z)

    def utilities(self, theta: torch.Tensor, data: ChoiceData | None = None) -> torch.Tensor:
        """V (N, R, J) on ``data`` (default: the fitted data; its individuals index the same draws)."""
        X = self.X if data is None else torch.as_tensor(data.X)
        ind = self.ind if data is None else torch.as_tensor(data.ind)
        mu, br = self.coefficients(theta)
        fixed = mu.clone()
        fixed[self.rand] = 0.0
        base = torch.einsum("njp,p->nj", X, fixed)
        return base[:, None, :] + torch.einsum("njk,nrk->nrj", X[:, :, self.rand], br.index_select(0, ind))

    def obs_log_probs(self, theta: torch.Tensor, data: ChoiceData | None = None) -> torch.Tensor:
        """log P(y_n | draw r) (N, R)."""
        d = self.data if data is None else data
        V = self.utilities(theta, data)
        y = torch.as_tensor(d.y)
        if d.binary:
            u = V[..., 0]
            return torch.where(y[:, None] == 1, torch.nn.functional.logsigmoid(u),
                               torch.nn.functional.logsigmoid(-u))
        V = V.masked_fill(~torch.as_tensor(d.avail)[:, None, :], float("-inf"))
        logp = V - torch.logsumexp(V, dim=2, keepdim=True)
        return logp.gather(2, y[:, None, None].expand(-1, V.shape[1], 1))[..., 0]

    def per_individual(self, lp: torch.Tensor, ind: torch.Tensor) -> torch.Tensor:
        """Σ_{n∈i} log P(y_n | r) (n_ind, R)."""
        return torch.zeros((self.data.n_ind, lp.shape[1]), dtype=lp.dtype).index_add(0, ind, lp)

    def sll(self, theta: torch.Tensor) -> torch.Tensor:
        per_ind = self.per_individual(self.obs_log_probs(theta), self.ind)
        return (torch.logsumexp(per_ind, dim=1) - np.log(per_ind.shape[1])).sum()


@dataclass
class MixedLogit:
    """A fitted mixed logit: θ = (μ, scale), its spec, the draws used, the simulated log-likelihood."""

    theta: np.ndarray
    spec: MixedSpec
    draws: np.ndarray
    loglik: float
    seconds: float
    iterations: int
    converged: bool

    @property
    def mu(self) -> np.ndarray:
        return self.theta[: self.theta.size - self.spec.n_scale_params()]

    def covariance(self) -> np.ndarray:
        """Σ = C Cᵀ of the underlying normals (k × k)."""
        C = scale_matrix(torch.as_tensor(self.theta[self.mu.size:]), self.spec).numpy()
        return C @ C.T

    def _posterior(self, sim: _Sim, train: ChoiceData) -> torch.Tensor:
        """log posterior weights over each individual's draws given its training choices (n_ind, R)."""
        per_ind = sim.per_individual(sim.obs_log_probs(torch.as_tensor(self.theta), train),
                                     torch.as_tensor(train.ind))
        return per_ind - torch.logsumexp(per_ind, dim=1, keepdim=True)

    def heldout_log_probs(self, train: ChoiceData, test: ChoiceData) -> np.ndarray:
        """log P(y_n | individual's training choices) for each test observation."""
        sim = _Sim(train, self.spec, self.draws)
        log_w = self._posterior(sim, train)
        lp = sim.obs_log_probs(torch.as_tensor(self.theta), test)
        return torch.logsumexp(lp + log_w[torch.as_tensor(test.ind)], dim=1).numpy()

    def heldout_accuracy(self, train: ChoiceData, test: ChoiceData) -> float:
        """Share of test observations whose posterior-predictive most probable outcome is the observed one."""
        sim = _Sim(train, self.spec, self.draws)
        w = torch.softmax(self._posterior(sim, train), dim=1)[torch.as_tensor(test.ind)]  # (N_test, R)
        V = sim.utilities(torch.as_tensor(self.theta), test)
        if test.binary:
            pred = ((torch.sigmoid(V[..., 0]) * w).sum(1) > 0.5).long()
        else:
            Vm = V.masked_fill(~torch.as_tensor(test.avail)[:, None, :], float("-inf"))
            pred = (torch.softmax(Vm, dim=2) * w[..., None]).sum(1).argmax(1)
        return float((pred == torch.as_tensor(test.y)).double().mean())

    def summary(self, feature_names: Sequence[str]) -> dict[str, Any]:
        """Means, standard deviations of the underlying normals and (correlated) their correlations."""
        rand = [feature_names[j] for j in self.spec.random]
        cov = self.covariance()
        sd = np.sqrt(np.diag(cov))
        out: dict[str, Any] = {"mean": dict(zip(feature_names, self.mu.tolist())),
                               "sd": dict(zip(rand, sd.tolist()))}
        if self.spec.correlated and self.spec.k > 1:
            corr = cov / np.maximum(np.outer(sd, sd), 1e-300)
            out["correlation"] = {a: dict(zip(rand, row.tolist())) for a, row in zip(rand, corr)}
        return out


def initial_theta(spec: MixedSpec, beta_plain: np.ndarray, sd0: float = 0.1) -> np.ndarray:
    """μ from the plain logit (log|β| for lognormal coordinates, log 0.1 if β has the wrong sign), scales sd0."""
    mu = np.asarray(beta_plain, dtype=np.float64).copy()
    for j, d in zip(spec.random, spec.distributions):
        if d != "normal":
            b = mu[j] * (-1.0 if d == "neg_lognormal" else 1.0)
            mu[j] = np.log(b) if b > 1e-3 else np.log(0.1)
    if spec.correlated:
        scale = np.zeros(spec.n_scale_params())
        rows, cols = np.tril_indices(spec.k)
        scale[rows == cols] = sd0
    else:
        scale = np.full(spec.k, sd0)
    return np.r_[mu, scale]


def fit_mixed_logit(data: ChoiceData, spec: MixedSpec, n_draws: int = 100, seed: int = 0, max_iter: int = 500,
                    draws: np.ndarray | None = None, theta0: np.ndarray | None = None, gtol: float = 1e-6
                    ) -> MixedLogit:
    """Maximise the panel simulated log-likelihood over θ = (μ, scale); starts at the plain logit unless
    ``theta0``. ``draws`` (n_ind, R, k) standard normals override the scrambled Halton draws."""
    t0 = time.perf_counter()
    if draws is None:
        draws = halton_normal(data.n_ind, n_draws, spec.k, seed)
    draws = np.asarray(draws, dtype=np.float64)
    if draws.shape[0] != data.n_ind or draws.shape[2] != spec.k:
        raise ValueError(f"draws must have shape ({data.n_ind}, R, {spec.k}), got {draws.shape}")
    sim = _Sim(data, spec, draws)
    x0 = initial_theta(spec, fit_plain_logit(data)) if theta0 is None else np.asarray(theta0, np.float64)

    def neg_sll(params: np.ndarray) -> tuple[float, np.ndarray]:
        x = torch.as_tensor(params).requires_grad_(True)
        loss = -sim.sll(x) / data.n_obs
        (g,) = torch.autograd.grad(loss, x)
        return float(loss.detach()), g.numpy()

    def run(x: np.ndarray) -> Any:
        return minimize(neg_sll, x, jac=True, method="L-BFGS-B",
                        options={"maxiter": max_iter, "gtol": gtol, "ftol": 1e-12})

    with threads_for(data.n_obs * draws.shape[1] * data.X.shape[1]):
        res = run(x0)
        nit = int(res.nit)
        # Halton draws are not symmetric, so C and C with column j negated are different models and the
        # likelihood has one local optimum per sign pattern: move to a better sign pattern while there is one
        # (a column flip is the same model on draws −ξ_j).
        for _ in range(spec.k):
            flips = [flip_column(res.x, spec, data.p, j) for j in range(spec.k)]
            values = [neg_sll(x)[0] for x in flips]
            j = int(np.argmin(values)) if values else 0
            if not values or values[j] >= res.fun - 1e-9:
                break
            res = run(flips[j])
            nit += int(res.nit)
    return MixedLogit(res.x, spec, draws, -float(res.fun) * data.n_obs, time.perf_counter() - t0, nit,
                      bool(res.success))


def flip_column(theta: np.ndarray, spec: MixedSpec, p: int, j: int) -> np.ndarray:
    """θ with column j of the scale matrix C negated."""
    out = np.array(theta, dtype=np.float64)
    if spec.correlated:
        _, cols = np.tril_indices(spec.k)
        out[p + np.flatnonzero(cols == j)] *= -1.0
    else:
        out[p + j] *= -1.0
    return out
