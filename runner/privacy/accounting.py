"""Privacy accounting for Gaussian releases: Opacus' RDP and PRV accountants, exact Gaussian-DP.

A *plan* is a list of :class:`GaussianRelease`: a Gaussian mechanism with L2 sensitivity scaled to 1,
noise multiplier σ, sampling rate q (1.0 = no subsampling) and the number of times it is applied.

- ``rdp`` / ``prv``: the plan becomes an Opacus accountant ``history`` of ``(σ, q, steps)`` and
  ``accountant.get_epsilon(δ)`` gives the spend (so numbers match Opacus exactly).
- ``gdp``: non-subsampled Gaussian releases compose *exactly* in Gaussian-DP (Dong, Roth, Su 2019):
  ``μ = sqrt(Σ_i steps_i / σ_i²)``, and a μ-GDP mechanism is (ε, δ(ε))-DP for every ε with
  ``δ(ε) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2)``; we invert it for ε by root finding.

Calibration finds the noise for a target (ε, δ): Opacus' ``get_noise_multiplier`` for rdp/prv, the
inverted closed form for gdp.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from scipy.optimize import brentq
from scipy.stats import norm

ACCOUNTANTS = ("rdp", "prv", "gdp")


@dataclass(frozen=True)
class GaussianRelease:
    """One Gaussian mechanism of the plan: noise std = ``noise_multiplier`` × L2 sensitivity."""

    name: str
    noise_multiplier: float
    sample_rate: float = 1.0
    steps: int = 1


def _check(delta: float, accountant: str) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta={delta} must be in (0, 1)")
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant='{accountant}' is not one of {', '.join(ACCOUNTANTS)}")


def _check_plan(plan: Sequence[GaussianRelease]) -> None:
    if not plan:
        raise ValueError("the plan has no releases")
    for r in plan:
        if not r.noise_multiplier > 0 or not math.isfinite(r.noise_multiplier):
            raise ValueError(f"release '{r.name}': noise_multiplier={r.noise_multiplier} must be finite and > 0")
        if not 0.0 < r.sample_rate <= 1.0:
            raise ValueError(f"release '{r.name}': sample_rate={r.sample_rate} must be in (0, 1]")
        if r.steps < 1:
            raise ValueError(f"release '{r.name}': steps={r.steps} must be >= 1")


# --------------------------------------------------------------------------- Gaussian DP (exact)
def gdp_mu(plan: Sequence[GaussianRelease]) -> float:
    """μ of the exact GDP composition of non-subsampled Gaussian releases: sqrt(Σ steps/σ²)."""
    _check_plan(plan)
    if any(r.sample_rate < 1.0 for r in plan):
        raise ValueError("exact GDP composition covers non-subsampled releases only (use accountant=rdp or prv)")
    return math.sqrt(sum(r.steps / r.noise_multiplier**2 for r in plan))


def gdp_delta(mu: float, epsilon: float) -> float:
    """δ(ε) of a μ-GDP mechanism: Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2)."""
    # e^ε Φ(x) computed in log space so that large ε does not overflow
    tail = math.exp(epsilon + norm.logcdf(-epsilon / mu - mu / 2))
    return float(norm.cdf(-epsilon / mu + mu / 2) - tail)


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest ε with δ(ε) ≤ δ for a μ-GDP mechanism."""
    _check(delta, "gdp")
    if mu <= 0:
        raise ValueError(f"mu={mu} must be > 0")
    if gdp_delta(mu, 0.0) <= delta:
        return 0.0
    hi = 1.0
    while gdp_delta(mu, hi) > delta:
        hi *= 2.0
    return float(brentq(lambda e: gdp_delta(mu, e) - delta, 0.0, hi, xtol=1e-12, rtol=1e-12))


def gdp_mu_for(epsilon: float, delta: float) -> float:
    """The largest μ whose μ-GDP mechanism is (ε, δ)-DP (inverse of :func:`gdp_epsilon`)."""
    _check(delta, "gdp")
    if epsilon <= 0:
        raise ValueError(f"epsilon={epsilon} must be > 0")
    hi = 1.0
    while gdp_delta(hi, epsilon) < delta:
        hi *= 2.0
    return float(brentq(lambda m: gdp_delta(m, epsilon) - delta, 1e-9, hi, xtol=1e-12, rtol=1e-12))


# --------------------------------------------------------------------------- Opacus accountants
def _opacus_accountant(plan: Sequence[GaussianRelease], accountant: str):
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    acc.history = [(r.noise_multiplier, r.sample_rate, r.steps) for r in plan]
    return acc


def epsilon_spent(plan: Sequence[GaussianRelease], delta: float, accountant: str = "rdp") -> float:
    """ε that the whole plan spends at δ under ``accountant`` (rdp, prv: Opacus; gdp: exact)."""
    _check(delta, accountant)
    _check_plan(plan)
    if accountant == "gdp":
        return gdp_epsilon(gdp_mu(plan), delta)
    with warnings.catch_warnings():  # Opacus warns about α-grid edges and log(0) at q = 1; both harmless
        warnings.simplefilter("ignore")
        return float(_opacus_accountant(plan, accountant).get_epsilon(delta))


def calibrate_noise(epsilon: float, delta: float, steps: int = 1, sample_rate: float = 1.0,
                    accountant: str = "rdp") -> float:
    """The noise multiplier σ of ``steps`` Gaussian releases (rate ``sample_rate``) that spend (ε, δ)."""
    _check(delta, accountant)
    if not epsilon > 0 or not math.isfinite(epsilon):
        raise ValueError(f"epsilon={epsilon} must be finite and > 0")
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if accountant == "gdp":
        if sample_rate < 1.0:
            raise ValueError("exact GDP calibration covers non-subsampled releases only (use accountant=rdp or prv)")
        return math.sqrt(steps) / gdp_mu_for(epsilon, delta)
    from opacus.accountants.utils import get_noise_multiplier

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant=accountant, epsilon_tolerance=0.005))


def split_noise(effective_sigma: float, weights: dict[str, float]) -> dict[str, float]:
    """Split one Gaussian release of noise ``effective_sigma`` into releases with 1/σ_i² ∝ w_i.

    Non-subsampled Gaussians compose exactly: Σ 1/σ_i² = 1/σ_eff², so the split spends what one release
    of ``effective_sigma`` spends, under every accountant (RDP orders add up the same way).
    """
    total = sum(weights.values())
    if not weights or any(w <= 0 for w in weights.values()):
        raise ValueError(f"noise split weights {weights} must be > 0")
    return {k: effective_sigma * math.sqrt(total / w) for k, w in weights.items()}
