"""Server modes: synchronous FedAvg / FedAvgM, FedAsync and FedBuff, with staleness weights and server optimisers.

Notation (FedBuff, Nguyen et al. 2022, Algorithm 1): x is the global model at version t; a client that
downloaded version t - τ reports Δ = x_local - x_{t-τ}; s(τ) is the staleness weight.

- FedAvg(M) (McMahan et al. 2017; Hsu et al. 2019): each round selects C clients, closes after
  ⌈C / (1 + over_selection)⌉ reports (stragglers are cancelled), Δ̄ = Σ w_k Δ_k / Σ w_k and
  x ← ServerOpt(x, -Δ̄); FedAvgM is ServerOpt = SGD with momentum.
- FedAsync (Xie et al. 2019): every report is mixed in at once, α_t = α · s(τ),
  x ← (1 - α_t) x + α_t (x_{t-τ} + Δ).
- FedBuff: Δ̄ ← Δ̄ + s(τ) Δ for each report; after K reports x ← ServerOpt(x, -Δ̄ / K) and the buffer empties.
Async modes keep C clients training: a new one starts whenever one reports or fails.

Private modes (``agg``, a :class:`runner.federated.private.PrivateAggregation`): the same steps, but each
report goes into ``agg`` (clipped on the client, securely summed) and Δ̄ = ``agg.release()`` is the noised sum
over the fixed denominator (DP-FedAvg / DP-FedBuff); without ``agg`` the modes compute the plain mean below.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from runner.federated.simulator import Simulator, Task


# --------------------------------------------------------------------------- staleness weights s(τ)
def staleness_weight(tau: int, kind: str = "polynomial", a: float = 0.5, b: float = 4.0) -> float:
    """s(τ): ``constant`` 1; ``polynomial`` (1+τ)^-a (a=½: FedBuff's 1/√(1+τ)); ``hinge`` 1 for τ ≤ b else
    1/(a(τ-b)+1) (FedAsync); ``exponential`` e^{-aτ}."""
    if kind == "constant":
        return 1.0
    if kind == "polynomial":
        return (1.0 + tau) ** -a
    if kind == "hinge":
        return 1.0 if tau <= b else 1.0 / (a * (tau - b) + 1.0)
    if kind == "exponential":
        return math.exp(-a * tau)
    raise ValueError(f"unknown staleness weight '{kind}'")


# --------------------------------------------------------------------------- server optimiser
class ServerOptimizer:
    """A torch optimiser stepping x with the pseudo-gradient g = -Δ̄ (SGD: x + lr·Δ̄; momentum: FedAvgM; Adam)."""

    def __init__(self, x0: torch.Tensor, cfg: Any):
        self.param = torch.nn.Parameter(x0.detach().clone())
        if cfg.optimizer == "adam":
            self.opt: torch.optim.Optimizer = torch.optim.Adam([self.param], lr=cfg.lr, betas=tuple(cfg.betas),
                                                               eps=cfg.eps)
        else:
            self.opt = torch.optim.SGD([self.param], lr=cfg.lr,
                                       momentum=cfg.momentum if cfg.optimizer == "momentum" else 0.0)

    def step(self, x: torch.Tensor, delta_bar: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.param.copy_(x)
        self.param.grad = -delta_bar.detach().clone()
        self.opt.step()
        return self.param.detach().clone()


def _concurrency(cfg: Any, sim: Simulator) -> int:
    return int(cfg.concurrency or sim.cfg.concurrency)


def round_goal(concurrency: int, over_selection: float) -> int:
    """Reports that close a synchronous round: ⌈C / (1 + over_selection)⌉."""
    return max(1, math.ceil(concurrency / (1.0 + over_selection)))


# --------------------------------------------------------------------------- FedAvg / FedAvgM (synchronous)
class FedAvgServer:
    """Synchronous rounds with over-selection; the round closes at its goal, a timeout, or when nobody is left."""

    def __init__(self, cfg: Any, x0: torch.Tensor, agg: Any = None):
        self.cfg, self.opt, self.agg = cfg, ServerOptimizer(x0, cfg), agg
        self.round, self.goal, self.cutoff = 0, 0, math.inf
        self.reports: list[Task] = []
        self.sum, self.weight = torch.zeros_like(x0), 0.0  # Σ w_k Δ_k and Σ w_k of the round's reports so far

    def start(self, sim: Simulator) -> None:
        self._new_round(sim)

    def _new_round(self, sim: Simulator) -> None:
        self.round += 1
        c = _concurrency(self.cfg, sim)
        self.goal = round_goal(c, self.cfg.over_selection)
        self.reports = []
        self.sum.zero_()
        self.weight = 0.0
        tasks = [sim.dispatch(round=self.round, **(self.agg.overhead if self.agg else {})) for _ in range(c)]
        if self.agg is not None:
            self.agg.open([t.cid for t in tasks])
        finishes = sorted(t.finish for t in tasks if t.drop_at is None)
        # only the first `goal` reporters will be used: train nobody beyond them (stragglers get cancelled)
        self.cutoff = finishes[self.goal - 1] if len(finishes) >= self.goal else math.inf
        if self.cfg.round_timeout is not None:
            sim.timer(sim.t + self.cfg.round_timeout, self.round)

    def trainable(self, task: Task) -> bool:
        return task.round == self.round and task.finish <= self.cutoff

    def on_update(self, sim: Simulator, task: Task, delta: torch.Tensor) -> None:
        if self.agg is not None:
            self.agg.add(task.cid, delta)  # the server keeps no plaintext update
        else:  # a running sum: memory O(P) at any concurrency, no stacking of the round's updates
            w = float(task.examples) if self.cfg.weighting == "examples" else 1.0
            self.sum.add_(delta, alpha=w)
            self.weight += w
        self.reports.append(task)
        sim.record_staleness(sim.version - task.version)
        if len(self.reports) >= self.goal or not sim.in_flight:
            self._close(sim)

    def on_failure(self, sim: Simulator, task: Task) -> None:
        if not sim.in_flight:
            self._close(sim)

    def on_timer(self, sim: Simulator, tag: Any) -> None:
        if tag == self.round:
            self._close(sim)

    def _close(self, sim: Simulator) -> None:
        for straggler in list(sim.in_flight.values()):
            sim.cancel(straggler)
        if self.agg is not None:
            delta_bar = self.agg.release(sim) if self.reports else None
            if delta_bar is not None:
                sim.step(self.opt.step(sim.x, delta_bar))
        elif self.reports:
            sim.step(self.opt.step(sim.x, self.sum / self.weight))
        if self.agg is None or not sim.halted:  # only a private aggregation halts (its budget is spent)
            self._new_round(sim)


# --------------------------------------------------------------------------- asynchronous modes
class _AsyncServer:
    """Keeps C clients training; drops reports staler than ``max_staleness``."""

    def __init__(self, cfg: Any, agg: Any = None):
        self.cfg, self.agg = cfg, agg

    def dispatch(self, sim: Simulator) -> None:
        if self.agg is None:
            sim.dispatch()
        elif not sim.halted:  # only a private aggregation halts (its budget is spent)
            sim.dispatch(**self.agg.overhead)

    def start(self, sim: Simulator) -> None:
        for _ in range(_concurrency(self.cfg, sim)):
            self.dispatch(sim)

    def trainable(self, task: Task) -> bool:
        return True

    def on_timer(self, sim: Simulator, tag: Any) -> None:
        pass

    def on_failure(self, sim: Simulator, task: Task) -> None:
        self.dispatch(sim)

    def on_update(self, sim: Simulator, task: Task, delta: torch.Tensor) -> None:
        tau = sim.version - task.version
        if self.cfg.max_staleness is not None and tau > self.cfg.max_staleness:
            sim.discard(task)
        else:
            sim.record_staleness(tau)
            self.aggregate(sim, task, delta, tau)
        self.dispatch(sim)

    def s(self, tau: int) -> float:
        return staleness_weight(tau, self.cfg.staleness, self.cfg.staleness_a, self.cfg.staleness_b)

    def aggregate(self, sim: Simulator, task: Task, delta: torch.Tensor, tau: int) -> None:
        raise NotImplementedError


class FedAsyncServer(_AsyncServer):
    """x ← (1 - α s(τ)) x + α s(τ) (x_{t-τ} + Δ), one server step per report."""

    def aggregate(self, sim: Simulator, task: Task, delta: torch.Tensor, tau: int) -> None:
        if self.agg is not None:  # DP: Δ̃ = clip(Δ) + N(0, (zS)² I), released on its own (a step of one client)
            self.agg.add(task.cid, delta)
            delta = self.agg.release(sim)
            if delta is None:
                return
        alpha_t = self.cfg.mixing * self.s(tau)
        sim.step((1.0 - alpha_t) * sim.x + alpha_t * (task.base + delta))


class FedBuffServer(_AsyncServer):
    """Buffer s(τ)·Δ; every K reports step the server optimiser with Δ̄ / K."""

    def __init__(self, cfg: Any, x0: torch.Tensor, agg: Any = None):
        super().__init__(cfg, agg)
        self.opt = ServerOptimizer(x0, cfg)
        self.buffer = torch.zeros_like(x0)
        self.weight = 0.0
        self.count = 0

    def aggregate(self, sim: Simulator, task: Task, delta: torch.Tensor, tau: int) -> None:
        if self.agg is not None:  # DP-FedBuff / secure buffer: s(τ)·clip(Δ) into the private sum, noise once per K
            self.agg.add(task.cid, delta, self.s(tau))
            if self.agg.count == self.cfg.buffer_size:
                delta_bar = self.agg.release(sim)
                if delta_bar is not None:
                    sim.step(self.opt.step(sim.x, delta_bar))
            return
        w = float(task.examples) if self.cfg.weighting == "examples" else 1.0
        self.buffer.add_(delta, alpha=w * self.s(tau))
        self.weight += w
        self.count += 1
        if self.count == self.cfg.buffer_size:
            sim.step(self.opt.step(sim.x, self.buffer / self.weight))
            self.buffer.zero_()
            self.weight, self.count = 0.0, 0


def plain(cfg: Any) -> Any:
    """A config as a namespace of plain values (a server reads it on every report; OmegaConf access is slow)."""
    if isinstance(cfg, DictConfig):
        return SimpleNamespace(**OmegaConf.to_container(cfg, resolve=True))
    return cfg


def make_server(cfg: Any, x0: torch.Tensor, agg: Any = None) -> FedAvgServer | FedAsyncServer | FedBuffServer:
    """The server mode ``cfg.mode`` names (a :class:`ServerConfig`); ``agg``: its private aggregation, if any."""
    cfg = plain(cfg)
    if cfg.mode == "fedavg":
        return FedAvgServer(cfg, x0, agg)
    if cfg.mode == "fedasync":
        return FedAsyncServer(cfg, agg)
    return FedBuffServer(cfg, x0, agg)
