"""Accounting against Opacus' own functions, published values and the Gaussian-DP closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

from runner.privacy.accounting import (
    GaussianRelease,
    calibrate_noise,
    epsilon_spent,
    gdp_delta,
    gdp_epsilon,
    gdp_mu,
    split_noise,
)

DELTA = 3e-6


@pytest.mark.parametrize(("sigma", "published"), [(11.3, 1.29), (2.31, 7.58)])
def test_rdp_matches_published_pretext_values(sigma, published):
    eps = epsilon_spent([GaussianRelease("vote", sigma, 1.0, 11)], DELTA, "rdp")
    assert eps == pytest.approx(published, abs=0.01)


def test_rdp_matches_opacus_analysis_functions():
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant

    orders = RDPAccountant.DEFAULT_ALPHAS
    plan = [GaussianRelease("a", 3.0, 1.0, 2), GaussianRelease("b", 5.0, 0.1, 40)]
    rdp = sum(compute_rdp(q=r.sample_rate, noise_multiplier=r.noise_multiplier, steps=r.steps, orders=orders)
              for r in plan)
    ref, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    assert epsilon_spent(plan, 1e-5, "rdp") == pytest.approx(ref, rel=1e-12)


def test_gdp_composition_closed_form():
    plan = [GaussianRelease("a", 2.0, 1.0, 3), GaussianRelease("b", 4.0, 1.0, 1)]
    assert gdp_mu(plan) == pytest.approx(math.sqrt(3 / 4 + 1 / 16), rel=1e-12)
    # PAPERS.md: exact GDP needs only sigma = 10.49 for epsilon = 1.29 at 11 releases, delta = 3e-6
    assert epsilon_spent([GaussianRelease("v", 10.49, 1.0, 11)], DELTA, "gdp") == pytest.approx(1.29, abs=0.01)
    assert calibrate_noise(1.29, DELTA, steps=11, accountant="gdp") == pytest.approx(10.49, abs=0.02)


@pytest.mark.parametrize("mu", [0.3, 1.0, 2.5])
def test_gdp_delta_matches_privacy_loss_integral(mu):
    """δ(ε) = E[(1 - e^{ε-L})+] with privacy loss L ~ N(μ²/2, μ²), integrated numerically."""
    eps = gdp_epsilon(mu, 1e-5)
    ref, _ = integrate.quad(lambda x: (1 - math.exp(eps - x)) * norm.pdf(x, mu**2 / 2, mu), eps, mu**2 / 2 + 40 * mu)
    assert ref == pytest.approx(1e-5, rel=1e-6)
    assert gdp_delta(mu, eps) == pytest.approx(1e-5, rel=1e-9)


def test_prv_agrees_with_exact_gdp_without_subsampling():
    plan = [GaussianRelease("v", 10.49, 1.0, 11)]
    assert epsilon_spent(plan, DELTA, "prv") == pytest.approx(epsilon_spent(plan, DELTA, "gdp"), abs=0.02)


@pytest.mark.parametrize("accountant", ["rdp", "prv", "gdp"])
def test_calibration_spends_the_budget(accountant):
    sigma = calibrate_noise(1.0, DELTA, steps=3, accountant=accountant)
    eps = epsilon_spent([GaussianRelease("x", sigma, 1.0, 3)], DELTA, accountant)
    assert 0.97 <= eps <= 1.0 + 1e-9


def test_split_noise_preserves_the_spend():
    split = split_noise(4.0, {"count": 1.0, "sum": 2.0, "second_moment": 3.0})
    assert sum(1 / s**2 for s in split.values()) == pytest.approx(1 / 16, rel=1e-12)
    plan = [GaussianRelease(k, s) for k, s in split.items()]
    for acc in ("rdp", "gdp"):
        assert epsilon_spent(plan, 1e-5, acc) == pytest.approx(
            epsilon_spent([GaussianRelease("one", 4.0)], 1e-5, acc), rel=1e-9)


@pytest.mark.parametrize("delta", [1.0, 1.5, 0.0, -0.1])
def test_bad_delta_is_refused(delta):
    with pytest.raises(ValueError, match="delta"):
        epsilon_spent([GaussianRelease("x", 1.0)], delta, "rdp")
    with pytest.raises(ValueError, match="delta"):
        calibrate_noise(1.0, delta)


def test_bad_plans_are_refused():
    with pytest.raises(ValueError, match="no releases"):
        epsilon_spent([], 1e-5)
    with pytest.raises(ValueError, match="noise_multiplier"):
        epsilon_spent([GaussianRelease("x", float("nan"))], 1e-5)
    with pytest.raises(ValueError, match="non-subsampled"):
        epsilon_spent([GaussianRelease("x", 1.0, 0.5, 3)], 1e-5, "gdp")
    with pytest.raises(ValueError, match="accountant"):
        epsilon_spent([GaussianRelease("x", 1.0)], 1e-5, "moments")
    assert np.isfinite(epsilon_spent([GaussianRelease("x", 1.0, 0.5, 3)], 1e-5, "prv"))
