"""Execution backends for client training: this process (``local``) or a Ray cluster (``ray``, the ``dist`` extra).

Both cut the jobs into the same chunks of ``clients_per_task`` clients and run the same
:meth:`LocalTrainer.train_clients` on each chunk, so one seed gives the same updates on either backend. A Ray
worker rebuilds the dataset, model and trainer from a picklable :class:`TrainerSpec` once, and then
derives each client's shard and minibatches from ``(seed, client id, draw)``; only ids and the distinct start
models of a chunk travel to it.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from omegaconf import OmegaConf

from runner.core.errors import require
from runner.federated.client import LocalTrainer, TrainPlan

INLINE_BYTES = 100 * 1024  # Ray's max_direct_call_object_size: smaller arguments travel inside the task


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

    Chunks are submitted asynchronously with at most ``in_flight`` tasks per actor not yet collected; as each
    finishes (``ray.wait``) its actor gets the next chunk, so fast and slow chunks balance out. Tasks carry ids
    and each distinct start model once: by value when Ray inlines it (under ``INLINE_BYTES``), else as a
    reference ``ray.put`` once per model version (the last 8 are cached). When every actor runs on this node,
    actors write their rows of Δ straight into a new shared-memory file per call (:func:`_shared_rows`)
    instead of returning them through the object store, whose serialisation (and the driver's copy) cost
    about as much as training a chunk of small clients; on other nodes Δ travels as a returned array. Each
    actor reports the wall and CPU seconds spent inside its tasks: :meth:`utilisation_per_actor` is busy time
    / wall time of :meth:`train` (first submission to last result), :meth:`cores_used` the cores they got.
    ``address`` joins an existing cluster (``ray start --head`` elsewhere); null starts a local Ray.
    """

    def __init__(self, spec: TrainerSpec, clients_per_task: int, num_workers: int, address: str | None = None,
                 in_flight: int = 2, shared_memory: bool = True):
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
        here = ray.get_runtime_context().get_node_id()
        same_node = all(n == here for n in ray.get([a.node.remote() for a in self.actors]))
        self.shared = shared_memory and same_node  # actors write Δ into a file in /dev/shm
        if self.shared and os.path.isdir("/dev/shm"):
            _remove_orphaned_rows()
        self._refs: OrderedDict[int, tuple[torch.Tensor, Any]] = OrderedDict()  # id(start model) -> (it, its ref)
        self.reset_stats()

    def reset_stats(self) -> None:
        self.busy = [0.0] * len(self.actors)
        self.cpu = [0.0] * len(self.actors)  # CPU seconds the actors' processes got during their tasks
        self.wall = 0.0
        self.tasks = [0] * len(self.actors)

    def utilisation_per_actor(self) -> list[float]:
        """Each actor's seconds inside its tasks / wall seconds of the :meth:`train` calls since :meth:`reset_stats`."""
        return [b / self.wall if self.wall > 0 else 0.0 for b in self.busy]

    def utilisation(self) -> float:
        """The actors' mean :meth:`utilisation_per_actor`."""
        per = self.utilisation_per_actor()
        return sum(per) / len(per) if per else 0.0

    def cores_used(self) -> float:
        """CPU seconds of all actors during their tasks / wall seconds of :meth:`train`: the cores the actors
        actually got (below the number of actors when other processes share the machine's cores)."""
        return sum(self.cpu) / self.wall if self.wall > 0 else 0.0

    def _ref(self, x0: torch.Tensor) -> Any:
        """A start model as tasks carry it: put into the object store once (the last 8 models stay cached), or
        by value if it is small enough for Ray to inline in the task (then no actor fetches it from the store)."""
        key = id(x0)
        if key not in self._refs:
            arr = x0.detach().contiguous().numpy()
            ref = arr if arr.nbytes <= INLINE_BYTES else self.ray.put(arr)
            self._refs[key] = (x0, ref)  # the tensor pins the id
            while len(self._refs) > 8:
                self._refs.popitem(last=False)
        return self._refs[key][1]

    def train(self, jobs: Sequence[TrainJob]) -> torch.Tensor:
        if not jobs:
            return torch.empty(0, 0)
        shape = (len(jobs), jobs[0].x0.numel())
        shared = _shared_rows(shape) if self.shared else None
        path, rows = shared if shared is not None else (None, np.empty(shape, np.float32))
        todo = deque()
        for k, c in enumerate(chunks(jobs, self.size)):
            ids, bases = _payload(c)
            todo.append((k * self.size, len(c), ids, [self._ref(b) for b in bases]))
        pending: dict[Any, tuple[int, int, int]] = {}  # object ref -> (first row, rows, actor)
        queued = [0] * len(self.actors)
        t0 = time.perf_counter()

        def submit(a: int) -> None:
            off, n, ids, refs = todo.popleft()
            pending[self.actors[a].train.remote(ids, path and (path, shape, off), *refs)] = (off, n, a)
            queued[a] += 1

        try:
            for _ in range(self.in_flight):
                for a in range(len(self.actors)):
                    if todo:
                        submit(a)
            while pending:
                done, _ = self.ray.wait(list(pending), num_returns=1)
                for ref in done:
                    off, n, a = pending.pop(ref)
                    delta, busy, cpu = self.ray.get(ref)
                    self.busy[a] += busy
                    self.cpu[a] += cpu
                    self.tasks[a] += 1
                    queued[a] -= 1
                    while todo and queued[a] < self.in_flight:
                        submit(a)
                    if delta is not None:  # returned through the object store
                        rows[off:off + n] = delta
        finally:
            if path is not None:
                os.unlink(path)  # the mappings (ours, the returned tensor's) keep the memory while they live
        self.wall += time.perf_counter() - t0
        return torch.from_numpy(rows)

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
        self._refs.clear()
        if self._owns_ray:
            self.ray.shutdown()


def _shared_rows(shape: tuple[int, int]) -> tuple[str, np.ndarray] | None:
    """A new float32 array in a shared-memory file (``/dev/shm``) that actors on this node write rows of Δ into,
    or None when ``/dev/shm`` is missing or has less than twice its size free (containers often give it 64 MB;
    writing past a full tmpfs is a SIGBUS), and Δ goes through the object store instead.

    A new file per call: no copy out (the returned tensor maps it, and lives on as the simulator's deltas),
    and no page is written by two processes."""
    folder = "/dev/shm"
    if not os.path.isdir(folder) or shutil.disk_usage(folder).free < 2 * 4 * shape[0] * shape[1]:
        return None
    fd, path = tempfile.mkstemp(prefix=f"runner-fl-{os.getpid()}-", suffix=".f32", dir=folder)
    os.close(fd)
    return path, np.memmap(path, np.float32, "w+", shape=shape)


def _remove_orphaned_rows(folder: str = "/dev/shm") -> list[str]:
    """Delete the shared-memory files of drivers that died inside a call (``kill -9`` skips the ``finally`` that
    unlinks them): each file names its driver's pid. Returns the paths removed."""
    removed = []
    for path in glob.glob(os.path.join(folder, "runner-fl-*-*.f32")):
        pid = os.path.basename(path).split("-")[2]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        with contextlib.suppress(FileNotFoundError):  # another driver may be cleaning up too
            os.unlink(path)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _payload(jobs: Sequence[TrainJob]) -> tuple[np.ndarray, list[torch.Tensor]]:
    """A chunk as it travels to an actor: an int64 array [3, n] of ids, draws and the index of each job's start
    model, and each distinct start model once (clients that started from the same global model share it)."""
    where: dict[int, int] = {}
    bases: list[torch.Tensor] = []
    for j in jobs:
        if id(j.x0) not in where:
            where[id(j.x0)] = len(bases)
            bases.append(j.x0)
    ids = np.array([[j.cid for j in jobs], [j.draw for j in jobs], [where[id(j.x0)] for j in jobs]], np.int64)
    return ids, bases


class _TrainerActor:
    def __init__(self, spec: TrainerSpec):
        torch.set_num_threads(spec.threads)
        self.trainer = build_trainer(spec)
        self._rows: tuple[str, np.ndarray] | None = None  # the driver's shared-memory file, mapped

    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def train(self, ids: np.ndarray, target: tuple[str, tuple[int, int], int] | None,
              *bases: np.ndarray) -> tuple[np.ndarray | None, float, float]:
        """Δ of one chunk (see :func:`_payload`; ``bases`` arrive by value or from the object store), and the
        wall and CPU seconds spent on it. With a ``target`` (shared file, its shape, first row) Δ is written
        there and None returned."""
        t0, c0 = time.perf_counter(), time.process_time()
        starts = torch.from_numpy(np.stack(bases)[ids[2]])
        out = self.trainer.train_clients(starts, ids[0].tolist(), ids[1].tolist()).numpy()
        if target is not None:
            path, shape, off = target
            if self._rows is None or self._rows[0] != path:  # a new call's file (the old mapping is released)
                self._rows = path, np.memmap(path, np.float32, "r+", shape=shape)
            self._rows[1][off:off + len(out)] = out
            out = None
        return out, time.perf_counter() - t0, time.process_time() - c0


def make_backend(cfg: Any, trainer: LocalTrainer, spec: TrainerSpec) -> Backend:
    """The backend ``cfg`` (a :class:`BackendConfig`) names, looked up in the registry (kind ``fl_backend``)."""
    from runner.core import registry

    cls = registry.get("fl_backend", cfg.name)
    if cfg.name == "ray":
        return cls(spec, cfg.clients_per_task, cfg.num_workers, cfg.address, cfg.get("in_flight", 2))
    return cls(trainer, cfg.clients_per_task)
