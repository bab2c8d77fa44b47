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
