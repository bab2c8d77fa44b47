"""Client training: local SGD on the client's shard, one by one or many clients in one vectorised call.

A client's work is fixed by ``(seed, client id, draw)``: its shard, and a *plan* of minibatch indices
(``local_steps`` batches drawn without replacement, or ``local_epochs`` shuffled passes). Both paths
follow the same plan, so ``train_many`` (``torch.func.vmap`` over stacked parameters, with masks for
uneven shards and step counts) gives the same update Δ = x_local - x_start as ``train_one`` (a plain
``nn.Module`` + ``torch.optim.SGD`` loop).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils.rnn import pad_sequence

from runner.core.seeding import derive_seed, hash_u64
from runner.data.federated import FederatedData
from runner.federated.kernels import MLPKernel


@dataclass
class TrainPlan:
    """One client's local work: shard (x, y) and, per step, minibatch indices with a validity mask."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor  # [steps, batch] indices into the shard
    mask: torch.Tensor  # [steps, batch] 1 for real examples, 0 for padding
    cid: int = -1  # the client and its draw (participation), which seed an update codec's randomness
    draw: int = -1

    @property
    def examples(self) -> int:
        """Examples processed (the client's compute work)."""
        return int(self.mask.sum())


@dataclass
class BatchPlan:
    """Many clients' local work at once (``dataset.sampler=hash``): minibatches as indices into the example pool.

    Client i runs ``steps[i]`` steps; step s uses pool rows ``idx[i, s]`` where ``mask[i, s]`` is 1.
    """

    cids: np.ndarray
    draws: np.ndarray
    idx: torch.Tensor  # [n, steps, width] pool indices (0 where masked)
    mask: torch.Tensor  # [n, steps, width]
    steps: np.ndarray  # [n]

    def plans(self, xs: torch.Tensor, ys: torch.Tensor) -> list[TrainPlan]:
        """The same work as per-client :class:`TrainPlan` s (the shard holds each step's rows in order)."""
        out = []
        for i, (cid, draw, k) in enumerate(zip(self.cids.tolist(), self.draws.tolist(), self.steps.tolist())):
            rows, width = self.idx[i, :k], self.idx.shape[2]
            local = torch.arange(k * width).reshape(k, width)
            out.append(TrainPlan(xs[rows.reshape(-1)], ys[rows.reshape(-1)], local, self.mask[i, :k].clone(),
                                 cid, draw))
        return out


def _shuffle_within(row: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The order that sorts each client's contiguous block of ``row`` by its 40-bit hash ``keys`` (one stable
    integer sort; equal keys keep slot order, so a client's order does not depend on its batch)."""
    return np.argsort((row.astype(np.uint64) << np.uint64(40)) | (keys >> np.uint64(24)), kind="stable")


def _pad2(t: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Zero-pad a 2-D tensor to [rows, cols] (no copy when it already fits)."""
    if t.shape == (rows, cols):
        return t
    return F.pad(t, (0, cols - t.shape[1], 0, rows - t.shape[0]))


class ParamSpace:
    """Flat-vector view of a module's parameters (the simulator keeps models as 1-D float32 tensors)."""

    def __init__(self, model: nn.Module):
        self.names = [n for n, _ in model.named_parameters()]
        self.shapes = [p.shape for _, p in model.named_parameters()]
        self.numels = [p.numel() for _, p in model.named_parameters()]
        self.size = sum(self.numels)

    def flatten(self, model: nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``flat`` of shape [..., P] → {name: [..., *shape]} (views)."""
        lead = flat.shape[:-1]
        out, o = {}, 0
        for name, shape, n in zip(self.names, self.shapes, self.numels):
            out[name] = flat[..., o:o + n].reshape(*lead, *shape)
            o += n
        return out


class UpdateCodec(Protocol):
    """What a client uploads in place of its update Δ (FedSynth's synthetic set, a random mask; see
    :mod:`runner.federated.fedsynth`): ``upload_floats`` numbers, from which the server reconstructs Δ̂.
    Called on a batch of clients: start models [n, P], updates Δ [n, P], their plans → Δ̂ [n, P]."""

    upload_floats: int

    def __call__(self, x0s: torch.Tensor, deltas: torch.Tensor, plans: Sequence[TrainPlan]) -> torch.Tensor: ...


def make_codec(cfg: Any, trainer: LocalTrainer) -> UpdateCodec | None:
    """The codec ``cfg`` names (``{name: fedsynth | random_mask, ...its options}``, registry kind
    ``fl_codec``); None (or ``name: none``): clients upload their full update."""
    if cfg is None or cfg.get("name", "none") == "none":
        return None
    from runner.core import registry

    opts = OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    return registry.get("fl_codec", opts.pop("name"))(opts, trainer)


class LocalTrainer:
    """Local SGD for a population: plans, the one-by-one reference and the vectorised path."""

    def __init__(self, model: nn.Module, data: FederatedData, cfg: Any, seed: int):
        self.model, self.data, self.cfg, self.seed = model, data, cfg, seed
        self.space = ParamSpace(model)
        self.batch_size, self.local_steps = int(cfg.batch_size), int(cfg.local_steps)
        self.local_epochs, self.lr = (int(cfg.local_epochs) if cfg.local_epochs else None), float(cfg.lr)
        self._grad = vmap(grad(self._loss), in_dims=(0, 0, 0, 0))
        self.codec = make_codec(cfg.get("codec"), self)
        self.batched = getattr(data, "sampler", "rng") == "hash"  # shards and plans derived a batch at a time
        self.kernel = MLPKernel(model) if MLPKernel.supports(model) else None

    @property
    def upload_floats(self) -> int:
        """Floats one client uploads: its codec's size, or the whole update."""
        return self.codec.upload_floats if self.codec is not None else self.space.size

    # ------------------------------------------------------------------ the client's plan
    def examples(self, cids: np.ndarray) -> np.ndarray:
        """Examples each client of ``cids`` processes in one participation (its compute work), from its shard
        size alone (``dataset.sampler=hash``; no shard is built)."""
        sizes = self.data.shard_sizes(np.asarray(cids, np.int64))
        if self.local_epochs:
            return self.local_epochs * sizes
        return self.local_steps * np.minimum(sizes, self.batch_size)

    def plan_many(self, cids: np.ndarray, draws: np.ndarray) -> BatchPlan:
        """Plans of many participations at once (``dataset.sampler=hash``): each epoch is a permutation of the
        shard by hashed keys of (client, draw, epoch, slot); in ``local_steps`` mode each step takes the
        ``min(batch, n)`` examples with the smallest keys of (client, draw, step, slot). Vectorised over clients."""
        cids, draws = np.asarray(cids, np.int64), np.asarray(draws, np.int64)
        pool, sizes = self.data.client_indices_many(cids)
        n, b = len(cids), self.batch_size
        row = np.repeat(np.arange(n), sizes)
        slot = np.arange(len(row)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        if self.local_epochs:
            per_epoch = -(-sizes // b)
            steps = self.local_epochs * per_epoch
            width = int(min(b, sizes.max(initial=1)))
            idx = np.zeros((n, int(steps.max(initial=0)), width), np.int64)
            mask = np.zeros(idx.shape, np.float32)
            for e in range(self.local_epochs):
                keys = hash_u64(self.seed, "local-sgd", cids[row], draws[row], e, slot)
                perm = pool[_shuffle_within(row, keys)]  # each client's rows stay contiguous, shuffled within
                step = e * per_epoch[row] + slot // b
                idx[row, step, slot % b] = perm
                mask[row, step, slot % b] = 1.0
        else:
            steps = np.full(n, self.local_steps)
            width = int(min(b, sizes.max(initial=1)))
            idx = np.zeros((n, self.local_steps, width), np.int64)
            mask = np.zeros(idx.shape, np.float32)
            take = slot < b
            for s in range(self.local_steps):
                keys = hash_u64(self.seed, "local-sgd", cids[row], draws[row], s, slot)
                perm = pool[_shuffle_within(row, keys)]
                idx[row[take], s, slot[take]] = perm[take]
                mask[row[take], s, slot[take]] = 1.0
        return BatchPlan(cids, draws, torch.from_numpy(idx), torch.from_numpy(mask), steps)

    def plan(self, cid: int, draw: int) -> TrainPlan:
        """Minibatches of client ``cid``'s ``draw``-th participation, from ``derive_seed(seed, cid, draw)``
        (``dataset.sampler=hash``: the client's row of :meth:`plan_many`)."""
        if self.batched:
            return self.plan_many(np.array([cid]), np.array([draw])).plans(self.data.x, self.data.y)[0]
        x, y = self.data.client_shard(cid)
        n, b = len(y), self.batch_size
        rng = np.random.default_rng(derive_seed(self.seed, "local-sgd", cid, draw))
        if self.local_epochs:
            batches = []
            for _ in range(self.local_epochs):
                perm = rng.permutation(n)
                batches += [perm[i:i + b] for i in range(0, n, b)]
            width = max(len(bt) for bt in batches)
            idx = np.zeros((len(batches), width), np.int64)
            mask = np.zeros((len(batches), width), np.float32)
            for s, bt in enumerate(batches):
                idx[s, :len(bt)] = bt
                mask[s, :len(bt)] = 1.0
        else:  # each step: min(b, n) distinct examples (the first columns of a random permutation per step)
            idx = np.argsort(rng.random((self.local_steps, n)), axis=1)[:, :b].astype(np.int64)
            mask = np.ones(idx.shape, np.float32)
        return TrainPlan(x, y, torch.from_numpy(idx), torch.from_numpy(mask), cid, draw)

    # ------------------------------------------------------------------ one by one (reference)
    def train_one(self, x0: torch.Tensor, plan: TrainPlan) -> torch.Tensor:
        """Δ of one client: SGD with ``torch.optim.SGD`` on a copy of the model, following ``plan``."""
        model = copy.deepcopy(self.model)
        torch.nn.utils.vector_to_parameters(x0.clone(), model.parameters())
        opt = torch.optim.SGD(model.parameters(), lr=self.lr)
        for idx, mask in zip(plan.idx, plan.mask):
            rows = idx[mask.bool()]
            loss = F.cross_entropy(model(plan.x[rows]), plan.y[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return self.space.flatten(model) - x0

    # ------------------------------------------------------------------ vectorised
    def _loss(self, params: dict[str, torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, mb: torch.Tensor):
        logits = functional_call(self.model, params, (xb,))
        ce = F.cross_entropy(logits, yb, reduction="none")
        return (ce * mb).sum() / mb.sum().clamp_min(1.0)

    def train_many(self, x0s: torch.Tensor, plans: Sequence[TrainPlan]) -> torch.Tensor:
        """Δ of ``len(plans)`` clients at once: vmapped per-client gradients on stacked parameters [n, P]."""
        n = len(plans)
        xs = pad_sequence([p.x for p in plans], batch_first=True)  # [n, rows, *input]
        ys = pad_sequence([p.y for p in plans], batch_first=True)
        steps = max(p.idx.shape[0] for p in plans)
        width = max(p.idx.shape[1] for p in plans)
        idx = torch.stack([_pad2(p.idx, steps, width) for p in plans])  # [n, steps, width]
        mask = torch.stack([_pad2(p.mask, steps, width) for p in plans])
        ar = torch.arange(n)[:, None]
        flat = x0s.clone()
        lr = self.lr
        for s in range(steps):
            ix = idx[:, s]
            g = self._grad(self.space.unflatten(flat), xs[ar, ix], ys[ar, ix], mask[:, s])
            flat = flat - lr * torch.cat([g[name].reshape(n, -1) for name in self.space.names], dim=1)
        return flat - x0s

    def train(self, x0s: torch.Tensor, plans: Sequence[TrainPlan]) -> torch.Tensor:
        """Δ for each plan, vectorised in chunks of ``max_batch`` if ``cfg.vectorize`` else one by one; with a
        codec, the Δ̂ the server reconstructs from each client's upload."""
        if not self.cfg.vectorize:
            deltas = torch.stack([self.train_one(x0, p) for x0, p in zip(x0s, plans)])
        else:
            m = self.cfg.max_batch
            deltas = torch.cat([self.train_many(x0s[i:i + m], plans[i:i + m]) for i in range(0, len(plans), m)])
        return deltas if self.codec is None else self.codec(x0s, deltas, plans)

    def train_clients(self, x0s: torch.Tensor, cids: Sequence[int], draws: Sequence[int],
                      plans: Sequence[TrainPlan | None] | None = None) -> torch.Tensor:
        """Δ (or the codec's Δ̂) of participations (cid, draw) from start parameters x0s [n, P]. With
        ``dataset.sampler=hash`` the plans are derived for the whole batch at once, and an MLP trains with the
        batched closed-form kernel (:mod:`runner.federated.kernels`); otherwise per-client plans."""
        if plans is not None and all(p is not None for p in plans):
            return self.train(x0s, list(plans))
        if not self.batched:
            return self.train(x0s, [self.plan(c, d) for c, d in zip(cids, draws)])
        bp = self.plan_many(np.asarray(cids), np.asarray(draws))
        if self.kernel is None or not self.cfg.vectorize:
            return self.train(x0s, bp.plans(self.data.x, self.data.y))
        m = self.cfg.max_batch
        parts = [self.kernel.train(x0s[i:i + m], self.data.x, self.data.y, bp.idx[i:i + m], bp.mask[i:i + m],
                                   bp.steps[i:i + m], self.lr) for i in range(0, len(bp.steps), m)]
        deltas = parts[0] if len(parts) == 1 else torch.cat(parts)
        return deltas if self.codec is None else self.codec(x0s, deltas, bp.plans(self.data.x, self.data.y))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, flat: torch.Tensor, x: torch.Tensor, y: torch.Tensor, batch: int = 1024) -> dict[str, float]:
        """Accuracy and mean cross-entropy of the global model ``flat`` on (x, y)."""
        params = self.space.unflatten(flat)
        correct, loss = 0, 0.0
        for i in range(0, len(y), batch):
            logits = functional_call(self.model, params, (x[i:i + batch],))
            loss += F.cross_entropy(logits, y[i:i + batch], reduction="sum").item()
            correct += int((logits.argmax(-1) == y[i:i + batch]).sum())
        return {"accuracy": correct / len(y), "loss": loss / len(y)}
