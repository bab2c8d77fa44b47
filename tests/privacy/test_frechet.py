"""Fréchet distance by eigenvalues vs a scipy sqrtm reference and closed forms."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import sqrtm
from scipy.stats import ortho_group

from runner.privacy.frechet import frechet_distance, gaussian_stats


def _sqrtm_fd(mu1, c1, mu2, c2) -> float:
    covmean = np.real(sqrtm(c1 @ c2))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_scipy_sqrtm_reference(seed):
    rng = np.random.default_rng(seed)
    d = 24
    a, b = rng.normal(size=(d, 2 * d)), rng.normal(size=(d, 2 * d))
    c1, c2 = a @ a.T / d, b @ b.T / d + 0.1 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    ref = _sqrtm_fd(mu1, c1, mu2, c2)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(ref, rel=1e-6)


def test_singular_covariances_match_the_commuting_closed_form():
    """For C1 = Q diag(a) Qᵀ, C2 = Q diag(b) Qᵀ: FD = ‖μ1−μ2‖² + Σ(√a − √b)², even with zero eigenvalues."""
    d = 12
    q = ortho_group.rvs(d, random_state=3)
    a = np.r_[np.linspace(0.5, 2.0, 4), np.zeros(d - 4)]
    b = np.r_[np.zeros(6), np.linspace(0.1, 1.0, d - 6)]
    c1, c2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = np.ones(d), np.zeros(d)
    expected = d + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-9)


def test_identity_symmetry_and_one_dimensional_closed_form():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(500, 6)), rng.normal(1.0, 2.0, size=(400, 6))
    (mx, cx), (my, cy) = gaussian_stats(x), gaussian_stats(y)
    assert frechet_distance(mx, cx, mx, cx) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(mx, cx, my, cy) == pytest.approx(frechet_distance(my, cy, mx, cx), rel=1e-9)
    fd1 = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-1.0]), np.array([[9.0]]))
    assert fd1 == pytest.approx(4.0 + (2.0 - 3.0) ** 2, rel=1e-12)


def test_noisy_near_psd_covariance_is_stable():
    rng = np.random.default_rng(5)
    d = 16
    a = rng.normal(size=(d, 3))
    c = a @ a.T
    noisy = c + 1e-10 * (lambda z: z + z.T)(rng.normal(size=(d, d)))  # tiny negative eigenvalues
    fd = frechet_distance(np.zeros(d), noisy, np.zeros(d), c)
    assert np.isfinite(fd) and 0.0 <= fd < 1e-4


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan]), np.eye(1), np.zeros(1), np.eye(1))
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="non-empty"):
        gaussian_stats(np.zeros((0, 3)))
