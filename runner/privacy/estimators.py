"""Distributed DP sum, mean and covariance of client embeddings (user-level DP).

Algorithm (FreD's statistics step):
1. Each client keeps at most ``max_samples`` of its samples (a seeded random subset) and clips every
   embedding to L2 norm ``C`` (per-sample clipping).
2. It forms its local count ``n_i``, sum ``s_i = Σ x`` and second moment ``S_i = Σ x xᵀ``.
3. The three are summed across clients through secure aggregation (:func:`masked_sum`, the SecAgg
   protocol of :mod:`runner.federated.secagg`): the server only ever sees the aggregate.
4. The server adds Gaussian noise to each aggregate. Adding or removing one client changes them by at
   most ``m`` (count), ``m·C`` (sum, L2) and ``m·C²`` (second moment, Frobenius), ``m = max_samples``,
   so noise std = σ_release × sensitivity gives a Gaussian mechanism of noise multiplier σ_release.
5. mean = s / n, covariance = S / n − mean meanᵀ, projected to the PSD cone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RELEASES = ("count", "sum", "second_moment")


@dataclass
class ClientStats:
    """Aggregate statistics (exact or noisy) of the clients' clipped embeddings."""

    count: float
    sum: np.ndarray  # (d,)
    second_moment: np.ndarray  # (d, d)


# --------------------------------------------------------------------------- client side
def clip_rows(x: np.ndarray, clip_norm: float) -> np.ndarray:
    """Scale every row with L2 norm above ``clip_norm`` down to norm ``clip_norm``."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x * np.minimum(1.0, clip_norm / np.maximum(norms, 1e-12))


def check_clients(clients: Sequence[np.ndarray]) -> None:
    """Refuse empty client lists, empty clients, ragged dimensions and non-finite embeddings."""
    if len(clients) == 0:
        raise ValueError("no clients: the DP estimate needs at least one client")
    dim = None
    for i, x in enumerate(clients):
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"client {i} has no samples (embeddings of shape {x.shape}; need (n >= 1, d))")
        if dim is not None and x.shape[1] != dim:
            raise ValueError(f"client {i} has embedding dimension {x.shape[1]}, others have {dim}")
        dim = x.shape[1]
        if not np.all(np.isfinite(x)):
            raise ValueError(f"client {i} has a NaN or infinite embedding")


def client_contribution(x: np.ndarray, clip_norm: float, max_samples: int,
                        rng: np.random.Generator) -> np.ndarray:
    """One client's message: ``[n_i, Σ x, vec(Σ x xᵀ)]`` over at most ``max_samples`` clipped samples."""
    if x.shape[0] > max_samples:
        x = x[rng.choice(x.shape[0], size=max_samples, replace=False)]
    x = clip_rows(np.asarray(x, dtype=np.float64), clip_norm)
    return np.concatenate([[float(x.shape[0])], x.sum(0), (x.T @ x).ravel()])


# --------------------------------------------------------------------------- secure aggregation
def masked_sum(messages: Sequence[np.ndarray], seed: int, frac_bits: int = 24, neighbours: int = 8,
               bound: float | None = None) -> np.ndarray:
    """Sum of the clients' vectors through secure aggregation (:mod:`runner.federated.secagg`).

    Messages are encoded in fixed point (``frac_bits``) in Z_{2^64}; each client pairs masks with
    ``neighbours`` others on a ring (SecAgg+; the complete graph when there are fewer clients) and
    Shamir-shares its keys among them with a majority threshold. ``bound`` is the public bound on every
    coordinate (default: the largest one present). All clients report.
    """
    from runner.federated.secagg import FixedPoint, secure_sum

    n = len(messages)
    if bound is None:
        bound = max(float(np.abs(np.asarray(m)).max(initial=0.0)) for m in messages) or 1.0
    k = neighbours + neighbours % 2  # the ring pairs neighbours/2 clients on each side
    graph = None if k >= n - 1 else k
    holders = (n if graph is None else k + 1)
    total, _ = secure_sum(messages, FixedPoint(bound, n, frac_bits), holders // 2 + 1, seed, neighbours=graph)
    return total


def aggregate(clients: Sequence[np.ndarray], clip_norm: float, max_samples: int, seed: int,
              secure: bool = True) -> ClientStats:
    """Exact (noise-free) aggregate statistics of the clients' capped, clipped embeddings."""
    from runner.core.seeding import derive_seed

    check_clients(clients)
    if clip_norm <= 0:
        raise ValueError(f"clip_norm={clip_norm} must be > 0")
    if max_samples < 1:
        raise ValueError(f"max_samples={max_samples} must be >= 1")
    msgs = [client_contribution(np.asarray(x), clip_norm, max_samples,
                                np.random.default_rng(derive_seed(seed, "cap", i))) for i, x in enumerate(clients)]
    bound = max(sensitivities(clip_norm, max_samples).values())  # count m, |Σx_j| ≤ mC, |(Σxxᵀ)_jk| ≤ mC²
    total = masked_sum(msgs, seed, bound=bound) if secure else np.sum(msgs, axis=0)
    d = np.asarray(clients[0]).shape[1]
    return ClientStats(count=float(total[0]), sum=total[1:1 + d], second_moment=total[1 + d:].reshape(d, d))


# --------------------------------------------------------------------------- server side
def sensitivities(clip_norm: float, max_samples: int) -> dict[str, float]:
    """L2 sensitivity of each aggregate to adding/removing one client."""
    return {"count": float(max_samples), "sum": max_samples * clip_norm, "second_moment": max_samples * clip_norm**2}


def gaussian_mechanism(value: np.ndarray | float, sensitivity: float, noise_multiplier: float,
                       rng: np.random.Generator) -> np.ndarray:
    """``value`` + N(0, (noise_multiplier × sensitivity)²) per coordinate."""
    value = np.asarray(value, dtype=np.float64)
    return value + rng.normal(0.0, noise_multiplier * sensitivity, size=value.shape)


def privatize(stats: ClientStats, clip_norm: float, max_samples: int, noise: dict[str, float],
              rng: np.random.Generator) -> ClientStats:
    """Release the aggregates through Gaussian mechanisms with noise multipliers ``noise[release]``.

    The second-moment noise is drawn as a symmetric matrix (upper triangle, mirrored): a release of the
    d(d+1)/2 distinct entries, whose Frobenius sensitivity is at most that of the full matrix.
    """
    sens = sensitivities(clip_norm, max_samples)
    count = float(gaussian_mechanism(stats.count, sens["count"], noise["count"], rng))
    total = gaussian_mechanism(stats.sum, sens["sum"], noise["sum"], rng)
    d = stats.sum.shape[0]
    z = np.triu(rng.normal(0.0, noise["second_moment"] * sens["second_moment"], size=(d, d)))
    z = z + np.triu(z, 1).T
    return ClientStats(count=count, sum=total, second_moment=stats.second_moment + z)


def project_psd(c: np.ndarray) -> np.ndarray:
    """Nearest PSD matrix in Frobenius norm: symmetrise and clip negative eigenvalues to 0."""
    c = (c + c.T) / 2
    w, v = np.linalg.eigh(c)
    return (v * np.clip(w, 0.0, None)) @ v.T


def mean_and_covariance(stats: ClientStats, min_count: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Mean s/n and PSD-projected covariance S/n − mean meanᵀ (n clamped to ``min_count``)."""
    n = max(stats.count, min_count)
    mu = stats.sum / n
    return mu, project_psd(stats.second_moment / n - np.outer(mu, mu))


def dp_mean_and_covariance(clients: Sequence[np.ndarray], clip_norm: float, max_samples: int,
                           noise: dict[str, float] | None, seed: int,
                           secure: bool = True) -> tuple[np.ndarray, np.ndarray, ClientStats]:
    """The full pipeline: cap, clip, secure-sum, add noise (``noise`` None = non-private), estimate."""
    from runner.core.seeding import derive_seed

    stats = aggregate(clients, clip_norm, max_samples, seed, secure=secure)
    if noise is not None:
        missing = [r for r in RELEASES if r not in noise]
        if missing:
            raise ValueError(f"noise multipliers missing for release(s) {', '.join(missing)}")
        stats = privatize(stats, clip_norm, max_samples, noise, np.random.default_rng(derive_seed(seed, "noise")))
    mu, cov = mean_and_covariance(stats)
    return mu, cov, stats
