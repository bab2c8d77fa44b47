"""Ray backend scaling on Flower's digits workload: 1 vs 2 (or more) local actors, with actor utilisation.

The same batch of clients (one global model version, as in a FedAvg round) is trained by a backend with 1 actor
and by one with 2, alternately, ``--repeats`` times each (best time of each; alternating keeps a shared machine's
load drift out of the ratio). ``utilisation`` is each actor's seconds inside its tasks divided by the wall time
of ``RayBackend.train`` (first submission to last result); ``cores_used`` is the actors' CPU seconds in their
tasks over that wall time: on a machine shared with other jobs, the speedup follows the cores the actors got.

    OMP_NUM_THREADS=1 python benchmarks/fl_ray_scaling.py [--json] [--clients 16384] [--per-task 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fl_throughput import workload_spec  # noqa: E402

from runner.federated.backends import TrainerSpec, TrainJob, build_trainer  # noqa: E402


def ray_scaling(spec: TrainerSpec, clients: int, workers: tuple[int, ...] = (1, 2), per_task: int = 1024,
                repeats: int = 5, in_flight: int = 2) -> dict[str, Any]:
    """Updates/s of the Ray backend with each number of local actors in ``workers`` on one batch of ``clients``
    (best of ``repeats``, measured alternately), its speedup over ``workers[0]`` and the actors' utilisation."""
    import ray

    from runner.federated.backends import RayBackend

    trainer = build_trainer(spec)
    x0 = trainer.space.flatten(trainer.model)
    jobs = [TrainJob(c, c, x0) for c in range(3 * 10**7, 3 * 10**7 + clients)]
    ray.init(num_cpus=sum(workers), include_dashboard=False, log_to_driver=False)
    try:
        backends = {w: RayBackend(spec, per_task, w, in_flight=in_flight) for w in workers}
        best: dict[int, tuple[float, list[float], float]] = {}
        for b in backends.values():
            b.train(jobs[: per_task * len(b.actors) * in_flight])  # actors built and warm, shared rows mapped
        for _ in range(repeats):
            for w, b in backends.items():
                b.reset_stats()
                t0 = time.perf_counter()
                b.train(jobs)
                dt = time.perf_counter() - t0
                if w not in best or dt < best[w][0]:
                    best[w] = (dt, b.utilisation_per_actor(), b.cores_used())
        for b in backends.values():
            b.close()
    finally:
        ray.shutdown()
    out: dict[str, Any] = {}
    for w in workers:
        dt, per_actor, cores = best[w]
        out[str(w)] = {"updates_per_s": clients / dt, "speedup": best[workers[0]][0] / dt,
                       "utilisation": sum(per_actor) / len(per_actor), "utilisation_per_actor": per_actor,
                       "cores_used": cores}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=16384)
    ap.add_argument("--per-task", type=int, default=1024)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--in-flight", type=int, default=2, help="tasks submitted per actor and not yet collected")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out: dict[str, Any] = {"workload": "digits MLP 64-64-10, 1 local epoch, batch 10", "clients": args.clients,
                           "clients_per_task": args.per_task, "load_average_1min_before": os.getloadavg()[0]}
    out["in_flight"] = args.in_flight
    out["actors"] = ray_scaling(workload_spec(), args.clients, tuple(args.workers), args.per_task, args.repeats,
                                args.in_flight)
    two = out["actors"].get("2")
    if two is not None:
        out["speedup_2_over_1"] = two["speedup"]
        out["utilisation_2_actors"] = two["utilisation"]
        out["utilisation_2_actors_min"] = min(two["utilisation_per_actor"])
        out["cores_used_2_actors"] = two["cores_used"]
        out["done_when"] = {"speedup_2_over_1_ge_1.6": two["speedup"] >= 1.6,
                            "utilisation_ge_0.9": min(two["utilisation_per_actor"]) >= 0.9}
    out["load_average_1min_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(out))
        return
    print(f"{out['workload']}; {args.clients} clients in tasks of {args.per_task}; load average "
          f"{out['load_average_1min_before']:.2f} → {out['load_average_1min_after']:.2f}")
    for w, r in out["actors"].items():
        per = ", ".join(f"{u:.0%}" for u in r["utilisation_per_actor"])
        print(f"  {w} local actor(s): {r['updates_per_s']:8.0f} updates/s, {r['speedup']:.2f}x, "
              f"utilisation {r['utilisation']:.0%} ({per}), CPU cores the actors got {r['cores_used']:.2f}")
    if "done_when" in out:
        print("  issue 16 done-when: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in out["done_when"].items()))


if __name__ == "__main__":
    main()
