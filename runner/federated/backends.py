"""Execution backends for client training: this process (``local``) or a Ray cluster (``ray``, the ``dist`` extra).

Both cut the jobs into the same chunks of ``clients_per_task`` clients and run the same
:meth:`LocalTrainer.train_clients` on each chunk, so one seed gives the same updates on either backend. A Ray
worker rebuilds the dataset, model and trainer from a picklable :class:`TrainerSpec` once, and then
derives each client's shard and minibatches from ``(seed, client id, draw)``; only ids and the distinct start
models of a chunk travel to it.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
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
    """Δ of one chunk of jobs, stacked [len(jobs), P] (plans the jobs lack are derived, a batch at a time)."""
    first = jobs[0].x0
    same = all(j.x0 is first for j in jobs)  # one global model version: no copy per client
    x0s = first.expand(len(jobs), -1) if same else torch.stack([j.x0 for j in jobs])
    return trainer.train_clients(x0s, [j.cid for j in jobs], [j.draw for j in jobs], [j.plan for j in jobs])


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
        parts = [run_chunk(self.trainer, c) for c in chunks(jobs, self.size)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def close(self) -> None:
        pass


class RayBackend:
    """Client training on Ray actors, one trainer per actor, every actor kept busy.

    Chunks are submitted asynchronously with at most ``in_flight`` tasks queued per actor; as each finishes
    (``ray.wait``) its actor gets the next chunk, so fast and slow chunks balance out. Each actor reports its
    busy seconds, and :meth:`utilisation` is busy time / (actors × wall time of :meth:`train`).
    ``address`` joins an existing cluster (``ray start --head`` elsewhere); null starts a local Ray.
    """

    def __init__(self, spec: TrainerSpec, clients_per_task: int, num_workers: int, address: str | None = None,
                 in_flight: int = 2):
        ray = require("ray", "dist", "the ray federated backend")
        self.ray, self.size, self.in_flight = ray, clients_per_task, max(1, in_flight)
        if not ray.is_initialized():
            kw: dict[str, Any] = {"address": address} if address else {"num_cpus": num_workers}
            ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, **kw)
            self._owns_ray = True
        else:
            self._owns_ray = False
        actor = ray.remote(num_cpus=1)(_TrainerActor)
        self.actors = [actor.remote(spec) for _ in range(num_workers)]
        self.reset_stats()

    def reset_stats(self) -> None:
        self.busy = [0.0] * len(self.actors)
        self.wall = 0.0
        self.tasks = [0] * len(self.actors)

    def utilisation(self) -> float:
        """Fraction of the actors' time spent training during :meth:`train` calls since :meth:`reset_stats`."""
        return sum(self.busy) / (len(self.actors) * self.wall) if self.wall > 0 else 0.0

    def train(self, jobs: Sequence[TrainJob]) -> torch.Tensor:
        todo = deque(enumerate(_payload(c) for c in chunks(jobs, self.size)))
        results: list[np.ndarray] = [np.empty(0)] * len(todo)
        pending: dict[Any, tuple[int, int]] = {}  # object ref -> (chunk, actor)
        queued = [0] * len(self.actors)
        t0 = time.perf_counter()

        def submit(a: int) -> None:
            i, chunk = todo.popleft()
            pending[self.actors[a].train.remote(chunk)] = (i, a)
            queued[a] += 1

        for _ in range(self.in_flight):
            for a in range(len(self.actors)):
                if todo:
                    submit(a)
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            for ref in done:
                i, a = pending.pop(ref)
                results[i], busy = self.ray.get(ref)  # a numpy array read in place from Ray's object store
                self.busy[a] += busy
                self.tasks[a] += 1
                queued[a] -= 1
                while todo and queued[a] < self.in_flight:
                    submit(a)
        self.wall += time.perf_counter() - t0
        return torch.from_numpy(np.concatenate(results))

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
        if self._owns_ray:
            self.ray.shutdown()


def _payload(jobs: Sequence[TrainJob]) -> tuple[list[int], list[int], list[int], torch.Tensor]:
    """A chunk as it travels to an actor: ids, draws, and each distinct start model once (clients that started
    from the same global model version share it) with an index per job."""
    where: dict[int, int] = {}
    bases: list[torch.Tensor] = []
    for j in jobs:
        if id(j.x0) not in where:
            where[id(j.x0)] = len(bases)
            bases.append(j.x0)
    return [j.cid for j in jobs], [j.draw for j in jobs], [where[id(j.x0)] for j in jobs], torch.stack(bases)


class _TrainerActor:
    def __init__(self, spec: TrainerSpec):
        torch.set_num_threads(spec.threads)
        self.trainer = build_trainer(spec)

    def train(self, payload: tuple[list[int], list[int], list[int], torch.Tensor]) -> tuple[np.ndarray, float]:
        """Δ of one chunk (see :func:`_payload`; numpy travels without a copy) and the seconds spent on it."""
        t0 = time.perf_counter()
        cids, draws, which, bases = payload
        out = self.trainer.train_clients(bases[torch.tensor(which)], cids, draws)
        return out.numpy(), time.perf_counter() - t0


def make_backend(cfg: Any, trainer: LocalTrainer, spec: TrainerSpec) -> Backend:
    """The backend ``cfg`` (a :class:`BackendConfig`) names, looked up in the registry (kind ``fl_backend``)."""
    from runner.core import registry

    cls = registry.get("fl_backend", cfg.name)
    if cfg.name == "ray":
        return cls(spec, cfg.clients_per_task, cfg.num_workers, cfg.address)
    return cls(trainer, cfg.clients_per_task)
