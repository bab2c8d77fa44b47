"""DP-FedAvg baseline of PrE-Text: the same small causal LM trained on-device through the federated simulator.

The simulator (:mod:`runner.federated.simulator`) drives the population, clock, FedAvg rounds, user-level DP
(:mod:`runner.federated.private`: clip to S, Gaussian noise z·S on the sum, fixed denominator, accountant)
and the byte counters. :class:`LMClientTrainer` is the client side it calls: a client's "examples" are
random token windows of its own texts, and local training is SGD on the next-token loss of the LM. The
trainer measures what the clients actually execute: FLOPs (``torch.utils.flop_counter``) and seconds.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from runner.core.context import RunContext
from runner.core.seeding import derive_seed
from runner.federated.aggregators import make_server, round_goal
from runner.federated.backends import LocalBackend
from runner.federated.client import ParamSpace, TrainPlan
from runner.federated.config import ServerConfig, SimulationConfig
from runner.federated.population import Population
from runner.federated.private import make_aggregation
from runner.federated.simulator import Simulator


@dataclass
class DPFedAvgConfig(SimulationConfig):
    """DP-FedAvg of the downstream LM: ``rounds`` synchronous rounds of ``concurrency`` clients (the simulator's
    fields), the server mode, the window length, and a tuning grid (each entry: dotted overrides)."""

    rounds: int = 15
    seq_len: int = 64
    server: ServerConfig = field(default_factory=lambda: ServerConfig(mode="fedavg", over_selection=0.0))
    tune: list[dict[str, Any]] = field(default_factory=lambda: [{}])


class LMClientTrainer:
    """The client side of the simulator for a causal LM (the interface of :class:`runner.federated.client.
    LocalTrainer`: ``space``, ``upload_floats``, ``plan``, ``train_clients``; not ``batched``)."""

    def __init__(self, model: torch.nn.Module, client_streams: Sequence[torch.Tensor], client_cfg: Any,
                 seq_len: int, seed: int):
        self.model, self.streams, self.seed = model, list(client_streams), seed
        self.space = ParamSpace(model)
        self.upload_floats = self.space.size
        self.local_steps, self.batch_size = int(client_cfg.local_steps), int(client_cfg.batch_size)
        self.lr, self.seq_len = float(client_cfg.lr), int(seq_len)
        self.work = copy.deepcopy(model).train()  # the device's copy, loaded with each client's start weights
        self.flops, self.flop_clients, self.seconds, self.trained = 0, 0, 0.0, 0
        self.codec = None

    def plan(self, cid: int, draw: int) -> TrainPlan:
        """``local_steps`` batches of random windows of client ``cid``'s stream, from ``(seed, cid, draw)``."""
        stream = self.streams[cid]
        L = min(self.seq_len, stream.numel() - 1)
        rng = np.random.default_rng(derive_seed(self.seed, "lm-local", cid, draw))
        starts = rng.integers(0, stream.numel() - L, size=self.local_steps * self.batch_size)
        x = torch.stack([stream[s:s + L] for s in starts.tolist()])
        idx = torch.arange(len(starts)).view(self.local_steps, self.batch_size)
        return TrainPlan(x, torch.zeros(len(starts), dtype=torch.long), idx, torch.ones(idx.shape), cid, draw)

    def train_clients(self, x0s: torch.Tensor, cids: Sequence[int], draws: Sequence[int],
                      plans: Sequence[TrainPlan | None] | None = None) -> torch.Tensor:
        """Δ of participations (cid, draw) from start parameters x0s [n, P] (plans derived where missing)."""
        plans = plans or [None] * len(cids)
        return self.train(x0s, [p if p is not None else self.plan(c, d) for p, c, d in zip(plans, cids, draws)])

    def train(self, x0s: torch.Tensor, plans: Sequence[TrainPlan]) -> torch.Tensor:
        """Δ = x_local - x_start of each client: SGD on the next-token loss. Seconds are measured on every client,
        FLOPs counted on the first client of each call (every client runs the same shapes)."""
        deltas = []
        for k, (x0, plan) in enumerate(zip(x0s, plans)):
            torch.nn.utils.vector_to_parameters(x0.clone(), self.work.parameters())
            opt = torch.optim.SGD(self.work.parameters(), lr=self.lr)
            counter = FlopCounterMode(display=False) if k == 0 else contextlib.nullcontext()
            start = time.perf_counter()
            with counter:
                for idx in plan.idx:
                    batch = plan.x[idx]
                    loss = self.work(input_ids=batch, labels=batch).loss
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            self.seconds += time.perf_counter() - start
            self.trained += 1
            if k == 0:
                self.flops += counter.get_total_flops()
                self.flop_clients += 1
            deltas.append(self.space.flatten(self.work) - x0)
        return torch.stack(deltas)


def run_dp_fedavg(model: torch.nn.Module, client_streams: Sequence[torch.Tensor], cfg: Any, privacy: Any,
                  epsilon: float | None, evaluate: Callable[[torch.nn.Module], dict[str, float]], ctx: RunContext,
                  stage: str) -> tuple[dict[str, Any], torch.Tensor]:
    """One DP-FedAvg run of ``model`` (the start point) on the clients; returns (measured results, final weights).

    ``cfg``: a :class:`DPFedAvgConfig` (one tuning entry already merged). The aggregation is the simulator's:
    clipping to ``dp.clip_norm``, noise calibrated to ``epsilon`` (δ, accountant from ``privacy``) over the planned
    rounds with sampling rate concurrency / clients."""
    goal = round_goal(cfg.concurrency, cfg.server.over_selection)
    sim_cfg = OmegaConf.merge(cfg, {"max_client_updates": cfg.rounds * goal, "client": {"vectorize": False}})
    server_cfg = OmegaConf.merge(cfg.server, {"concurrency": cfg.concurrency})
    trainer = LMClientTrainer(model, client_streams, sim_cfg.client, cfg.seq_len, derive_seed(ctx.seed, stage))
    x0 = trainer.space.flatten(model)
    population = Population(len(client_streams), sim_cfg.clock, ctx.seed)
    agg = make_aggregation(server_cfg, sim_cfg, privacy, epsilon, population.size, cfg.concurrency, int(x0.numel()),
                           ctx.seed, key=stage)
    probe = copy.deepcopy(model).eval()

    def score(x: torch.Tensor) -> dict[str, float]:
        torch.nn.utils.vector_to_parameters(x.clone(), probe.parameters())
        m = evaluate(probe)
        return {"accuracy": m["next_token_accuracy"], "loss": m["loss"]}

    sim = Simulator(x0, trainer, LocalBackend(trainer, cfg.backend.clients_per_task), population, sim_cfg,
                    ctx.seed, score, log=lambda m, step: ctx.log(m, step, stage))
    server = make_server(server_cfg, x0, agg)
    run = sim.run(server)
    c = run.counters
    # a participant downloads the model (counted per start: the round after the last one starts, then stops)
    # and uploads its update (counted per report)
    per_round = (c.bytes_down + c.bytes_secagg) / max(1, c.client_starts) + c.bytes_up / max(1, c.client_updates)
    out: dict[str, Any] = {
        "rounds": c.server_steps,
        "client_updates": c.client_updates,
        "client_bytes_per_round": per_round,
        "client_flops_per_round": trainer.flops / max(1, trainer.flop_clients),
        "client_seconds_per_round": trainer.seconds / max(1, trainer.trained),
        "num_parameters": int(x0.numel()),
        "history": [{"server_steps": p.server_steps, "accuracy": p.accuracy, "loss": p.loss} for p in run.history],
    }
    if agg is not None:
        out.update(agg.results())
    return out, run.final_model
