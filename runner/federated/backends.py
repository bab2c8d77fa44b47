"""Execution backends for client training: this process (``local``) or a Ray cluster (``ray``, the ``dist`` extra).

Both cut the jobs into the same chunks of ``clients_per_task`` clients and run the same
:meth:`LocalTrainer.train` on each chunk, so one seed gives the same updates on either backend. A Ray
worker rebuilds the dataset, model and trainer from a picklable :class:`TrainerSpec` once, and then
derives each client's shard and minibatches from ``(seed, client id, draw)``; only the start parameters
travel with a job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from omegaconf import OmegaConf

from runner.core.errors import require
from runner.federated.client import LocalTrainer, TrainPlan


@dataclass
class TrainJob:
    """Train client ``cid`` (its ``draw``-th participation) from start parameters ``x0``."""

    cid: int
    draw: int
    x0: torch.Tensor
    plan: TrainPlan | None = None  # kept by the local backend; remote workers re-derive it


@dataclass
class TrainerSpec:
    """Everything a worker needs to rebuild the trainer: plain config dicts and the seed."""

    dataset: dict[str, Any]
    model: dict[str, Any]
    client: dict[str, Any]
    seed: int
    threads: int = 1


def build_trainer(spec: TrainerSpec) -> LocalTrainer:
    """Dataset, model (initialised from the seed) and trainer that ``spec`` describes."""
    from runner.data.federated import build_federated_data
    from runner.federated.models import build_fl_model

    data = build_federated_data(OmegaConf.create(spec.dataset), spec.seed)
    vocab = getattr(data, "vocab_size", None) or _vocab(spec.dataset)
    torch.manual_seed(spec.seed)
    model = build_fl_model(OmegaConf.create(spec.model), data.input_shape, data.num_classes, vocab)
    return LocalTrainer(model, data, OmegaConf.create(spec.client), spec.seed)


def _vocab(dataset: dict[str, Any]) -> int | None:
    from runner.data.federated import LEAF_LETTERS

    return {"sent140": dataset.get("vocab_size"), "shakespeare": len(LEAF_LETTERS)}.get(dataset.get("kind"))


def run_chunk(trainer: LocalTrainer, jobs: Sequence[TrainJob]) -> torch.Tensor:
    """Δ of one chunk of jobs, stacked [len(jobs), P]."""
    plans = [j.plan if j.plan is not None else trainer.plan(j.cid, j.draw) for j in jobs]
    return trainer.train(torch.stack([j.x0 for j in jobs]), plans)


def chunks(jobs: Sequence[TrainJob], size: int) -> list[Sequence[TrainJob]]:
    return [jobs[i:i + size] for i in range(0, len(jobs), size)]


class Backend(Protocol):
    def train(self, jobs: Sequence[TrainJob]) -> torch.Tensor: ...

    def close(self) -> None: ...


class LocalBackend:
    """Client training in this process."""

    def __init__(self, trainer: LocalTrainer, clients_per_task: int):
        self.trainer, self.size = trainer, clients_per_task

    def train(self, jobs: Sequence[TrainJob]) -> torch.Tensor:
        return torch.cat([run_chunk(self.trainer, c) for c in chunks(jobs, self.size)])

    def close(self) -> None:
        pass


class RayBackend:
    """Client training on Ray actors, one trainer per actor; chunks are spread round-robin."""

    def __init__(self, spec: TrainerSpec, clients_per_task: int, num_workers: int, address: str | None = None):
        ray = require("ray", "dist", "the ray federated backend")
        self.ray, self.size = ray, clients_per_task
        if not ray.is_initialized():
            kw: dict[str, Any] = {"address": address} if address else {"num_cpus": num_workers}
            ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, **kw)
            self._owns_ray = True
        else:
            self._owns_ray = False
        actor = ray.remote(num_cpus=1)(_TrainerActor)
        self.actors = [actor.remote(spec) for _ in range(num_workers)]

    def train(self, jobs: Sequence[TrainJob]) -> torch.Tensor:
        stripped = [TrainJob(j.cid, j.draw, j.x0) for j in jobs]
        futures = [self.actors[i % len(self.actors)].train.remote(c)
                   for i, c in enumerate(chunks(stripped, self.size))]
        return torch.cat(self.ray.get(futures))

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
        if self._owns_ray:
            self.ray.shutdown()


class _TrainerActor:
    def __init__(self, spec: TrainerSpec):
        torch.set_num_threads(spec.threads)
        self.trainer = build_trainer(spec)

    def train(self, jobs: Sequence[TrainJob]) -> torch.Tensor:
        return run_chunk(self.trainer, jobs)


def make_backend(cfg: Any, trainer: LocalTrainer, spec: TrainerSpec) -> Backend:
    """The backend ``cfg`` (a :class:`BackendConfig`) names, looked up in the registry (kind ``fl_backend``)."""
    from runner.core import registry

    cls = registry.get("fl_backend", cfg.name)
    if cfg.name == "ray":
        return cls(spec, cfg.clients_per_task, cfg.num_workers, cfg.address)
    return cls(trainer, cfg.clients_per_task)
