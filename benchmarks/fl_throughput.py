"""Federated simulator throughput and memory.

1. Client updates per second for the digits MLP with ``--clients`` concurrent clients: vectorised
   (``torch.func.vmap`` over stacked parameters) vs one by one (``nn.Module`` + ``torch.optim.SGD``),
   both from the same plans; the ratio is the speed-up from vectorising (target >= 10x at 100 clients).
2. Peak memory (process max RSS) of an event-driven FedBuff simulation over a 10^8-client population
   at concurrency 1000 (target < 2 GB): no per-client state, profiles and shards derived on demand.

    .venv/bin/python benchmarks/fl_throughput.py [--clients 100] [--updates 5000]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from omegaconf import OmegaConf

from runner.data.federated import FederatedDatasetConfig
from runner.federated.aggregators import make_server
from runner.federated.backends import LocalBackend, TrainerSpec, build_trainer
from runner.federated.config import ClientConfig, ServerConfig, SimulationConfig
from runner.federated.models import FLModelConfig
from runner.federated.population import Population
from runner.federated.simulator import Simulator


def _spec(num_clients: int) -> TrainerSpec:
    plain = OmegaConf.to_container
    return TrainerSpec(plain(OmegaConf.structured(FederatedDatasetConfig(num_clients=num_clients))),
                       plain(OmegaConf.structured(FLModelConfig())), plain(OmegaConf.structured(ClientConfig())), 0)


def _best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def vectorised_vs_sequential(clients: int, repeats: int = 3) -> dict[str, float]:
    trainer = build_trainer(_spec(10_000))
    x0 = trainer.space.flatten(trainer.model)
    plans = [trainer.plan(c, c) for c in range(clients)]
    starts = torch.stack([x0] * clients)
    trainer.train_many(starts[:2], plans[:2])  # warm up
    t_vec = _best_of(lambda: trainer.train_many(starts, plans), repeats)
    t_seq = _best_of(lambda: [trainer.train_one(x0, p) for p in plans], repeats)
    t_plan = _best_of(lambda: [trainer.plan(c, c) for c in range(clients)], repeats)
    return {"vectorised_updates_per_s": clients / t_vec, "sequential_updates_per_s": clients / t_seq,
            "speedup": t_seq / t_vec, "plan_updates_per_s": clients / t_plan}


def peak_memory_simulation(population: int, concurrency: int, updates: int) -> dict[str, float]:
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    trainer = build_trainer(_spec(population))
    x0 = trainer.space.flatten(trainer.model)
    xt, yt = trainer.data.test_set()
    cfg = OmegaConf.merge(OmegaConf.structured(SimulationConfig),
                          {"concurrency": concurrency, "max_client_updates": updates})
    sim = Simulator(x0, trainer, LocalBackend(trainer, 256), Population(population, cfg.clock, 0), cfg, 0,
                    lambda x: trainer.evaluate(x, xt, yt))
    server = make_server(OmegaConf.merge(OmegaConf.structured(ServerConfig), {"buffer_size": 100}), x0)
    t0 = time.perf_counter()
    res = sim.run(server)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"population": population, "concurrency": concurrency, "client_updates": res.counters.client_updates,
            "updates_per_s": res.counters.client_updates / wall, "final_accuracy": res.history[-1].accuracy,
            "peak_rss_mb": rss, "rss_before_mb": rss0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--population", type=int, default=10**8)
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--updates", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    v = vectorised_vs_sequential(args.clients)
    print(f"digits MLP, {args.clients} clients x 5 local steps (batch 16):")
    print(f"  one by one : {v['sequential_updates_per_s']:9.1f} client updates/s")
    print(f"  vectorised : {v['vectorised_updates_per_s']:9.1f} client updates/s")
    print(f"  speed-up   : {v['speedup']:9.1f}x  (target >= 10x)")
    print(f"  (shard + plan derivation alone: {v['plan_updates_per_s']:.0f} clients/s)")
    m = peak_memory_simulation(args.population, args.concurrency, args.updates)
    print(f"FedBuff simulation, population {m['population']:,}, concurrency {m['concurrency']}, "
          f"{m['client_updates']} client updates:")
    print(f"  {m['updates_per_s']:.0f} simulated client updates/s end to end, final accuracy {m['final_accuracy']:.3f}")
    print(f"  peak RSS {m['peak_rss_mb']:.0f} MB (process before the simulation: {m['rss_before_mb']:.0f} MB; "
          f"target < 2048 MB)")


if __name__ == "__main__":
    main()
