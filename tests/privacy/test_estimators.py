"""DP sum/mean/covariance: clipping bounds sensitivity, secure sum is exact, noise matches calibration."""

from __future__ import annotations

import numpy as np
import pytest

from runner.privacy.estimators import (
    ClientStats,
    aggregate,
    clip_rows,
    dp_mean_and_covariance,
    masked_sum,
    mean_and_covariance,
    privatize,
    project_psd,
    sensitivities,
)


def _clients(rng, n=20, d=5, lo=1, hi=12, scale=1.0):
    return [rng.normal(scale=scale, size=(int(rng.integers(lo, hi)), d)) for _ in range(n)]


def test_clip_rows_bounds_norms_and_keeps_small_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 7)) * rng.uniform(0.01, 5, size=(200, 1))
    y = clip_rows(x, 1.5)
    norms = np.linalg.norm(x, axis=1)
    assert np.all(np.linalg.norm(y, axis=1) <= 1.5 + 1e-12)
    np.testing.assert_allclose(y[norms <= 1.5], x[norms <= 1.5])
    np.testing.assert_allclose(np.linalg.norm(y[norms > 1.5], axis=1), 1.5)


def test_one_client_changes_the_aggregates_by_at_most_the_sensitivity():
    rng = np.random.default_rng(1)
    c, m, d = 1.0, 4, 6
    base = _clients(rng, d=d, scale=3.0)
    adversary = 100.0 * np.ones((50, d))  # huge, many, aligned samples: the worst case for the bound
    s0 = aggregate(base, c, m, seed=0, secure=False)
    s1 = aggregate([*base, adversary], c, m, seed=0, secure=False)
    sens = sensitivities(c, m)
    assert abs(s1.count - s0.count) <= sens["count"] + 1e-9
    assert np.linalg.norm(s1.sum - s0.sum) <= sens["sum"] + 1e-9
    assert np.linalg.norm(s1.second_moment - s0.second_moment) <= sens["second_moment"] + 1e-9
    # the bound is attained by this adversary, so it is tight
    assert np.linalg.norm(s1.sum - s0.sum) == pytest.approx(sens["sum"], rel=1e-9)


def test_secure_sum_equals_plain_sum_and_masks_hide_messages():
    rng = np.random.default_rng(2)
    msgs = [rng.normal(size=30) for _ in range(13)]
    np.testing.assert_allclose(masked_sum(msgs, seed=7), np.sum(msgs, axis=0), atol=13 * 2.0**-24)
    np.testing.assert_allclose(masked_sum(msgs[:2], seed=7), msgs[0] + msgs[1], atol=2 * 2.0**-24)
    clients = _clients(rng, d=4)
    a, b = aggregate(clients, 1.0, 5, seed=3, secure=True), aggregate(clients, 1.0, 5, seed=3, secure=False)
    assert a.count == pytest.approx(b.count, abs=1e-5)
    np.testing.assert_allclose(a.second_moment, b.second_moment, atol=1e-4)


def test_noise_free_estimate_is_the_sample_mean_and_covariance_of_capped_clipped_data():
    rng = np.random.default_rng(3)
    clients = [rng.normal(size=(3, 4)) * 0.3 for _ in range(40)]  # norms < 2, at most 3 samples: no cap, no clip
    mu, cov, stats = dp_mean_and_covariance(clients, clip_norm=10.0, max_samples=3, noise=None, seed=0)
    x = np.concatenate(clients)
    assert stats.count == pytest.approx(120, abs=1e-5)
    np.testing.assert_allclose(mu, x.mean(0), atol=1e-6)
    np.testing.assert_allclose(cov, np.cov(x.T, bias=True), atol=1e-6)


def test_cap_keeps_at_most_m_samples_per_client():
    rng = np.random.default_rng(4)
    clients = [rng.normal(size=(n, 3)) for n in (1, 5, 30)]
    assert aggregate(clients, 1.0, 4, seed=0, secure=False).count == pytest.approx(1 + 4 + 4)


def test_noise_scale_matches_calibration():
    d, c, m = 60, 0.5, 8
    noise = {"count": 2.0, "sum": 3.0, "second_moment": 4.0}
    stats = ClientStats(count=0.0, sum=np.zeros(d), second_moment=np.zeros((d, d)))
    rng = np.random.default_rng(5)
    draws = [privatize(stats, c, m, noise, rng) for _ in range(400)]
    counts = np.array([s.count for s in draws])
    sums = np.stack([s.sum for s in draws])
    second = np.stack([s.second_moment for s in draws])
    sens = sensitivities(c, m)
    assert counts.std() == pytest.approx(noise["count"] * sens["count"], rel=0.1)
    assert sums.std() == pytest.approx(noise["sum"] * sens["sum"], rel=0.02)
    iu = np.triu_indices(d)
    assert second[:, iu[0], iu[1]].std() == pytest.approx(noise["second_moment"] * sens["second_moment"], rel=0.02)
    np.testing.assert_array_equal(second, np.transpose(second, (0, 2, 1)))
    assert abs(sums.mean()) < 4 * sums.std() / np.sqrt(sums.size)


def test_private_estimate_concentrates_and_is_psd():
    rng = np.random.default_rng(6)
    clients = [rng.normal(0.2, 0.1, size=(4, 3)) for _ in range(3000)]
    noise = {"count": 5.0, "sum": 5.0, "second_moment": 5.0}
    mu, cov, _ = dp_mean_and_covariance(clients, 1.0, 4, noise, seed=1)
    assert np.all(np.linalg.eigvalsh(cov) >= -1e-12)
    np.testing.assert_allclose(mu, 0.2, atol=0.02)


def test_project_psd():
    rng = np.random.default_rng(7)
    a = rng.normal(size=(8, 8))
    psd = a @ a.T
    np.testing.assert_allclose(project_psd(psd), psd, atol=1e-10)
    proj = project_psd(a)
    assert np.all(np.linalg.eigvalsh(proj) >= -1e-10)
    mu, cov = mean_and_covariance(ClientStats(count=-3.0, sum=np.ones(2), second_moment=-np.eye(2)))
    assert np.all(np.isfinite(mu)) and np.all(np.linalg.eigvalsh(cov) >= -1e-12)


def test_bad_inputs_give_clear_errors():
    good = np.ones((2, 3))
    with pytest.raises(ValueError, match="client 1 has no samples"):
        aggregate([good, np.zeros((0, 3))], 1.0, 2, seed=0)
    with pytest.raises(ValueError, match="client 0 has a NaN"):
        aggregate([np.array([[np.nan, 0.0, 0.0]]), good], 1.0, 2, seed=0)
    with pytest.raises(ValueError, match="no clients"):
        aggregate([], 1.0, 2, seed=0)
    with pytest.raises(ValueError, match="dimension"):
        aggregate([good, np.ones((2, 4))], 1.0, 2, seed=0)
    with pytest.raises(ValueError, match="clip_norm"):
        aggregate([good], 0.0, 2, seed=0)
    with pytest.raises(ValueError, match="missing for release"):
        dp_mean_and_covariance([good], 1.0, 2, {"sum": 1.0}, seed=0)
