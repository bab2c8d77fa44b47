"""Federated simulator throughput and memory, on Flower's digits workload, as ratios from one run.

Workload (Flower's simulation example): scikit-learn digits, MLP 64-64-10, 1 local epoch, batch 10, on a
10^8-client virtual population (Dirichlet(0.3) label skew, shards of median 32 examples).

1. ``sequential_updates_per_s``: a plain sequential PyTorch loop (one ``nn.Module``, ``torch.optim.SGD``,
   client after client) over pre-derived client plans — training only.
2. ``kernel_updates_per_s``: the same clients in one vectorised call of the simulator's trainer.
3. ``end_to_end_updates_per_s``: a whole simulation at population 10^8 with Flower's protocol (synchronous
   FedAvg rounds of ``--concurrency`` clients, every server model evaluated): check-ins, profiles, shards,
   plans, the clock, training, validation, aggregation; ``end_to_end_over_sequential`` is its ratio to (1).
   (1) and (3) run alternately ``--repeats`` times and each reports its best run (all runs are listed).
   ``fedbuff``: the same for FedBuff (C in flight, K = C/10). ``peak_rss_mb``: the process's peak RSS after all.
4. With ``--ray``: the same clients trained by 1 and 2 local Ray actors (``fl_ray_scaling.py``: scaling ratio,
   utilisation).
5. If ``flwr`` is installed: Flower's simulation on the same workload (its updates/s and our ratio to it).

    OMP_NUM_THREADS=1 nice python benchmarks/fl_throughput.py [--json] [--ray] [--updates 30000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from runner.data.federated import FederatedDatasetConfig
from runner.federated.aggregators import make_server
from runner.federated.backends import LocalBackend, TrainerSpec, build_trainer
from runner.federated.client import LocalTrainer
from runner.federated.config import ClientConfig, ServerConfig, SimulationConfig
from runner.federated.models import FLModelConfig
from runner.federated.population import Population
from runner.federated.simulator import Simulator

POPULATION = 10**8


def workload_spec(population: int = POPULATION, max_batch: int = 1024) -> TrainerSpec:
    """Flower's digits workload: MLP 64-64-10, 1 local epoch, batch 10, lr 0.1; vectorised shards (sampler=hash)."""
    plain = OmegaConf.to_container
    data = FederatedDatasetConfig(num_clients=population, sampler="hash")
    client = ClientConfig(local_epochs=1, batch_size=10, lr=0.1, max_batch=max_batch)
    return TrainerSpec(plain(OmegaConf.structured(data)), plain(OmegaConf.structured(FLModelConfig(hidden=[64]))),
                       plain(OmegaConf.structured(client)), 0)


def sequential_loop(trainer: LocalTrainer, clients: int) -> tuple[float, float]:
    """Updates per second (wall, CPU) of a plain PyTorch loop: per client, load the global model, SGD over its
    minibatches, Δ."""
    model = trainer.model
    x0 = trainer.space.flatten(model)
    bp = trainer.plan_many(np.arange(clients) + 10**7, np.arange(clients))
    plans = bp.plans(trainer.data.x, trainer.data.y)
    opt = torch.optim.SGD(model.parameters(), lr=trainer.lr)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for p in plans:
        torch.nn.utils.vector_to_parameters(x0, model.parameters())
        for idx, mask in zip(p.idx, p.mask):
            rows = idx[mask.bool()]
            loss = torch.nn.functional.cross_entropy(model(p.x[rows]), p.y[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _ = torch.nn.utils.parameters_to_vector(model.parameters()) - x0
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    torch.nn.utils.vector_to_parameters(x0, model.parameters())
    return clients / wall, clients / cpu


def kernel_rate(trainer: LocalTrainer, clients: int) -> float:
    """Updates/s of one vectorised call (plans derived inside), as the simulator's backend makes it (best of 3)."""
    x0 = trainer.space.flatten(trainer.model)
    cids = np.arange(clients) + 2 * 10**7
    starts = torch.stack([x0] * clients)
    trainer.train_clients(starts[:8], cids[:8], cids[:8])  # warm up
    best = float("inf")
    for _ in range(3):  # best of three: the machine is shared
        t0 = time.perf_counter()
        trainer.train_clients(starts, cids, cids)
        best = min(best, time.perf_counter() - t0)
    return clients / best


def end_to_end(trainer: LocalTrainer, concurrency: int, updates: int, mode: str = "fedavg") -> dict[str, Any]:
    """A whole simulation over the 10^8-client population; client updates per second of wall time.

    ``fedavg``: synchronous rounds of ``concurrency`` clients that all report (Flower's FedAvg protocol);
    ``fedbuff``: FedBuff keeping ``concurrency`` clients in flight, K = C/10 (heavy-tailed device speeds make
    clients report one by one, so fewer clients are ready to train together)."""
    x0 = trainer.space.flatten(trainer.model)
    xt, yt = trainer.data.test_set()
    cfg = OmegaConf.merge(OmegaConf.structured(SimulationConfig),
                          {"concurrency": concurrency, "max_client_updates": updates, "checkpoint_every": 0,
                           "client": OmegaConf.to_container(trainer.cfg)})
    population = Population(trainer.data.num_clients, cfg.clock, 0, hashed=True)
    sim = Simulator(x0, trainer, LocalBackend(trainer, trainer.cfg.max_batch), population, cfg, 0,
                    lambda x: trainer.evaluate(x, xt, yt))
    server_cfg = ({"mode": "fedavg", "over_selection": 0.0, "lr": 1.0} if mode == "fedavg" else
                  {"mode": "fedbuff", "buffer_size": max(1, concurrency // 10)})
    server = make_server(OmegaConf.merge(OmegaConf.structured(ServerConfig), server_cfg), x0)
    cpu0, t0 = time.process_time(), time.perf_counter()
    res = sim.run(server)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    n = res.counters.client_updates
    return {"updates_per_s": n / wall, "updates_per_cpu_s": n / cpu, "client_updates": n,
            "server_steps": res.counters.server_steps, "final_accuracy": res.history[-1].accuracy}


def flower_rate(spec: TrainerSpec, rounds: int = 4, per_round: int = 50) -> float | None:
    """Flower's simulation (``flwr.simulation.start_simulation``, FedAvg, one CPU per client) on the same
    clients and plans, if ``flwr`` is installed: client updates per second over rounds 2.. (after Ray's start)."""
    try:
        import flwr as fl
    except ImportError:
        return None
    trainer = build_trainer(spec)
    starts: list[float] = []

    class Client(fl.client.NumPyClient):
        def __init__(self, cid: int):
            self.cid = cid

        def fit(self, parameters, config):  # noqa: ANN001
            x0 = torch.from_numpy(np.concatenate([p.ravel() for p in parameters])).float()
            delta = trainer.train_one(x0, trainer.plan(self.cid, len(starts)))
            return [(x0 + delta).numpy()], 1, {}

    class TimedFedAvg(fl.server.strategy.FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):  # noqa: ANN001
            starts.append(time.perf_counter())
            return super().configure_fit(server_round, parameters, client_manager)

    x0 = trainer.space.flatten(trainer.model).numpy()
    strategy = TimedFedAvg(fraction_fit=1.0, min_fit_clients=per_round, min_available_clients=per_round,
                           fraction_evaluate=0.0, initial_parameters=fl.common.ndarrays_to_parameters([x0]))
    fl.simulation.start_simulation(
        client_fn=lambda context: Client(10**7 + int(context.node_config["partition-id"])).to_client(),
        num_clients=per_round, config=fl.server.ServerConfig(num_rounds=rounds), strategy=strategy,
        client_resources={"num_cpus": 1}, ray_init_args={"include_dashboard": False, "log_to_driver": False})
    return (rounds - 1) * per_round / (time.perf_counter() - starts[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--population", type=int, default=POPULATION)
    ap.add_argument("--concurrency", type=int, default=1000)
    ap.add_argument("--updates", type=int, default=30_000)
    ap.add_argument("--sequential-clients", type=int, default=1000)
    ap.add_argument("--kernel-clients", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3, help="alternating runs of the loop and the FedAvg simulation")
    ap.add_argument("--ray", action="store_true", help="also measure 1 and 2 local Ray actors (as fl_ray_scaling.py)")
    ap.add_argument("--ray-clients", type=int, default=16384)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = workload_spec(args.population)
    trainer = build_trainer(spec)
    out: dict[str, Any] = {"workload": "digits MLP 64-64-10, 1 local epoch, batch 10", "threads": 1,
                           "load_average_1min_before": os.getloadavg()[0]}
    seq_runs, sync_runs = [], []
    for _ in range(args.repeats):  # alternately, so that a shared machine's load drift hits both alike
        seq_runs.append(sequential_loop(trainer, args.sequential_clients))
        sync_runs.append(end_to_end(trainer, args.concurrency, args.updates, "fedavg"))
    out["sequential_runs_updates_per_s"] = [r[0] for r in seq_runs]
    out["end_to_end_runs_updates_per_s"] = [r["updates_per_s"] for r in sync_runs]
    seq = max(r[0] for r in seq_runs)  # the best of each (the least disturbed run), never a slowed baseline
    out["sequential_updates_per_s"] = seq
    out["sequential_updates_per_cpu_s"] = max(r[1] for r in seq_runs)
    sync = max(sync_runs, key=lambda r: r["updates_per_s"])
    out["kernel_updates_per_s"] = kernel_rate(trainer, args.kernel_clients)
    out.update({"population": args.population, "concurrency": args.concurrency,
                "end_to_end_protocol": f"FedAvg rounds of {args.concurrency} clients, all reporting (as Flower)",
                "end_to_end_updates_per_s": sync["updates_per_s"],
                "end_to_end_updates_per_cpu_s": sync["updates_per_cpu_s"],
                "client_updates": sync["client_updates"], "final_accuracy": sync["final_accuracy"]})
    out["fedbuff"] = end_to_end(trainer, args.concurrency, args.updates, "fedbuff")
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["end_to_end_over_sequential"] = out["end_to_end_updates_per_s"] / seq
    # the same ratio in CPU time of this process (less sensitive to other jobs on a shared machine)
    out["end_to_end_over_sequential_cpu"] = out["end_to_end_updates_per_cpu_s"] / out["sequential_updates_per_cpu_s"]
    out["fedbuff"]["over_sequential"] = out["fedbuff"]["updates_per_s"] / seq
    out["kernel_over_sequential"] = out["kernel_updates_per_s"] / seq
    out["load_average_1min_after"] = os.getloadavg()[0]
    out["done_when"] = {"end_to_end_ge_15000_per_s": out["end_to_end_updates_per_s"] >= 15_000,
                        "end_to_end_ge_10x_sequential": out["end_to_end_over_sequential"] >= 10,
                        "peak_rss_lt_2000_mb": out["peak_rss_mb"] < 2000}
    if args.ray:
        from fl_ray_scaling import ray_scaling

        out["ray"] = ray_scaling(spec, args.ray_clients)
    flower = flower_rate(spec)
    if flower is not None:
        out["flower_updates_per_s"] = flower
        out["end_to_end_over_flower"] = out["end_to_end_updates_per_s"] / flower
    if args.json:
        print(json.dumps(out))
        return
    print(f"{out['workload']}; one thread; load average {out['load_average_1min_before']:.2f} → "
          f"{out['load_average_1min_after']:.2f}")
    runs = ", ".join(f"{a:.0f} / {b:.0f}" for a, b in zip(out["sequential_runs_updates_per_s"],
                                                         out["end_to_end_runs_updates_per_s"]))
    print(f"  best of {args.repeats} alternating runs (loop / FedAvg simulation: {runs})")
    print(f"  plain sequential PyTorch loop : {seq:9.0f} client updates/s "
          f"({out['sequential_updates_per_cpu_s']:.0f} per CPU-second)")
    print(f"  vectorised kernel (one call)  : {out['kernel_updates_per_s']:9.0f} client updates/s "
          f"({out['kernel_over_sequential']:.1f}x)")
    print(f"  FedAvg simulation end to end  : {out['end_to_end_updates_per_s']:9.0f} client updates/s "
          f"({out['end_to_end_over_sequential']:.1f}x; population {out['population']:,}, {out['concurrency']} "
          f"clients a round, {out['client_updates']} updates, final accuracy {out['final_accuracy']:.3f}); "
          f"per CPU-second {out['end_to_end_updates_per_cpu_s']:.0f} ({out['end_to_end_over_sequential_cpu']:.1f}x)")
    fb = out["fedbuff"]
    print(f"  FedBuff simulation end to end : {fb['updates_per_s']:9.0f} client updates/s "
          f"({fb['over_sequential']:.1f}x; concurrency {out['concurrency']}, K = {out['concurrency'] // 10}, "
          f"final accuracy {fb['final_accuracy']:.3f})")
    print(f"  peak RSS {out['peak_rss_mb']:.0f} MB (target < 2000 MB)")
    print("  issue 16 done-when: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in out["done_when"].items()))
    if "ray" in out:
        for w, r in out["ray"].items():
            print(f"  Ray, {w} local actor(s): {r['updates_per_s']:.0f} updates/s, {r['speedup']:.2f}x, "
                  f"utilisation {r['utilisation']:.0%}")
    if flower is not None:
        print(f"  Flower simulation: {flower:.0f} updates/s; end to end / Flower = "
              f"{out['end_to_end_over_flower']:.0f}x")


if __name__ == "__main__":
    main()
