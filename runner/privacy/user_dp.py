"""User-level DP aggregation for federated learning: DP-FedAvg, adaptive clipping, DP-FedBuff and budgets.

DP-FedAvg (McMahan et al. 2018, "Learning differentially private recurrent language models"): each sampled
client clips its update Δ to L2 norm S; the server adds N(0, (zS)² I) to the sum *once* and divides by the
*expected* number of clients qN (the fixed-denominator estimator), so one user moves the noised sum by at
most S and the denominator is data independent. With each client sampled independently with probability
q per round (Poisson), T rounds are T subsampled Gaussian mechanisms of noise multiplier z.

Adaptive clipping (Andrew et al. 2021, "Differentially private learning with adaptive clipping"): each
client also reports b = 1[‖Δ‖ ≤ C]; the server releases b̄ = (Σ b + N(0, σ_b²)) / qN and takes the
geometric step C ← C · exp(−η (b̄ − γ)) toward the γ-quantile of the update norms. The two releases share
one budget: for an overall multiplier z the update noise is z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) (the centred
count b − ½ has sensitivity ½; Andrew et al., Theorem 1), so accounting uses z.

DP-FedBuff (Nguyen et al. 2022): each update is clipped to S and scaled by its staleness weight
s(τ) ≤ 1 (the sensitivity stays ≤ S), the buffer sums K of them, and N(0, (zS)² I) is added once per buffer
before the server step, which divides by K: DP-FedAvg with the buffer in place of the round. Accounting
assumptions (ours; the asynchronous arrival process itself is not analysed): every server step is a
subsampled Gaussian mechanism with sampling rate q = K / N, as if the buffer were a Poisson sample of the
N clients; T = the number of server steps; a client contributes at most one update to a buffer; weights are
uniform (example-count weighting would change the sensitivity).

Accounting goes through :mod:`runner.privacy.accounting` (Opacus RDP/PRV, exact GDP for q = 1). The
simulator's server modes use these pieces through :mod:`runner.federated.private` (DP-FedBuff there is
:meth:`DPFedAvg.privatize_sum` of the staleness-weighted buffer with denominator K; :class:`DPFedBuff` is the
same mechanism as a standalone buffer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from runner.privacy.accounting import GaussianRelease, calibrate_noise, epsilon_spent
from runner.privacy.estimators import clip_rows


class BudgetExhausted(RuntimeError):
    """One more step would spend more than the privacy budget."""


# --------------------------------------------------------------------------- client side
def clip_update(update: np.ndarray, clip_norm: float) -> np.ndarray:
    """The update scaled down to L2 norm ``clip_norm`` if it is longer (a flat float64 vector)."""
    if not clip_norm > 0:
        raise ValueError(f"clip_norm={clip_norm} must be > 0")
    return clip_rows(np.asarray(update, dtype=np.float64).reshape(1, -1), clip_norm)[0]


# --------------------------------------------------------------------------- sampling model and budget
@dataclass(frozen=True)
class SamplingModel:
    """Who contributes to one noised release: ``clients_per_step`` of ``population`` clients, ``steps`` times.

    q = clients_per_step / population is the per-step (Poisson) sampling rate the accountant assumes:
    DP-FedAvg's clients per round, DP-FedBuff's buffer size K per server step.
    """

    clients_per_step: float
    population: int
    steps: int

    def __post_init__(self) -> None:
        if self.population < 1 or not 0 < self.clients_per_step <= self.population:
            raise ValueError(f"clients_per_step={self.clients_per_step} must be in (0, population={self.population}]")
        if self.steps < 1:
            raise ValueError(f"steps={self.steps} must be >= 1")

    @property
    def sample_rate(self) -> float:
        return self.clients_per_step / self.population


def noise_for_budget(epsilon: float, delta: float, sampling: SamplingModel, accountant: str = "rdp") -> float:
    """The noise multiplier z whose ``sampling.steps`` subsampled releases spend (ε, δ)."""
    return calibrate_noise(epsilon, delta, steps=sampling.steps, sample_rate=sampling.sample_rate,
                           accountant=accountant)


def epsilon_for_noise(noise_multiplier: float, delta: float, sampling: SamplingModel, steps: int | None = None,
                      accountant: str = "rdp") -> float:
    """ε spent at δ by ``steps`` (default ``sampling.steps``) releases of noise multiplier z."""
    n = sampling.steps if steps is None else steps
    return epsilon_spent([GaussianRelease("updates", noise_multiplier, sampling.sample_rate, n)], delta, accountant)


@dataclass
class PrivacyBudget:
    """An (ε, δ) budget spent by subsampled Gaussian steps; says whether one more step still fits.

    ``calibrated`` picks z so that the planned steps spend ε; ``fixed`` takes z and reports the spend.
    ``max_steps`` is the largest T whose spend is ≤ ε (found by bisection, the spend grows with T).
    """

    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    accountant: str = "rdp"
    steps: int = 0
    _max_steps: int | None = field(default=None, repr=False)

    @classmethod
    def calibrated(cls, epsilon: float, delta: float, sampling: SamplingModel,
                   accountant: str = "rdp") -> PrivacyBudget:
        z = noise_for_budget(epsilon, delta, sampling, accountant)
        return cls(epsilon, delta, z, sampling.sample_rate, accountant)

    @classmethod
    def fixed(cls, noise_multiplier: float, epsilon: float, delta: float, sampling: SamplingModel,
              accountant: str = "rdp") -> PrivacyBudget:
        return cls(epsilon, delta, noise_multiplier, sampling.sample_rate, accountant)

    def preflight(self, planned_steps: int) -> None:
        """Refuse a plan whose ``planned_steps`` would overrun ε (a ConfigError: one line, exit 2)."""
        from runner.core.errors import ConfigError

        if planned_steps > self.max_steps:
            raise ConfigError(f"privacy: noise multiplier {self.noise_multiplier:.4g} at sampling rate "
                              f"{self.sample_rate:.4g} spends ε={self.spent(planned_steps):.4g} > {self.epsilon} "
                              f"over {planned_steps} steps (δ={self.delta}, {self.accountant}); at most "
                              f"{self.max_steps} steps fit")

    def spent(self, steps: int | None = None) -> float:
        """ε spent after ``steps`` (default: the steps taken); 0 before the first."""
        n = self.steps if steps is None else steps
        if n == 0:
            return 0.0
        return epsilon_spent([GaussianRelease("updates", self.noise_multiplier, self.sample_rate, n)],
                             self.delta, self.accountant)

    @property
    def max_steps(self) -> int:
        if self._max_steps is None:
            lo, hi = 0, 1  # spent(lo) <= ε always holds; grow hi until it does not
            while self.spent(hi) <= self.epsilon:
                lo, hi = hi, 2 * hi
                if hi > 2**40:
                    raise ValueError(f"noise multiplier {self.noise_multiplier} never exhausts ε={self.epsilon}")
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if self.spent(mid) <= self.epsilon else (lo, mid)
            self._max_steps = lo
        return self._max_steps

    def can_step(self) -> bool:
        """Whether one more step keeps the spend within ε."""
        return self.steps + 1 <= self.max_steps

    def step(self) -> None:
        """Account one release; raises :class:`BudgetExhausted` instead of exceeding ε."""
        if not self.can_step():
            raise BudgetExhausted(f"step {self.steps + 1} would spend ε={self.spent(self.steps + 1):.4g} > "
                                  f"{self.epsilon} (δ={self.delta}, {self.accountant})")
        self.steps += 1

    def as_results(self, clip_norm: float) -> dict[str, float | int | str]:
        """results.json ``privacy.*``: ε from the accountant for the steps actually taken."""
        return {"epsilon": self.spent(), "delta": self.delta, "accountant": self.accountant,
                "noise_multiplier": self.noise_multiplier, "clip_norm": clip_norm, "steps": self.steps}


# --------------------------------------------------------------------------- adaptive clipping
def update_noise_multiplier(noise_multiplier: float, count_noise: float) -> float:
    """z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2): the update noise that leaves the count release room in budget z."""
    rest = noise_multiplier**-2 - (2.0 * count_noise) ** -2
    if rest <= 0:
        raise ValueError(f"count noise σ_b={count_noise} is too small for noise multiplier {noise_multiplier}: "
                         f"need 2σ_b > z")
    return rest**-0.5


@dataclass
class AdaptiveClipping:
    """Quantile-tracking clip norm: C ← C · exp(−η (b̄ − γ)), b̄ the noised fraction of norms ≤ C."""

    clip_norm: float
    target_quantile: float = 0.5  # γ
    learning_rate: float = 0.2  # η_C
    count_noise: float = 0.0  # σ_b, std of the noise on Σ b (Andrew et al. suggest expected clients / 20)

    def __post_init__(self) -> None:
        if not 0 < self.target_quantile < 1 or not self.clip_norm > 0 or self.count_noise < 0:
            raise ValueError("adaptive clipping needs 0 < target_quantile < 1, clip_norm > 0, count_noise >= 0")

    def update(self, below: float, expected_clients: float, rng: np.random.Generator) -> float:
        """Take one step from the count of clients whose norm was ≤ C; returns the new C."""
        noisy = below + (rng.normal(0.0, self.count_noise) if self.count_noise > 0 else 0.0)
        self.clip_norm *= math.exp(-self.learning_rate * (noisy / expected_clients - self.target_quantile))
        return self.clip_norm


# --------------------------------------------------------------------------- server side
class DPFedAvg:
    """One DP-FedAvg round at a time: ``add`` each client's update, ``release`` the noised mean.

    The released mean is (Σ clip(Δ_i, S) + N(0, (z_Δ S)² I)) / expected_clients, z_Δ = z without adaptive
    clipping. ``privatize_sum`` does the same for a sum computed elsewhere (e.g. by secure aggregation).
    """

    def __init__(self, dim: int, clip_norm: float, noise_multiplier: float, expected_clients: float,
                 rng: np.random.Generator, adaptive: AdaptiveClipping | None = None):
        if not expected_clients > 0 or noise_multiplier < 0:
            raise ValueError("DP-FedAvg needs expected_clients > 0 and noise_multiplier >= 0")
        self.dim, self.noise_multiplier, self.expected_clients = dim, noise_multiplier, expected_clients
        self.rng, self.adaptive = rng, adaptive
        self.clip_norm = adaptive.clip_norm if adaptive is not None else clip_norm
        self.update_noise = (update_noise_multiplier(noise_multiplier, adaptive.count_noise)
                             if adaptive is not None and adaptive.count_noise > 0 and noise_multiplier > 0
                             else noise_multiplier)
        self._sum, self._below, self.count = np.zeros(dim), 0, 0

    def add(self, update: np.ndarray) -> None:
        """Client side: clip to S (and report whether the norm was ≤ S); server side: add to the sum."""
        update = np.asarray(update, dtype=np.float64).ravel()
        self._below += int(np.linalg.norm(update) <= self.clip_norm)
        self._sum += clip_update(update, self.clip_norm)
        self.count += 1

    def privatize_sum(self, total: np.ndarray, below: int = 0) -> np.ndarray:
        """Noised fixed-denominator mean of a sum of clipped updates; steps the adaptive clip if set."""
        noised = total + self.rng.normal(0.0, self.update_noise * self.clip_norm, size=np.shape(total))
        if self.adaptive is not None:
            self.clip_norm = self.adaptive.update(below, self.expected_clients, self.rng)
        return noised / self.expected_clients

    def release(self) -> np.ndarray:
        out = self.privatize_sum(self._sum, self._below)
        self._sum, self._below, self.count = np.zeros(self.dim), 0, 0
        return out


class DPFedBuff:
    """FedBuff's buffer with user-level DP: K clipped, staleness-weighted updates, noise once per buffer.

    ``release`` returns (Σ_k s(τ_k) clip(Δ_k, S) + N(0, (zS)² I)) / K, the Δ̄ of the server step.
    """

    def __init__(self, dim: int, buffer_size: int, clip_norm: float, noise_multiplier: float,
                 rng: np.random.Generator):
        if buffer_size < 1 or not clip_norm > 0 or noise_multiplier < 0:
            raise ValueError("DP-FedBuff needs buffer_size >= 1, clip_norm > 0, noise_multiplier >= 0")
        self.dim, self.buffer_size, self.clip_norm = dim, buffer_size, clip_norm
        self.noise_multiplier, self.rng = noise_multiplier, rng
        self._sum, self.count = np.zeros(dim), 0

    @property
    def ready(self) -> bool:
        return self.count >= self.buffer_size

    def add(self, update: np.ndarray, staleness_weight: float = 1.0) -> None:
        if not 0 <= staleness_weight <= 1:
            raise ValueError(f"staleness weight {staleness_weight} must be in [0, 1] to keep the sensitivity ≤ S")
        if self.ready:
            raise RuntimeError(f"the buffer already holds {self.buffer_size} updates: release it first")
        self._sum += staleness_weight * clip_update(update, self.clip_norm)
        self.count += 1

    def privatize_sum(self, total: np.ndarray) -> np.ndarray:
        """Noise a buffer sum computed elsewhere (e.g. released by the trusted aggregator) and divide by K."""
        return (total + self.rng.normal(0.0, self.noise_multiplier * self.clip_norm, size=np.shape(total))) \
            / self.buffer_size

    def release(self) -> np.ndarray:
        if not self.ready:
            raise RuntimeError(f"the buffer holds {self.count} of {self.buffer_size} updates")
        out = self.privatize_sum(self._sum)
        self._sum, self.count = np.zeros(self.dim), 0
        return out
