"""Event-driven federated simulator on a virtual clock.

The clock jumps from event to event (a client finishes, drops out, or a server timer fires); a heap of
``(time, seq, kind, payload)`` orders them. A server mode (:mod:`runner.federated.aggregators`) decides
whom to start and what to do with each report; the simulator owns the clock, the global model, client
dispatch, validation of updates, counters and evaluation.

Evaluation does not depend on how often a mode steps: with ``eval_interval: null`` every model version the
server produces is evaluated at the simulated time it is installed (so time to target is the time of the
first server step whose model reaches it); with ``eval_interval: s`` the model in place at each point of
the grid 0, s, 2s, ... (the same grid for every mode) is evaluated, for test sets too large to score per step.

``state_dict`` / ``load_state_dict`` capture the whole simulation (clock, heap, in-flight clients with
their computed updates, RNG, counters, history and the server mode), so a stage resumed from an
in-simulation checkpoint (taken every ``checkpoint_every`` server steps) continues bit for bit.

Client training is lazy and batched: a client's update is computed when its report arrives, together
with the other in-flight clients that will report (up to ``client.max_batch``), in one vectorised call.
The result does not depend on the batching: a client's update depends only on its start parameters and
``(seed, client id, task id)``. Clients that drop out or are cancelled as stragglers are never trained.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from runner.core.seeding import derive_seed
from runner.federated.backends import Backend, TrainJob
from runner.federated.client import LocalTrainer, TrainPlan
from runner.federated.population import CheckInStream, Population

FINISH, DROP, TIMER = 0, 1, 2


@dataclass(eq=False, slots=True)
class Task:
    """One client participation: drawn at ``start`` from global model version ``version``."""

    id: int
    cid: int
    start: float
    finish: float
    version: int
    base: torch.Tensor  # the global model the client downloaded (shared by all clients of one version)
    examples: int
    compute: float  # seconds of on-device compute in ``finish - start``
    drop_at: float | None
    plan: TrainPlan | None = None
    delta: torch.Tensor | None = None
    round: int = 0
    cancelled: bool = False
    download: float = 0.0  # seconds of download before compute starts
    check: int = 0  # the update's validation: 0 valid, 1 non-finite, 2 norm above the limit

    def compute_done(self, t: float) -> float:
        """Compute-seconds spent by time ``t`` (download → compute → upload)."""
        return min(self.compute, max(0.0, t - self.start - self.download))


class Server(Protocol):
    """A server mode: starts clients, and reacts to reports, failures and timers."""

    def start(self, sim: Simulator) -> None: ...

    def on_update(self, sim: Simulator, task: Task, delta: torch.Tensor) -> None: ...

    def on_failure(self, sim: Simulator, task: Task) -> None: ...

    def on_timer(self, sim: Simulator, tag: Any) -> None: ...

    def trainable(self, task: Task) -> bool: ...


@dataclass
class Counters:
    client_starts: int = 0
    client_updates: int = 0  # uploads that reached the server (applied, stale-discarded or rejected)
    applied: int = 0
    dropouts: int = 0
    stragglers_cancelled: int = 0
    discarded_stale: int = 0
    rejected_nonfinite: int = 0
    rejected_norm: int = 0
    server_steps: int = 0
    server_nonfinite_skipped: int = 0
    bytes_down: float = 0.0
    bytes_up: float = 0.0
    bytes_secagg: float = 0.0  # secure aggregation's protocol bytes beyond the plain download and upload
    compute_total: float = 0.0
    compute_wasted: float = 0.0
    concurrency_area: float = 0.0
    staleness_sum: float = 0.0
    staleness_max: int = 0

    @property
    def bytes(self) -> float:
        return self.bytes_down + self.bytes_up + self.bytes_secagg


@dataclass
class EvalPoint:
    time: float
    client_updates: int
    bytes: float
    server_steps: int
    accuracy: float
    loss: float


@dataclass
class SimulationResult:
    counters: Counters
    history: list[EvalPoint] = field(default_factory=list)
    end_time: float = 0.0
    final_model: torch.Tensor | None = None


class Simulator:
    """The clock, the global model x and its version, in-flight clients and the bookkeeping."""

    def __init__(self, x0: torch.Tensor, trainer: LocalTrainer, backend: Backend, population: Population, cfg: Any,
                 seed: int, evaluate: Callable[[torch.Tensor], dict[str, float]],
                 log: Callable[[dict[str, float], int], None] | None = None):
        self.x, self.version, self.t = x0.clone(), 0, 0.0
        self.trainer, self.backend, self.population, self.cfg, self.seed = trainer, backend, population, cfg, seed
        self.model_bytes = 4.0 * x0.numel()
        self.upload_bytes = 4.0 * trainer.upload_floats  # the full update, or what its update codec uploads
        self.in_flight: dict[int, Task] = {}
        self.busy: dict[int, int] = {}  # client id -> tasks in flight (a device trains one task at a time)
        self.c = Counters()
        self.history: list[EvalPoint] = []
        self._evaluate, self._log = evaluate, log
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0  # heap tie-breaker: events at equal times pop in push order
        self._next_task = 0
        self._select_rng = np.random.default_rng(derive_seed(seed, "select"))
        # hashed population and batched trainer: check-ins and their profiles come a block at a time
        self._stream = (CheckInStream(population, derive_seed(seed, "select"), trainer.examples)
                        if population.hashed and getattr(trainer, "batched", False) else None)
        self._grid_k = 0  # next point of the evaluation grid (eval_interval set): t = k * eval_interval
        self._next_checkpoint = 0  # server steps at which the next in-simulation checkpoint is due
        self.reached_target = False
        self.halted: str | None = None  # why the server stopped training early (e.g. its privacy budget is spent)
        # config read on every event, as plain values (OmegaConf attribute access costs microseconds)
        f = cfg.faults
        self._max_batch, self._max_norm = int(cfg.client.max_batch), float(f.max_update_norm)
        self._fault_rates = (float(f.nan_rate), float(f.blowup_rate))
        self._max_updates, self._stop_at_target = int(cfg.max_client_updates), bool(cfg.stop_at_target)
        self._eval_interval, self._max_sim_time = cfg.eval_interval, cfg.max_sim_time
        self._dropout_rate = float(population.clock.dropout_rate)

    # ------------------------------------------------------------------ clients
    def dispatch(self, round: int = 0, extra_bytes: float = 0.0, extra_seconds: float = 0.0) -> Task:
        """A device checks in, downloads x (version v) and starts local training.

        ``extra_bytes`` / ``extra_seconds``: what secure aggregation adds to the task (its cost model: protocol
        messages, and latency per extra round, charged as the bytes the device's link moves in that time).
        """
        tid, self._next_task = self._next_task, self._next_task + 1
        down, plan = self.model_bytes, None
        if self._stream is not None:
            cid, prof, examples, u_drop = self._stream.next(self.t, self.busy)
            up = self.upload_bytes + extra_bytes + extra_seconds * prof.uplink
            rate = self._dropout_rate
            timing = self.population.timing_of(prof, self.t, examples, down, up,
                                               -math.log(u_drop) / rate if rate > 0 else None)
        else:
            cid = self.population.select(self._select_rng, self.t, self.busy)
            if getattr(self.trainer, "batched", False):
                examples = int(self.trainer.examples(np.array([cid]))[0])
            else:
                plan = self.trainer.plan(cid, tid)
                examples = plan.examples
            up = self.upload_bytes + extra_bytes
            if extra_seconds:
                up += extra_seconds * self.population.profile(cid).uplink
            timing = self.population.timing(cid, tid, self.t, examples, down, up)
        task = Task(tid, cid, self.t, self.t + timing.duration, self.version, self.x, examples,
                    timing.compute, timing.drop_at, plan, round=round, download=timing.download)
        self.in_flight[tid] = task
        self.busy[cid] = self.busy.get(cid, 0) + 1
        self.c.client_starts += 1
        self.c.bytes_down += self.model_bytes
        self.c.bytes_secagg += extra_bytes
        when, kind = (timing.drop_at, DROP) if timing.drop_at is not None else (task.finish, FINISH)
        self._push(when, kind, task)
        return task

    def _release(self, task: Task, spent: float) -> None:
        del self.in_flight[task.id]
        self.busy[task.cid] -= 1
        if not self.busy[task.cid]:
            del self.busy[task.cid]
        self.c.compute_total += spent

    def cancel(self, task: Task) -> None:
        """Abort an in-flight client (a straggler the round no longer waits for); its work is wasted."""
        task.cancelled = True
        spent = task.compute_done(self.t)
        self._release(task, spent)
        self.c.compute_wasted += spent
        self.c.stragglers_cancelled += 1

    def discard(self, task: Task) -> None:
        """Drop a received update as too stale; its work is wasted."""
        self.c.discarded_stale += 1
        self.c.compute_wasted += task.compute

    def _push(self, when: float, kind: int, payload: Any) -> None:
        heapq.heappush(self._heap, (when, self._seq, kind, payload))
        self._seq += 1

    def timer(self, at: float, tag: Any) -> None:
        self._push(at, TIMER, tag)

    def halt(self, reason: str) -> None:
        """Stop the simulation after the current event (the server can take no more steps)."""
        self.halted = reason

    def record_staleness(self, tau: int) -> None:
        self.c.applied += 1
        self.c.staleness_sum += tau
        self.c.staleness_max = max(self.c.staleness_max, tau)

    # ------------------------------------------------------------------ lazy, batched training
    def _delta(self, task: Task, server: Server) -> torch.Tensor:
        if task.delta is None:
            others = sorted((o for o in self.in_flight.values()
                             if o is not task and o.delta is None and o.drop_at is None and server.trainable(o)),
                            key=lambda o: o.finish)
            batch = [task, *others[: self._max_batch - 1]]
            deltas = self.backend.train([TrainJob(o.cid, o.id, o.base, o.plan) for o in batch])
            if any(r > 0 for r in self._fault_rates):
                for i, o in enumerate(batch):
                    deltas[i] = self._inject_fault(o, deltas[i])
            norms = deltas.norm(dim=1)  # validate the whole batch at once: NaN/inf rows have a non-finite norm
            small = (norms <= self._max_norm).tolist()
            odd = torch.isfinite(norms).logical_not().nonzero().flatten().tolist()
            finite = dict.fromkeys(odd, False)
            for i in odd:  # a non-finite norm: a NaN/inf entry, or finite entries whose squares overflow
                finite[i] = bool(torch.isfinite(deltas[i]).all())
            for i, (o, d, ok) in enumerate(zip(batch, deltas.unbind(0), small)):
                f = finite.get(i, True)
                o.delta, o.check = d, 0 if f and ok else (1 if not f else 2)
                o.plan = None  # the shard is no longer needed
        return task.delta

    def _inject_fault(self, task: Task, delta: torch.Tensor) -> torch.Tensor:
        nan_rate, blowup_rate = self._fault_rates
        if nan_rate <= 0 and blowup_rate <= 0:
            return delta
        u = np.random.default_rng(derive_seed(self.seed, "fault", task.id)).random()
        if u < nan_rate:
            return torch.full_like(delta, math.nan)
        if u < nan_rate + blowup_rate:
            return delta * 1e6
        return delta

    def valid(self, task: Task) -> bool:
        """Reject updates with NaN/inf or an L2 norm above ``faults.max_update_norm`` (and count them); the
        check itself runs on the whole trained batch (:meth:`_delta`)."""
        if task.check == 1:
            self.c.rejected_nonfinite += 1
        elif task.check == 2:
            self.c.rejected_norm += 1
        return task.check == 0

    # ------------------------------------------------------------------ server model
    def step(self, x_new: torch.Tensor) -> None:
        """Install a new global model (a server step); a non-finite one is refused and counted."""
        if not bool(torch.isfinite(x_new).all()):
            self.c.server_nonfinite_skipped += 1
            return
        self.x = x_new.detach().clone()
        self.version += 1
        self.c.server_steps += 1
        if self._eval_interval is None:
            self.evaluate()

    def evaluate(self) -> EvalPoint:
        """Score the current global model at the current simulated time and append it to the history."""
        m = self._evaluate(self.x)
        p = EvalPoint(self.t, self.c.client_updates, self.c.bytes, self.c.server_steps, m["accuracy"], m["loss"])
        if not self.history or self.history[-1] != p:
            self.history.append(p)
            if self._log is not None:
                self._log({"accuracy": p.accuracy, "loss": p.loss, "sim_time": p.time, "bytes": p.bytes,
                           "server_steps": p.server_steps, "in_flight": len(self.in_flight)}, p.client_updates)
        if p.accuracy >= self.cfg.target_accuracy:
            self.reached_target = True
        return p

    # ------------------------------------------------------------------ the event loop
    def _advance(self, t: float) -> None:
        """Move the clock to ``t``, evaluating at the grid points passed on the way (if on a grid)."""
        step = self._eval_interval
        while step is not None and self._grid_k * step <= t:
            self._move(self._grid_k * step)
            self._grid_k += 1
            self.evaluate()
        self._move(t)

    def _move(self, t: float) -> None:
        self.c.concurrency_area += len(self.in_flight) * (t - self.t)
        self.t = t

    def _done(self) -> bool:
        return self.halted is not None or self.c.client_updates >= self._max_updates or (
            self._stop_at_target and self.reached_target)

    def run(self, server: Server, checkpoint: Callable[[int, dict[str, Any]], None] | None = None,
            state: dict[str, Any] | None = None) -> SimulationResult:
        """Run ``server`` until the update budget, the time budget, or (optionally) the target accuracy.

        ``checkpoint(server_steps, state)`` is called at the start and then after the event that brings the server
        steps to the next multiple of ``checkpoint_every``; passing such a ``state`` back (with a freshly built
        ``server``) continues the simulation exactly where it was.
        """
        cfg = self.cfg
        every = cfg.checkpoint_every
        if state is None:
            if cfg.eval_interval is None:
                self.evaluate()
            server.start(self)
            self._next_checkpoint = every
            if checkpoint is not None and every:
                checkpoint(0, self.state_dict(server))  # a resumed stage always rewinds to a checkpoint
        else:
            self.load_state_dict(state, server)
        heap, pop, c, on_grid = self._heap, heapq.heappop, self.c, self._eval_interval is not None
        while heap and not self._done():
            when, _, kind, payload = pop(heap)
            if kind != TIMER and payload.cancelled:
                continue
            if self._max_sim_time is not None and when > self._max_sim_time:
                self._advance(self._max_sim_time)
                break
            if on_grid:
                self._advance(when)
            else:  # _move, inlined: the loop runs once per client event
                c.concurrency_area += len(self.in_flight) * (when - self.t)
                self.t = when
            if kind == TIMER:
                server.on_timer(self, payload)
            elif kind == DROP:
                spent = payload.compute_done(self.t)
                self._release(payload, spent)
                self.c.dropouts += 1
                self.c.compute_wasted += spent
                server.on_failure(self, payload)
            else:
                delta = payload.delta if payload.delta is not None else self._delta(payload, server)
                self._release(payload, payload.compute)
                c.client_updates += 1
                c.bytes_up += self.upload_bytes
                if payload.check == 0 or self.valid(payload):
                    server.on_update(self, payload, delta)
                else:
                    c.compute_wasted += payload.compute
                    server.on_failure(self, payload)
                payload.delta = None
            if every and c.server_steps >= self._next_checkpoint and checkpoint is not None and not self._done():
                self._next_checkpoint = (c.server_steps // every + 1) * every
                checkpoint(c.server_steps, self.state_dict(server))
        if cfg.eval_interval is None or not self.history or self.history[-1].time < self.t:
            self.evaluate()
        for task in list(self.in_flight.values()):  # work still running at the end is not wasted: it is unfinished
            self.c.compute_total += task.compute_done(self.t)
        return SimulationResult(self.c, self.history, self.t, self.x)

    # ------------------------------------------------------------------ checkpoints
    _STATE = ("x", "version", "t", "in_flight", "busy", "c", "history", "_heap", "_seq", "_next_task", "_grid_k",
              "reached_target", "halted", "_next_checkpoint")

    def state_dict(self, server: Server) -> dict[str, Any]:
        """Everything the rest of the simulation depends on (tasks keep their identity across heap/in_flight)."""
        return {**{k: getattr(self, k) for k in self._STATE},
                "select_rng": self._select_rng.bit_generator.state, "server": vars(server),
                "checkins": self._stream.state() if self._stream is not None else None}

    def load_state_dict(self, state: dict[str, Any], server: Server) -> None:
        for k in self._STATE:
            setattr(self, k, state[k])
        self._select_rng.bit_generator.state = state["select_rng"]
        if self._stream is not None:
            self._stream.load(state["checkins"])
        vars(server).update(state["server"])
