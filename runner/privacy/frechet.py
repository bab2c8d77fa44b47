"""Fréchet distance between Gaussians by the eigenvalue form.

FD = ‖μ1 − μ2‖² + Tr(C1) + Tr(C2) − 2 Tr((C1 C2)^{1/2}),  Tr((C1 C2)^{1/2}) = Σ_i √λ_i(C1 C2).

The eigenvalues of C1 C2 equal those of the symmetric PSD matrix C1^{1/2} C2 C1^{1/2} (similar
matrices), so we take them with ``eigvalsh`` after symmetrising and clipping tiny negative round-off:
no matrix square root of a non-symmetric product, and singular or noisy (projected) covariances are fine.
"""

from __future__ import annotations

import numpy as np


def _clip_eigenvalues(w: np.ndarray, scale: float) -> np.ndarray:
    """Zero the eigenvalues that are negative or below round-off (tolerance d·eps·scale)."""
    tol = w.shape[0] * np.finfo(np.float64).eps * scale
    return np.where(w > tol, w, 0.0)


def _psd_sqrt(c: np.ndarray) -> tuple[np.ndarray, float]:
    """C^{1/2} of the PSD part of ``c`` and the largest eigenvalue magnitude of ``c``."""
    w, v = np.linalg.eigh((c + c.T) / 2)
    scale = float(np.abs(w).max(initial=0.0))
    return (v * np.sqrt(_clip_eigenvalues(w, scale))) @ v.T, scale


def trace_sqrt_product(c1: np.ndarray, c2: np.ndarray) -> float:
    """Σ_i √λ_i(C1 C2) for PSD C1, C2."""
    s, scale1 = _psd_sqrt(c1)
    m = s @ c2 @ s
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    scale = scale1 * float(np.abs(np.linalg.eigvalsh((c2 + c2.T) / 2)).max(initial=0.0))
    return float(np.sqrt(_clip_eigenvalues(lam, scale)).sum())


def frechet_distance(mu1: np.ndarray, c1: np.ndarray, mu2: np.ndarray, c2: np.ndarray) -> float:
    """Fréchet distance between N(μ1, C1) and N(μ2, C2); C1, C2 must be symmetric PSD (d × d)."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    c1, c2 = np.asarray(c1, dtype=np.float64), np.asarray(c2, dtype=np.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or c1.shape != (d, d) or c2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, C1 {c1.shape}, C2 {c2.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("C1", c1), ("C2", c2)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} has NaN or infinite entries")
    diff = mu1 - mu2
    fd = diff @ diff + np.trace(c1) + np.trace(c2) - 2.0 * trace_sqrt_product(c1, c2)
    return float(max(fd, 0.0))


def gaussian_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (biased, 1/n) covariance of the rows of ``x``: a public dataset's side of the FD."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"need a non-empty (n, d) array of embeddings, got shape {x.shape}")
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / x.shape[0]
