"""The ``fedbuff`` and ``papaya`` recipes: server modes compared on one population and one clock.

``fedbuff``: FedBuff vs FedAvgM vs FedAsync (FedBuff paper, Nguyen et al. 2022) at one concurrency.
``papaya``: synchronous (FedAvgM with over-selection) vs asynchronous (FedBuff) training at several
concurrency levels on a large population (Papaya, Huba et al. 2022), with the ratios sync / async of
time and bytes to the target accuracy.

Every algorithm runs on the same population, device profiles, seed and client-selection stream, for the
same budget of client updates, and is evaluated after every server step (or on one shared time grid).
Each is a stage: it checkpoints the whole simulation every ``checkpoint_every`` server steps and is marked
done when it finishes, so a killed run resumed in the same directory continues the stage from its last
checkpoint, skips finished stages, and ends with the same results as an uninterrupted run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from runner.core.context import RunContext
from runner.core.errors import ConfigError
from runner.federated.aggregators import make_server
from runner.federated.backends import TrainerSpec, build_trainer, make_backend
from runner.federated.config import ServerConfig, SimulationConfig, check_server, check_simulation
from runner.federated.population import Population
from runner.federated.private import make_aggregation, preflight
from runner.federated.simulator import SimulationResult, Simulator
from runner.privacy.accounting import GaussianRelease, epsilon_spent


@dataclass
class FedBuffConfig(SimulationConfig):
    """FedBuff vs its baselines; ``servers`` maps a label to a server mode (the YAML lists all of them)."""

    name: str = "fedbuff"
    servers: dict[str, ServerConfig] = field(default_factory=dict)

    @staticmethod
    def validate(cfg: DictConfig) -> None:
        check_simulation(cfg)
        if not cfg.algorithm.servers:
            raise ConfigError("algorithm.servers is empty: name at least one server mode to run")
        for label, s in cfg.algorithm.servers.items():
            check_server(s, f"algorithm.servers.{label}")
        a = cfg.algorithm
        unknown = set(a.dp.epsilons_servers) - set(a.servers)
        if unknown:
            raise ConfigError(f"algorithm.dp.epsilons_servers names unknown servers {sorted(unknown)}")
        preflight(cfg, [(f"algorithm.servers.{label}", s, s.concurrency or a.concurrency)
                        for label, s in a.servers.items()], budgets(cfg))


@dataclass
class PapayaConfig(SimulationConfig):
    """Sync vs async at each of ``concurrency_levels``; FedBuff's K = max(1, round(buffer_fraction · C)) at
    each level (Papaya: K ≈ C/10), or ``buffer_sizes`` (one per level) when given."""

    name: str = "papaya"
    concurrency_levels: list[int] = field(default_factory=lambda: [10, 100, 1000])
    buffer_fraction: float = 0.1
    buffer_sizes: list[int] = field(default_factory=list)  # explicit K per level; empty: the buffer_fraction rule
    straggler_sigmas: list[float] = field(default_factory=list)  # clock.speed_sigma values of the speedup-vs-σ sweep
    sync_server: ServerConfig = field(default_factory=lambda: ServerConfig(mode="fedavg", optimizer="momentum"))
    async_server: ServerConfig = field(default_factory=ServerConfig)

    @staticmethod
    def validate(cfg: DictConfig) -> None:
        check_simulation(cfg)
        a = cfg.algorithm
        if not a.concurrency_levels or any(c < 1 for c in a.concurrency_levels):
            raise ConfigError(f"algorithm.concurrency_levels={list(a.concurrency_levels)} must be positive integers")
        if not 0 < a.buffer_fraction <= 1:
            raise ConfigError(f"algorithm.buffer_fraction={a.buffer_fraction} must be in (0, 1]")
        if any(not sg >= 0 for sg in a.straggler_sigmas):
            raise ConfigError(f"algorithm.straggler_sigmas={list(a.straggler_sigmas)} must be >= 0")
        if a.buffer_sizes and len(a.buffer_sizes) != len(a.concurrency_levels):
            raise ConfigError(f"algorithm.buffer_sizes={list(a.buffer_sizes)} must have one entry per "
                              "concurrency level")
        check_server(a.sync_server, "algorithm.sync_server")
        check_server(a.async_server, "algorithm.async_server")
        if a.sync_server.mode != "fedavg" or a.async_server.mode == "fedavg":
            raise ConfigError("algorithm.sync_server.mode must be fedavg and algorithm.async_server.mode async")
        runs = []
        for c, k in zip(a.concurrency_levels, papaya_buffer_sizes(a)):
            runs += [("algorithm.sync_server", a.sync_server, c),
                     ("algorithm.async_server", OmegaConf.merge(a.async_server, {"buffer_size": k}), c)]
        preflight(cfg, runs, budgets(cfg))


def papaya_buffer_sizes(a: Any) -> list[int]:
    """FedBuff's K at each concurrency level: ``buffer_sizes``, or max(1, round(buffer_fraction · C))."""
    return list(a.buffer_sizes) if a.buffer_sizes else [max(1, round(a.buffer_fraction * c))
                                                        for c in a.concurrency_levels]


def budgets(cfg: DictConfig) -> list[float | None]:
    """The ε of each comparison: the ``privacy`` group's (None: no DP), then ``algorithm.dp.epsilons`` (.inf: none)."""
    out = [cfg.privacy.epsilon]
    for e in cfg.algorithm.dp.epsilons:
        e = None if math.isinf(e) else float(e)
        if e not in out:
            out.append(e)
    return out


def epsilon_key(eps: float | None) -> str:
    return "inf" if eps is None else f"{eps:g}"


# --------------------------------------------------------------------------- one simulation
class Experiment:
    """The shared pieces of a comparison: data, model, trainer, backend, population, test set."""

    def __init__(self, cfg: DictConfig, ctx: RunContext):
        self.cfg, self.ctx = cfg, ctx
        a = cfg.algorithm
        spec = TrainerSpec(OmegaConf.to_container(cfg.dataset, resolve=True),
                           OmegaConf.to_container(cfg.model, resolve=True),
                           OmegaConf.to_container(a.client, resolve=True), ctx.seed)
        self.trainer = build_trainer(spec)
        self.backend = make_backend(a.backend, self.trainer, spec)
        self.x0 = self.trainer.space.flatten(self.trainer.model)
        self.population = Population(self.trainer.data.num_clients, a.clock, ctx.seed, hashed=self.trainer.batched)
        self.x_test, self.y_test = self.trainer.data.test_set()

    def evaluate(self, x: torch.Tensor) -> dict[str, float]:
        return self.trainer.evaluate(x, self.x_test, self.y_test)

    def simulate(self, stage: str, server_cfg: Any, concurrency: int, epsilon: float | None = None,
                 **overrides: Any) -> dict[str, Any]:
        """Run one server mode (or reuse the stage's finished result on resume) and summarise it.

        ``epsilon``: train with user-level DP at this budget (δ and accountant from the ``privacy`` group);
        the server's ``secagg`` setting picks the secure-aggregation protocol.
        """
        done = self.ctx.checkpoints.done(stage)
        if done is not None:
            return done
        sim_cfg = OmegaConf.merge(self.cfg.algorithm, {"concurrency": concurrency, **overrides})
        server_cfg = OmegaConf.merge(server_cfg, {"concurrency": concurrency})
        codec = getattr(self.trainer, "codec", None)  # FedSynth / random masking: the server decodes each upload
        agg = make_aggregation(server_cfg, sim_cfg, self.cfg.privacy, epsilon, self.population.size, concurrency,
                               int(self.x0.numel()), self.ctx.seed, key=stage,
                               codec_name=None if codec is None else type(codec).__name__)
        population = self.population  # the same devices; a clock override re-derives their profiles
        if "clock" in overrides:
            population = Population(population.size, sim_cfg.clock, self.ctx.seed, hashed=population.hashed)
        sim = Simulator(self.x0, self.trainer, self.backend, population, sim_cfg, self.ctx.seed, self.evaluate,
                        log=lambda m, step: self.ctx.log(m, step, stage))
        # SecAgg's key material is not serialised: such a stage checkpoints only when it is finished
        secure = server_cfg.secagg != "none"
        state = None if secure else self.ctx.restore(stage)  # the last in-simulation checkpoint, if any
        server = make_server(server_cfg, self.x0, agg)
        run = sim.run(server, state=state,
                      checkpoint=None if secure else lambda steps, s: self.ctx.save(stage, steps, s))
        result = summarise(run, sim_cfg.target_accuracy)
        if server.agg is not None:  # (a resumed stage's aggregation is the one restored with the server)
            result.update(server.agg.results())
        self.ctx.checkpoints.mark_done(stage, result)
        return result

    def close(self) -> None:
        self.backend.close()


def summarise(r: SimulationResult, target: float) -> dict[str, Any]:
    """Time / updates / bytes to the first evaluated model at ``target`` accuracy, and the run's counters."""
    c = r.counters
    hit = next((p for p in r.history if p.accuracy >= target), None)
    return {
        "time_to_target": hit.time if hit else None,
        "updates_to_target": hit.client_updates if hit else None,
        "bytes_to_target": hit.bytes if hit else None,
        "reached_target": hit is not None,
        "initial_accuracy": r.history[0].accuracy,
        "final_accuracy": r.history[-1].accuracy,
        "final_loss": r.history[-1].loss,
        "best_accuracy": max(p.accuracy for p in r.history),
        "sim_time": r.end_time,
        "client_updates": c.client_updates,
        "client_starts": c.client_starts,
        "server_steps": c.server_steps,
        "bytes": c.bytes,
        "staleness_mean": c.staleness_sum / c.applied if c.applied else 0.0,
        "staleness_max": c.staleness_max,
        "realised_concurrency": c.concurrency_area / r.end_time if r.end_time > 0 else 0.0,
        "wasted_work_fraction": c.compute_wasted / c.compute_total if c.compute_total > 0 else 0.0,
        "dropouts": c.dropouts,
        "stragglers_cancelled": c.stragglers_cancelled,
        "discarded_stale": c.discarded_stale,
        "rejected_updates": c.rejected_nonfinite + c.rejected_norm,
        "rejected_nonfinite": c.rejected_nonfinite,
        "rejected_norm": c.rejected_norm,
        "server_nonfinite_skipped": c.server_nonfinite_skipped,
        "global_model_finite": bool(r.final_model is not None and torch.isfinite(r.final_model).all()),
        "history": [asdict(p) for p in r.history],
    }


def _curves(results: dict[str, dict[str, Any]], x: str) -> dict[str, tuple[list[float], list[float]]]:
    return {k: ([p[x] for p in v["history"]], [p["accuracy"] for p in v["history"]]) for k, v in results.items()}


def _without_history(r: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in r.items() if k != "history"}


# --------------------------------------------------------------------------- recipes
def run_fedbuff(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """FedBuff vs FedAvgM vs FedAsync on one population and clock; time/updates/bytes to the target."""
    a = cfg.algorithm
    exp = Experiment(cfg, ctx)
    main, *others = budgets(cfg)
    by_eps: dict[str, dict[str, Any]] = {}
    try:
        results = {label: exp.simulate(label, s, s.concurrency or a.concurrency, main)
                   for label, s in a.servers.items()}
        by_eps[epsilon_key(main)] = results
        again = list(a.dp.epsilons_servers) or list(a.servers)
        for eps in others:  # the comparison at the other budgets of algorithm.dp.epsilons
            key = epsilon_key(eps)
            by_eps[key] = {label: exp.simulate(f"{label}@eps{key}", a.servers[label],
                                               a.servers[label].concurrency or a.concurrency, eps) for label in again}
    finally:
        exp.close()
    ctx.write_json("curves.json", {k: v["history"] for k, v in results.items()})
    title = f"{cfg.dataset.name}: {exp.population.size:,} clients, concurrency {a.concurrency}"
    ctx.plot("accuracy_vs_time", _curves(results, "time"), "simulated time (s)", "test accuracy", title=title)
    ctx.plot("accuracy_vs_bytes", _curves(results, "bytes"), "bytes communicated", "test accuracy", title=title)
    ctx.plot("accuracy_vs_updates", _curves(results, "client_updates"), "client updates", "test accuracy",
             title=title)
    out = {"target_accuracy": a.target_accuracy, "concurrency": a.concurrency,
           "population": exp.population.size, "num_parameters": int(exp.x0.numel()),
           "algorithms": {k: _without_history(v) for k, v in results.items()}}
    if others:
        out["by_epsilon"] = {e: {k: _without_history(v) for k, v in r.items()} for e, r in by_eps.items()}
        curves = {f"{k} ε={e}": v for e, r in by_eps.items() for k, v in r.items()}
        ctx.plot("accuracy_vs_updates_by_epsilon", _curves(curves, "client_updates"), "client updates",
                 "test accuracy", title=f"{title}: user-level DP (δ={cfg.privacy.delta})")
    return with_privacy(out, cfg, results.values())


def with_privacy(out: dict[str, Any], cfg: DictConfig, runs: Any) -> dict[str, Any]:
    """results.json ``privacy`` (from the accountant) when the run trains with DP: the largest spend of any one
    model trained at the ``privacy`` budget (each is a separate model with its own budget) and
    ``epsilon_all_models``, the spend if every one of them were released (their releases composed)."""
    blocks = [r["privacy"] for r in runs if "privacy" in r]
    if not blocks:
        return out
    p = cfg.privacy
    worst = max(blocks, key=lambda b: b["epsilon"])
    plan = [GaussianRelease(str(i), b["noise_multiplier"], b["sample_rate"], b["steps"])
            for i, b in enumerate(blocks) if b["steps"]]
    out["privacy"] = {**{k: worst[k] for k in ("epsilon", "delta", "accountant", "noise_multiplier", "clip_norm",
                                               "steps")},
                      "budget_epsilon": p.epsilon,
                      "epsilon_all_models": epsilon_spent(plan, p.delta, p.accountant) if plan else 0.0}
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _sync_vs_async(exp: Experiment, cfg: DictConfig, c: int, k: int, suffix: str = "",
                   **overrides: Any) -> dict[str, Any]:
    """Sync and async at concurrency ``c`` (FedBuff's K = ``k``): their results, speedup and communication ratio."""
    a = cfg.algorithm
    sync = exp.simulate(f"sync_c{c}{suffix}", a.sync_server, c, cfg.privacy.epsilon, **overrides)
    asyn = exp.simulate(f"async_c{c}{suffix}", OmegaConf.merge(a.async_server, {"buffer_size": k}), c,
                        cfg.privacy.epsilon, **overrides)
    return {"sync": sync, "async": {**asyn, "buffer_size": k},
            "speedup": _ratio(sync["time_to_target"], asyn["time_to_target"]),
            "communication_ratio": _ratio(sync["bytes_to_target"], asyn["bytes_to_target"])}


def run_papaya(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """Sync (FedAvgM, over-selection) vs async (FedBuff) at each concurrency; speedup and communication ratio;
    with ``straggler_sigmas``, the speedup at each concurrency against the device-speed σ."""
    a = cfg.algorithm
    exp = Experiment(cfg, ctx)
    levels = list(zip(a.concurrency_levels, papaya_buffer_sizes(a)))
    by_sigma: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        runs = {c: _sync_vs_async(exp, cfg, c, k) for c, k in levels}
        for sigma in a.straggler_sigmas:
            by_sigma[f"{sigma:g}"] = {str(c): (runs[c] if sigma == a.clock.speed_sigma else
                                               _sync_vs_async(exp, cfg, c, k, f"_sigma{sigma:g}",
                                                              clock={"speed_sigma": sigma}))
                                      for c, k in levels}
    finally:
        exp.close()
    curves = {f"{mode} C={c}": r[mode]["history"] for c, r in runs.items() for mode in ("sync", "async")}
    by_c = {str(c): {"sync": _without_history(r["sync"]), "async": _without_history(r["async"]),
                     "speedup": r["speedup"], "communication_ratio": r["communication_ratio"]} for c, r in runs.items()}
    ctx.write_json("curves.json", curves)
    series = {k: ([p["time"] for p in h], [p["accuracy"] for p in h]) for k, h in curves.items()}
    ctx.plot("accuracy_vs_time", series, "simulated time (s)", "test accuracy",
             title=f"sync vs async, {exp.population.size:,} clients")
    series = {k: ([p["bytes"] for p in h], [p["accuracy"] for p in h]) for k, h in curves.items()}
    ctx.plot("accuracy_vs_bytes", series, "bytes communicated", "test accuracy")
    reached = [c for c in a.concurrency_levels if by_c[str(c)]["speedup"] is not None]
    if reached:
        ctx.plot("ratios_vs_concurrency",
                 {"speedup (sync time / async time)": (reached, [by_c[str(c)]["speedup"] for c in reached]),
                  "communication (sync bytes / async bytes)":
                      (reached, [by_c[str(c)]["communication_ratio"] for c in reached])},
                 "concurrency", "sync / async to target")
    out = {"target_accuracy": a.target_accuracy, "population": exp.population.size,
           "num_parameters": int(exp.x0.numel()), "by_concurrency": by_c}
    if by_sigma:
        out["by_straggler_sigma"] = {sg: {c: {"speedup": r["speedup"], "communication_ratio": r["communication_ratio"],
                                              "sync_time_to_target": r["sync"]["time_to_target"],
                                              "async_time_to_target": r["async"]["time_to_target"]}
                                          for c, r in per_c.items()} for sg, per_c in by_sigma.items()}
        series = {}
        for c, _ in levels:
            pts = [(float(sg), per_c[str(c)]["speedup"]) for sg, per_c in by_sigma.items()
                   if per_c[str(c)]["speedup"] is not None]
            if pts:
                series[f"C={c}"] = ([x for x, _ in pts], [y for _, y in pts])
        if series:
            ctx.plot("speedup_vs_straggler_sigma", series, "device speed lognormal σ (clock.speed_sigma)",
                     "speedup (sync time / async time to target)", title="async speedup against stragglers")
    return with_privacy(out, cfg, [r for level in by_c.values() for r in (level["sync"], level["async"])])
