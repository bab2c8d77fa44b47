"""Config schemas of the federated simulator: client training, device clock, faults, backend, server modes.

The algorithm schemas (``fedbuff``, ``papaya``) compose these; their fields are exactly the keys of
``conf/algorithm/fedbuff.yaml`` / ``papaya.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from runner.core.errors import ConfigError


@dataclass
class ClientConfig:
    """Local SGD on the client's shard: ``local_steps`` minibatch steps, or ``local_epochs`` passes if set."""

    local_steps: int = 5
    local_epochs: int | None = None
    batch_size: int = 16
    lr: float = 0.1
    vectorize: bool = True  # train many clients at once with torch.func.vmap (same updates as one by one)
    max_batch: int = 256  # most clients trained in one vectorised call


@dataclass
class ClockConfig:
    """Device durations and availability (all times in simulated seconds; :mod:`runner.federated.population`).

    A participation is download (model bytes / downlink) → compute (examples processed × the device's
    seconds per example, lognormal across devices) → upload (update bytes / uplink); down- and uplink are
    lognormal around their medians. Availability is diurnal: a device is online for ``window_hours`` (uniform
    in the range) each day, from a phase uniform over the day, or, with ``time_zones``, from around the local
    hour ``window_start_hour`` in a time zone drawn with ``time_zone_weights`` (the clock starts at 00:00 UTC).
    A client drops out if its window closes mid-training or at an exponential time with ``dropout_rate``.
    """

    seconds_per_example: float = 1.0  # median across devices
    speed_sigma: float = 1.0  # lognormal σ of seconds per example (heavy tail of stragglers)
    bandwidth: float = 1.0e6  # median downlink bytes per second
    uplink_bandwidth: float | None = None  # median uplink bytes per second; null: the downlink's
    bandwidth_sigma: float = 0.5
    window_hours: list[float] = field(default_factory=lambda: [24.0, 24.0])  # [min, max]; 24 = always online
    time_zones: list[float] = field(default_factory=list)  # UTC offsets (hours); empty: uniform phase
    time_zone_weights: list[float] = field(default_factory=list)  # share of devices per zone; empty: equal
    window_start_hour: float = 22.0  # local hour the window opens (mean), with time_zones
    window_start_sigma_hours: float = 1.5
    dropout_rate: float = 0.0  # per simulated second of training


@dataclass
class FaultConfig:
    """Update validation, and injected faults to exercise it."""

    max_update_norm: float = 1.0e3  # updates with a larger L2 norm (or any NaN/inf) are rejected
    nan_rate: float = 0.0  # fraction of clients that upload NaNs
    blowup_rate: float = 0.0  # fraction of clients that upload their update × 1e6


@dataclass
class BackendConfig:
    """Where client training runs: ``local`` (this process) or ``ray`` (a Ray cluster, the ``dist`` extra)."""

    name: str = "local"
    clients_per_task: int = 64  # clients per vectorised call / Ray task (same chunks on both backends)
    num_workers: int = 2  # ray actors
    in_flight: int = 2  # ray: tasks submitted to an actor and not yet collected (one running, the rest queued)
    address: str | None = None  # ray cluster address; null starts a local Ray


@dataclass
class ServerConfig:
    """One server mode. ``fedavg``: synchronous rounds (FedAvgM with optimizer=momentum); ``fedasync``:
    each update mixed in with weight mixing·s(τ); ``fedbuff``: buffer of K staleness-weighted updates."""

    mode: str = "fedbuff"  # fedavg | fedasync | fedbuff
    concurrency: int | None = None  # clients training at once (fedavg: clients selected per round); null = run's
    buffer_size: int = 10  # fedbuff K
    over_selection: float = 0.3  # fedavg: a round selects C clients and closes after C/(1+over_selection) reports
    round_timeout: float | None = None  # fedavg: close a round after this many seconds with what has arrived
    weighting: str = "uniform"  # uniform | examples (FedAvg's n_k weights)
    staleness: str = "polynomial"  # constant | polynomial (1+τ)^-a | hinge | exponential e^{-aτ}
    staleness_a: float = 0.5
    staleness_b: float = 4.0  # hinge: weight 1 up to τ = b, then 1/(a(τ-b)+1)
    max_staleness: int | None = None  # async: updates staler than this are discarded
    mixing: float = 0.5  # fedasync α
    optimizer: str = "sgd"  # sgd | momentum | adam (server step on the pseudo-gradient -Δ̄)
    lr: float = 1.0
    momentum: float = 0.9
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1.0e-8
    secagg: str = "none"  # none | pairwise (fedavg: Bonawitz et al.) | trusted_buffer (fedbuff: Papaya's enclave)


@dataclass
class DPConfig:
    """User-level DP for every server mode (:mod:`runner.federated.private`), on when ``privacy.epsilon`` is set.

    Clients clip their update to L2 norm S; the server adds N(0, (zS)² I) to each step's sum and divides by
    a fixed denominator. z is calibrated so that the planned server steps spend the ``privacy`` budget, or
    fixed here (preflight refuses a z whose planned spend exceeds ε).
    """

    clip_norm: float = 1.0  # S (the initial S with adaptive clipping)
    noise_multiplier: float | None = None  # z; null: calibrated to the privacy budget
    adaptive_clipping: bool = False  # Andrew et al. 2021: S tracks the target_quantile of the update norms
    target_quantile: float = 0.5
    clip_learning_rate: float = 0.2
    count_noise: float | None = None  # σ_b of the noised count of unclipped updates; null: denominator / 20
    epsilons: list[float] = field(default_factory=list)  # budgets compared in one run (by_epsilon); .inf: no DP
    epsilons_servers: list[str] = field(default_factory=list)  # servers re-run at those budgets (empty: all)


@dataclass
class SecAggConfig:
    """Secure-aggregation protocol parameters (:mod:`runner.federated.secagg`, :mod:`~.trusted_buffer`)."""

    threshold: float = 0.5  # pairwise: Shamir threshold t as a fraction of a client's share holders
    neighbours: int | None = None  # pairwise: SecAgg+ ring degree; null: every pair (Bonawitz et al.)
    frac_bits: int | None = None  # fixed-point fraction bits; null: the finest whose sum cannot wrap
    bits: int = 64  # the field Z_{2^bits}
    round_trip_seconds: float = 1.0  # simulated latency charged per protocol round beyond the plain upload


@dataclass
class SimulationConfig:
    """What every federated comparison shares: population clock, client training, faults, budget, metrics."""

    concurrency: int = 50
    target_accuracy: float = 0.85
    max_client_updates: int = 3000  # per algorithm: stop after this many uploads reach the server
    max_sim_time: float | None = None  # per algorithm: stop at this simulated time (seconds)
    stop_at_target: bool = False  # stop an algorithm once it reaches target_accuracy
    eval_interval: float | None = None  # null: evaluate every server model version; s: on the grid 0, s, 2s, ...
    checkpoint_every: int = 100  # server steps between in-simulation checkpoints (0: only finished stages)
    client: ClientConfig = field(default_factory=ClientConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)
    backend: BackendConfig = field(default_factory=BackendConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    secure_aggregation: SecAggConfig = field(default_factory=SecAggConfig)


_MODES = ("fedavg", "fedasync", "fedbuff")
_STALENESS = ("constant", "polynomial", "hinge", "exponential")
_OPTIMIZERS = ("sgd", "momentum", "adam")
_SECAGG = ("none", "pairwise", "trusted_buffer")


def check_server(s: Any, key: str) -> None:
    """Field-by-field checks of one :class:`ServerConfig` found at ``key``."""
    for name, value, allowed in (("mode", s.mode, _MODES), ("staleness", s.staleness, _STALENESS),
                                 ("optimizer", s.optimizer, _OPTIMIZERS), ("weighting", s.weighting,
                                                                          ("uniform", "examples"))):
        if value not in allowed:
            raise ConfigError(f"{key}.{name}='{value}' must be one of {', '.join(allowed)}")
    if s.concurrency is not None and s.concurrency < 1:
        raise ConfigError(f"{key}.concurrency={s.concurrency} must be >= 1")
    if s.buffer_size < 1:
        raise ConfigError(f"{key}.buffer_size={s.buffer_size} must be >= 1")
    if s.over_selection < 0:
        raise ConfigError(f"{key}.over_selection={s.over_selection} must be >= 0")
    if not 0 < s.mixing <= 1:
        raise ConfigError(f"{key}.mixing={s.mixing} must be in (0, 1]")
    if s.lr <= 0 or not 0 <= s.momentum < 1:
        raise ConfigError(f"{key}.lr={s.lr} must be > 0 and {key}.momentum={s.momentum} in [0, 1)")
    if s.staleness_a < 0 or s.staleness_b < 0:
        raise ConfigError(f"{key}.staleness_a/staleness_b must be >= 0")
    if s.max_staleness is not None and s.max_staleness < 0:
        raise ConfigError(f"{key}.max_staleness={s.max_staleness} must be >= 0")
    if len(s.betas) != 2 or not all(0 <= b < 1 for b in s.betas):
        raise ConfigError(f"{key}.betas={list(s.betas)} must be two values in [0, 1)")
    if s.secagg not in _SECAGG:
        raise ConfigError(f"{key}.secagg='{s.secagg}' must be one of {', '.join(_SECAGG)}")


def check_simulation(cfg: DictConfig) -> None:
    """Checks shared by every federated algorithm config, and the dataset/model groups they need."""
    from runner.data.federated import FederatedDatasetConfig
    from runner.federated.models import FLModelConfig

    a = cfg.algorithm
    if not hasattr(cfg.dataset, "kind"):
        raise ConfigError(f"dataset={cfg.dataset.name} is not a federated dataset (use dataset=fl_digits, ...)")
    if not hasattr(cfg.model, "arch"):
        raise ConfigError(f"model={cfg.model.name} is not a federated model (use model=fl_mlp, ...)")
    FederatedDatasetConfig.check(cfg.dataset)
    FLModelConfig.check(cfg.model)
    for key in ("concurrency", "max_client_updates"):
        if a[key] < 1:
            raise ConfigError(f"algorithm.{key}={a[key]} must be >= 1")
    if a.eval_interval is not None and a.eval_interval <= 0:
        raise ConfigError(f"algorithm.eval_interval={a.eval_interval} must be > 0 (seconds) or null (every step)")
    if a.checkpoint_every < 0:
        raise ConfigError(f"algorithm.checkpoint_every={a.checkpoint_every} must be >= 0")
    if not 0 < a.target_accuracy <= 1:
        raise ConfigError(f"algorithm.target_accuracy={a.target_accuracy} must be in (0, 1]")
    c = a.client
    if c.local_steps < 1 or c.batch_size < 1 or c.lr <= 0 or c.max_batch < 1:
        raise ConfigError("algorithm.client.local_steps, batch_size, max_batch must be >= 1 and lr > 0")
    if c.local_epochs is not None and c.local_epochs < 1:
        raise ConfigError(f"algorithm.client.local_epochs={c.local_epochs} must be >= 1 or null")
    k = a.clock
    lo, hi = (list(k.window_hours) + [None, None])[:2]
    if lo is None or hi is None or not 0 < lo <= hi <= 24:
        raise ConfigError(f"algorithm.clock.window_hours={list(k.window_hours)} must be [min, max], "
                          "0 < min <= max <= 24")
    if k.seconds_per_example <= 0 or k.bandwidth <= 0 or k.speed_sigma < 0 or k.bandwidth_sigma < 0:
        raise ConfigError("algorithm.clock: seconds_per_example and bandwidth must be > 0, sigmas >= 0")
    if k.dropout_rate < 0:
        raise ConfigError(f"algorithm.clock.dropout_rate={k.dropout_rate} must be >= 0")
    if k.uplink_bandwidth is not None and k.uplink_bandwidth <= 0:
        raise ConfigError(f"algorithm.clock.uplink_bandwidth={k.uplink_bandwidth} must be > 0 or null")
    if k.time_zone_weights and (len(k.time_zone_weights) != len(k.time_zones) or min(k.time_zone_weights) < 0
                                or sum(k.time_zone_weights) <= 0):
        raise ConfigError("algorithm.clock.time_zone_weights must be one weight >= 0 per time zone (not all 0)")
    if any(not -12 <= z <= 14 for z in k.time_zones) or k.window_start_sigma_hours < 0:
        raise ConfigError("algorithm.clock.time_zones must be UTC offsets in [-12, 14] hours and "
                          "window_start_sigma_hours >= 0")
    f = a.faults
    if f.max_update_norm <= 0 or not (0 <= f.nan_rate and 0 <= f.blowup_rate and f.nan_rate + f.blowup_rate <= 1):
        raise ConfigError("algorithm.faults: max_update_norm must be > 0 and nan_rate + blowup_rate in [0, 1]")
    if a.backend.name not in ("local", "ray"):
        raise ConfigError(f"algorithm.backend.name='{a.backend.name}' must be local or ray")
    if a.backend.clients_per_task < 1 or a.backend.num_workers < 1 or a.backend.in_flight < 1:
        raise ConfigError("algorithm.backend.clients_per_task, num_workers and in_flight must be >= 1")
    b = a.backend
    if b.name == "ray" and c.max_batch < b.clients_per_task * b.num_workers:
        raise ConfigError(f"algorithm.client.max_batch={c.max_batch} must be >= backend.clients_per_task × "
                          f"num_workers = {b.clients_per_task * b.num_workers} with the ray backend (the clients "
                          "trained together are cut into tasks of clients_per_task; fewer tasks than actors idle them)")
    d = a.dp
    if d.clip_norm <= 0 or (d.noise_multiplier is not None and d.noise_multiplier <= 0):
        raise ConfigError("algorithm.dp: clip_norm must be > 0 and noise_multiplier > 0 or null")
    if not 0 < d.target_quantile < 1 or d.clip_learning_rate <= 0 or (d.count_noise is not None and
                                                                      d.count_noise <= 0):
        raise ConfigError("algorithm.dp: target_quantile must be in (0, 1), clip_learning_rate > 0, count_noise > 0")
    if any(not e > 0 for e in d.epsilons):
        raise ConfigError(f"algorithm.dp.epsilons={list(d.epsilons)} must be > 0 (.inf: no DP)")
    if (d.noise_multiplier is not None or d.epsilons) and cfg.privacy.delta is None:
        raise ConfigError("algorithm.dp.noise_multiplier / epsilons need privacy.delta: choose a budget "
                          "(e.g. privacy=eps1)")
    sa = a.secure_aggregation
    if not 0 < sa.threshold <= 1 or not 2 <= sa.bits <= 64 or sa.round_trip_seconds < 0:
        raise ConfigError("algorithm.secure_aggregation: threshold must be in (0, 1], bits in [2, 64], "
                          "round_trip_seconds >= 0")
    if sa.frac_bits is not None and sa.frac_bits < 0:
        raise ConfigError(f"algorithm.secure_aggregation.frac_bits={sa.frac_bits} must be >= 0 or null")
