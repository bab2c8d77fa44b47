"""Mask baselines for FedSynth at equal upload size (:mod:`runner.federated.fedsynth`): update codecs that upload
k floats of the update at positions both sides derive from ``(seed, client, draw)``, so no indices go up.

- ``random_mask``: k coordinates of the client's real update Δ, optionally rescaled by P/k (then E[Δ̂] = Δ);
- ``structured_mask``: Konečný et al. 2016's structured update with a random mask — the client's local SGD moves
  only the k coordinates, and it uploads their values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from torch.nn.utils.rnn import pad_sequence

from runner.core.errors import ConfigError
from runner.core.seeding import derive_seed
from runner.federated.client import LocalTrainer, TrainPlan


def random_mask(delta: torch.Tensor, k: int, seed: int, rescale: bool) -> torch.Tensor:
    """Δ restricted to k coordinates drawn uniformly without replacement from ``seed`` (the server draws the
    same ones, so only the k values are uploaded); × P/k when ``rescale`` (then E[Δ̂] = Δ)."""
    p = delta.numel()
    idx = mask_positions(p, k, seed)
    out = torch.zeros_like(delta)
    out[idx] = delta[idx] * (p / k if rescale else 1.0)
    return out


def mask_positions(p: int, k: int, seed: int) -> torch.Tensor:
    """k of p coordinates, uniformly without replacement, from ``seed`` (both sides derive the same ones)."""
    return torch.randperm(p, generator=torch.Generator().manual_seed(seed))[:k]


def restricted_local_sgd(trainer: LocalTrainer, x0s: torch.Tensor, plans: Sequence[TrainPlan],
                         keep: torch.Tensor) -> torch.Tensor:
    """The clients' local SGD (their plans, the trainer's lr) moving only the coordinates where ``keep`` [n, P] is
    1: w ← w − lr · keep ⊙ ∇_w CE on each minibatch (Konečný et al. 2016's structured update); Δ [n, P]."""
    space = trainer.space

    def loss(w: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, mb: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(functional_call(trainer.model, space.unflatten(w), (xb,)), yb, reduction="none")
        return (ce * mb).sum() / mb.sum().clamp_min(1.0)

    g = vmap(grad(loss))
    n = len(plans)
    xs = pad_sequence([p.x for p in plans], batch_first=True)
    ys = pad_sequence([p.y for p in plans], batch_first=True)
    steps, width = max(p.idx.shape[0] for p in plans), max(p.idx.shape[1] for p in plans)
    idx = torch.stack([F.pad(p.idx, (0, width - p.idx.shape[1], 0, steps - p.idx.shape[0])) for p in plans])
    mask = torch.stack([F.pad(p.mask, (0, width - p.mask.shape[1], 0, steps - p.mask.shape[0])) for p in plans])
    ar = torch.arange(n)[:, None]
    w = x0s.clone()
    for s in range(steps):  # a padded step (mask all 0) has zero gradient
        w = w - trainer.lr * keep * g(w, xs[ar, idx[:, s]], ys[ar, idx[:, s]], mask[:, s])
    return w - x0s


def upload_budget(floats: Any, trainer: LocalTrainer, codec: str) -> int:
    """The codec's upload size k in floats, checked against the model's P parameters."""
    k = int(floats)
    if not 1 <= k <= trainer.space.size:
        raise ConfigError(f"{codec}: floats={k} must be in [1, {trainer.space.size}] (the model's parameters)")
    return k


@dataclass
class RandomMaskOptions:
    """Random masking (the size k is the upload budget)."""

    rescale: bool = False  # × P/k, unbiased (E[Δ̂] = Δ), or not


class RandomMaskCodec:
    """Δ → ``floats`` of its coordinates, at positions both sides derive from ``(seed, client, draw)``."""

    def __init__(self, cfg: dict[str, Any], trainer: LocalTrainer):
        opts = dict(cfg)
        self.upload_floats = upload_budget(opts.pop("floats"), trainer, "random_mask")
        self.cfg = RandomMaskOptions(**opts)
        self.seed = trainer.seed

    def __call__(self, x0s: torch.Tensor, deltas: torch.Tensor, plans: Sequence[TrainPlan]) -> torch.Tensor:
        return torch.stack([random_mask(d, self.upload_floats, derive_seed(self.seed, "random-mask", p.cid, p.draw),
                                        self.cfg.rescale) for d, p in zip(deltas, plans)])


@dataclass
class StructuredMaskOptions:
    """Structured random mask (the size k is the upload budget)."""

    rescale: bool = False  # × P/k on the server, as for random masking (a per-budget server step size)


class StructuredMaskCodec:
    """Konečný et al. 2016's structured update, random mask: the client trains only ``floats`` coordinates, at
    positions both sides derive from ``(seed, client, draw)``, and uploads their values (nothing else moved)."""

    def __init__(self, cfg: dict[str, Any], trainer: LocalTrainer):
        opts = dict(cfg)
        self.upload_floats = upload_budget(opts.pop("floats"), trainer, "structured_mask")
        self.cfg = StructuredMaskOptions(**opts)
        self.trainer, self.seed = trainer, trainer.seed

    def keep(self, plans: Sequence[TrainPlan]) -> torch.Tensor:
        """Each client's trainable coordinates as a 0/1 mask [n, P]."""
        keep = torch.zeros(len(plans), self.trainer.space.size)
        for row, p in zip(keep, plans):
            row[mask_positions(row.numel(), self.upload_floats,
                               derive_seed(self.seed, "structured-mask", p.cid, p.draw))] = 1.0
        return keep

    def __call__(self, x0s: torch.Tensor, deltas: torch.Tensor, plans: Sequence[TrainPlan]) -> torch.Tensor:
        # the unrestricted Δ (``deltas``) is not used: the client's training itself is restricted to the mask
        d = restricted_local_sgd(self.trainer, x0s, plans, self.keep(plans))
        return d * (self.trainer.space.size / self.upload_floats) if self.cfg.rescale else d
