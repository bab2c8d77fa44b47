"""The one seeding function: every RNG the runner touches is seeded from the run's seed."""

from __future__ import annotations

import os
import random

import numpy as np


def seed_everything(seed: int) -> None:
    """Seed python, numpy, torch (CPU and CUDA) and transformers from one integer."""
    import torch

    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    try:
        from transformers import set_seed
    except ImportError:  # transformers is a core dependency; tolerate its absence in minimal installs
        return
    set_seed(seed)


def derive_seed(seed: int, *labels: int | str) -> int:
    """A stable 63-bit seed for a sub-stream (a client, a stage), independent of python's hash seed."""
    import hashlib

    h = hashlib.blake2b(repr((seed, *labels)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


_GOLDEN, _MUL1, _MUL2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser (Steele et al. 2014): a bijection of uint64 with full avalanche."""
    z = (z ^ (z >> np.uint64(30))) * _MUL1
    z = (z ^ (z >> np.uint64(27))) * _MUL2
    return z ^ (z >> np.uint64(31))


def hash_u64(seed: int, label: str, *counters: np.ndarray | int) -> np.ndarray:
    """Counter-based 64-bit hashes, one per element of the broadcast non-negative integer ``counters``.

    Each value is a pure function of ``(seed, label, counters)`` (SplitMix64 applied to a running hash), so a
    whole batch of clients draws its randomness in a few vectorised numpy operations, and a client gets the
    same values alone or in any batch.
    """
    arrays = [np.asarray(c, dtype=np.int64).astype(np.uint64) for c in counters]
    with np.errstate(over="ignore"):
        h = np.full(np.broadcast_shapes(*(a.shape for a in arrays)), np.uint64(derive_seed(seed, label)), np.uint64)
        for a in arrays:
            h = _mix64(h ^ _mix64(a + _GOLDEN))
    return h


def hash_uniform(seed: int, label: str, *counters: np.ndarray | int) -> np.ndarray:
    """Counter-based uniforms in (0, 1) from :func:`hash_u64` (its top 53 bits)."""
    return ((hash_u64(seed, label, *counters) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53
