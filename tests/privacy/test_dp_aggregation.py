"""User-level DP aggregation: clipping, noise scale, fixed denominator, calibration, budget, adaptive clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import chi2, norm

from runner.core.errors import ConfigError
from runner.federated.secagg import FixedPoint, secure_sum
from runner.federated.trusted_buffer import TrustedBufferAggregator
from runner.privacy.accounting import GaussianRelease, epsilon_spent
from runner.privacy.user_dp import (
    AdaptiveClipping,
    BudgetExhausted,
    DPFedAvg,
    DPFedBuff,
    PrivacyBudget,
    SamplingModel,
    clip_update,
    epsilon_for_noise,
    noise_for_budget,
    update_noise_multiplier,
)


def _std_within(sample: np.ndarray, sigma: float, alpha: float = 1e-4) -> bool:
    """Two-sided chi-square test of Var = σ² for a zero-mean Gaussian sample (known mean)."""
    stat = float(np.sum(sample**2) / sigma**2)
    n = sample.size
    return chi2.ppf(alpha / 2, n) < stat < chi2.ppf(1 - alpha / 2, n)


def test_clip_update_bounds_the_norm_and_keeps_direction():
    rng = np.random.default_rng(0)
    for scale in (0.01, 0.5, 3.0, 100.0):
        x = rng.normal(size=50) * scale
        y = clip_update(x, 1.5)
        n = np.linalg.norm(x)
        assert np.linalg.norm(y) == pytest.approx(min(n, 1.5), rel=1e-12)
        np.testing.assert_allclose(y, x * min(1.0, 1.5 / n))
    with pytest.raises(ValueError, match="clip_norm"):
        clip_update(np.ones(3), 0.0)


def test_dp_fedavg_noise_std_is_sigma_times_clip_and_mean_uses_expected_clients():
    d, s, z, m = 40_000, 0.7, 1.3, 10.0
    rng = np.random.default_rng(1)
    updates = [rng.normal(size=d) * 0.01 * k for k in range(1, 8)]  # 7 clients report, 10 expected
    clipped_sum = np.sum([u * min(1.0, s / np.linalg.norm(u)) for u in updates], axis=0)
    agg = DPFedAvg(d, s, z, expected_clients=m, rng=np.random.default_rng(2))
    for u in updates:
        agg.add(u)
    released = agg.release()
    noise = released * m - clipped_sum  # the noise on the released sum
    assert _std_within(noise, z * s)
    assert not _std_within(noise, 1.05 * z * s) and not _std_within(noise, 0.95 * z * s)  # the test has power
    # noise free: the fixed denominator divides by the expected 10 clients, not the 7 who reported
    plain = DPFedAvg(d, s, 0.0, expected_clients=m, rng=np.random.default_rng(3))
    for u in updates:
        plain.add(u)
    np.testing.assert_allclose(plain.release(), clipped_sum / 10.0, rtol=1e-9, atol=1e-15)


def test_dp_fedbuff_noises_each_buffer_once_and_divides_by_k():
    d, k, s, z = 30_000, 4, 0.5, 0.8
    rng = np.random.default_rng(4)
    buf = DPFedBuff(d, k, s, z, np.random.default_rng(5))
    ups = [rng.normal(size=d) for _ in range(k)]
    weights = [1.0, 1 / math.sqrt(2), 1 / math.sqrt(3), 0.5]  # FedBuff's s(τ) = 1/√(1+τ)
    for u, w in zip(ups, weights):
        with pytest.raises(RuntimeError, match="of 4 updates"):
            buf.release()
        buf.add(u, staleness_weight=w)
    expected_sum = sum(w * clip_update(u, s) for u, w in zip(ups, weights))
    noise = buf.release() * k - expected_sum
    assert _std_within(noise, z * s)
    with pytest.raises(ValueError, match="staleness weight"):
        buf.add(ups[0], staleness_weight=1.5)


def test_calibrated_sigma_spends_close_to_epsilon():
    delta = 1e-5
    # subsampled (DP-FedBuff: K = 10 of 2000 clients per server step, 500 steps): Opacus RDP and PRV
    sampling = SamplingModel(clients_per_step=10, population=2000, steps=500)
    for accountant in ("rdp", "prv"):
        z = noise_for_budget(1.0, delta, sampling, accountant)
        eps = epsilon_for_noise(z, delta, sampling, accountant=accountant)
        assert 0.98 <= eps <= 1.0, (accountant, z, eps)
    # independent reference for RDP: Opacus' analysis functions called directly
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    z = noise_for_budget(1.0, delta, sampling, "rdp")
    orders = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))
    eps_ref, _ = get_privacy_spent(orders=orders, rdp=compute_rdp(q=sampling.sample_rate, noise_multiplier=z,
                                                                  steps=500, orders=orders), delta=delta)
    assert eps_ref == pytest.approx(epsilon_for_noise(z, delta, sampling), rel=1e-6)
    # full participation (q = 1) with exact GDP: μ = √T / z must satisfy the closed-form δ(ε = 1) = δ
    full = SamplingModel(clients_per_step=100, population=100, steps=50)
    z = noise_for_budget(1.0, delta, full, "gdp")
    mu = math.sqrt(50) / z
    assert norm.cdf(-1 / mu + mu / 2) - math.e * norm.cdf(-1 / mu - mu / 2) == pytest.approx(delta, rel=1e-6)


def test_budget_stops_exactly_before_epsilon_would_be_exceeded():
    sampling = SamplingModel(clients_per_step=20, population=1000, steps=100)
    budget = PrivacyBudget.fixed(1.0, epsilon=2.0, delta=1e-5, sampling=sampling)
    t = budget.max_steps
    ref = [epsilon_spent([GaussianRelease("u", 1.0, 0.02, n)], 1e-5, "rdp") for n in (t, t + 1)]
    assert ref[0] <= 2.0 < ref[1]
    for _ in range(t):
        assert budget.can_step()
        budget.step()
    assert not budget.can_step()
    with pytest.raises(BudgetExhausted, match="would spend"):
        budget.step()
    budget.preflight(t)
    with pytest.raises(ConfigError, match=rf"at most {t} steps fit"):
        budget.preflight(t + 1)
    res = budget.as_results(clip_norm=0.3)
    assert res["epsilon"] == pytest.approx(ref[0]) and res["steps"] == t and res["noise_multiplier"] == 1.0
    # a calibrated budget fits its planned steps, and not many more
    cal = PrivacyBudget.calibrated(1.0, 1e-5, sampling)
    assert 100 <= cal.max_steps < 110


def test_adaptive_clip_noise_split_spends_the_single_release_budget():
    z, sigma_b = 1.0, 5.0
    z_delta = update_noise_multiplier(z, sigma_b)
    assert z_delta**-2 + (2 * sigma_b) ** -2 == pytest.approx(z**-2)
    pair = [GaussianRelease("updates", z_delta), GaussianRelease("count", 2 * sigma_b)]
    assert epsilon_spent(pair, 1e-5, "gdp") == pytest.approx(epsilon_spent([GaussianRelease("one", z)], 1e-5, "gdp"))
    with pytest.raises(ValueError, match="2σ_b > z"):
        update_noise_multiplier(2.0, 0.5)


def test_adaptive_clip_converges_to_the_target_quantile():
    rng = np.random.default_rng(6)
    m, gamma, sigma = 200, 0.8, 0.5
    true_q = math.exp(sigma * norm.ppf(gamma))  # update norms ~ lognormal(0, σ²)
    agg = DPFedAvg(2, 0.05, 0.0, expected_clients=m, rng=np.random.default_rng(7),
                   adaptive=AdaptiveClipping(clip_norm=0.05, target_quantile=gamma, learning_rate=0.2,
                                             count_noise=m / 20))
    history = []
    for _ in range(400):
        norms = np.exp(rng.normal(0.0, sigma, size=m))
        for r in norms:
            agg.add(np.array([r, 0.0]))
        agg.release()
        history.append(agg.clip_norm)
    assert np.mean(history[-100:]) == pytest.approx(true_q, rel=0.05)
    assert history[0] < 0.1  # it started far below and climbed there


def test_dp_aggregation_composes_with_secure_and_trusted_aggregation():
    rng = np.random.default_rng(8)
    d, n, s, z = 64, 8, 1.0, 0.9
    ups = [rng.normal(size=d) for _ in range(n)]
    codec = FixedPoint(bound=s, clients=n, frac_bits=30)
    # DP-FedAvg over SecAgg: clients clip and mask, the server noises the unmasked sum
    total, _ = secure_sum([clip_update(u, s) for u in ups], codec, threshold=5, seed=0)
    plain = DPFedAvg(d, s, z, n, np.random.default_rng(9))
    for u in ups:
        plain.add(u)
    via_secagg = DPFedAvg(d, s, z, n, np.random.default_rng(9)).privatize_sum(total)
    np.testing.assert_allclose(via_secagg, plain.release(), atol=n / codec.scale)
    # DP-FedBuff over Papaya's enclave: the enclave releases the buffer sum, noise is added once
    tee = TrustedBufferAggregator(d, n, codec, seed=1)
    buf = DPFedBuff(d, n, s, z, np.random.default_rng(10))
    weights = [1 / math.sqrt(1 + tau) for tau in range(n)]  # the enclave applies s(τ)
    for u, w in zip(ups, weights):
        tee.add(clip_update(u, s), weight=w)
        buf.add(u, staleness_weight=w)
    np.testing.assert_allclose(DPFedBuff(d, n, s, z, np.random.default_rng(10)).privatize_sum(tee.release()),
                               buf.release(), atol=2 / codec.scale)
