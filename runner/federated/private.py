"""Private aggregation for every server mode: user-level DP and secure aggregation of the clients' updates.

With privacy on, the Δ̄ of one server step is made in three stages (DP-FedAvg, McMahan et al. 2018;
SecAgg, Bonawitz et al. 2017; Papaya's buffered secure aggregation, Huba et al. 2022):

1. Client: clip Δ to L2 norm S (DP; with adaptive clipping also b = 1[‖Δ‖ ≤ S], as one more
   coordinate), then encode it in fixed point and mask it (``pairwise``: Bonawitz's protocol among the
   round's clients) or seal it for the enclave (``trusted_buffer``), or send it as is.
2. Transport: the server code holds the clipped updates (no secure aggregation), or only masked vectors and
   their unmasked sum (pairwise), or only the enclave's release of a full buffer (trusted buffer). FedBuff's
   staleness weight s(τ) ≤ 1 scales each update (in the enclave when the buffer is trusted).
3. Server: Σ + N(0, (z_Δ S)² I), divided by a fixed denominator m (FedAvg: the round's report goal;
   FedBuff: K; FedAsync: 1). The budget accounts each step as one Gaussian release subsampled with
   q = (clients sampled per step) / N, and training stops before a step would exceed ε.

DP model: *central* DP with a server trusted to add the noise. Secure aggregation keeps individual updates
from the server, not the sum: the noise is added by the server after the secure sum (clients add no noise
shares, so this is not distributed DP). Without DP, secure aggregation returns Σ / count (uniform weights),
the plain mean up to the fixed-point rounding.

Accounting assumptions (ours, as in :mod:`runner.privacy.user_dp`): a step's contributors are treated as a
Poisson sample of rate q = sampled / N, independent across steps (FedAvg samples C clients per round;
FedBuff's buffer is treated as K clients sampled per server step, the asynchronous arrival process itself is
not analysed); one client contributes at most one update per step (a second upload of the same client to a
FedBuff buffer is dropped); weights are uniform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from runner.core.errors import ConfigError
from runner.core.seeding import derive_seed
from runner.federated.aggregators import round_goal
from runner.federated.secagg import (
    KEY_BYTES,
    ROUNDS,
    FixedPoint,
    SecAggError,
    SecAggStats,
    SecureAggregation,
    expected_bytes_per_client,
)
from runner.federated.trusted_buffer import TrustedBufferAggregator
from runner.privacy.user_dp import (
    AdaptiveClipping,
    DPFedAvg,
    PrivacyBudget,
    SamplingModel,
    clip_update,
)


# --------------------------------------------------------------------------- what one mode's step samples
@dataclass(frozen=True)
class StepModel:
    """One server step of a mode: clients sampled for it, its fixed denominator m, and the planned steps."""

    sampled: int
    denominator: float
    planned_steps: int


def step_model(server: Any, max_client_updates: int, concurrency: int) -> StepModel:
    """FedAvg: C selected per round, m = the report goal; FedBuff: K and K; FedAsync: 1 and 1."""
    if server.mode == "fedavg":
        goal = round_goal(concurrency, server.over_selection)
        return StepModel(concurrency, goal, math.ceil(max_client_updates / goal))
    if server.mode == "fedbuff":
        return StepModel(server.buffer_size, server.buffer_size, max(1, max_client_updates // server.buffer_size))
    return StepModel(1, 1, max_client_updates)


def check_combination(server: Any, key: str, dp_on: bool, dp: Any, codec_name: str | None = None) -> None:
    """Refuse, in one line each, the combinations of mode, weighting, DP and secure aggregation we do not support."""
    sa = server.secagg
    if sa != "none" and server.mode == "fedasync":
        raise ConfigError(f"{key}: secagg={sa} with mode=fedasync is unsupported: FedAsync applies each update "
                          "alone, so a secure sum of one update reveals it (use mode=fedbuff with trusted_buffer)")
    if sa == "pairwise" and server.mode != "fedavg":
        raise ConfigError(f"{key}: secagg=pairwise needs synchronous rounds (mode=fedavg); asynchronous FedBuff "
                          "aggregates securely with secagg=trusted_buffer")
    if sa == "trusted_buffer" and server.mode != "fedbuff":
        raise ConfigError(f"{key}: secagg=trusted_buffer is buffer-level aggregation (mode=fedbuff); "
                          "synchronous rounds use secagg=pairwise")
    if (sa != "none" or dp_on) and server.weighting != "uniform":
        what = "user-level DP (a fixed denominator)" if dp_on else f"secagg={sa}"
        raise ConfigError(f"{key}.weighting=examples is unsupported with {what}: set {key}.weighting=uniform")
    if sa != "none" and codec_name not in (None, "none"):
        raise ConfigError(f"{key}: secagg={sa} with the update codec '{codec_name}' is unsupported: the server "
                          "must decode each client's upload on its own")
    if dp_on and dp.adaptive_clipping and sa == "trusted_buffer":
        raise ConfigError(f"{key}: adaptive clipping with secagg=trusted_buffer is unsupported (the enclave "
                          "scales the whole upload by s(τ), the clipped count included)")


def make_budget(dp: Any, privacy: Any, epsilon: float, sm: StepModel, population: int, key: str) -> PrivacyBudget:
    """The step budget: z calibrated so the planned steps spend ε, or a fixed z whose planned spend fits ε."""
    try:
        sampling = SamplingModel(sm.sampled, population, sm.planned_steps)
        if dp.noise_multiplier is None:
            return PrivacyBudget.calibrated(epsilon, privacy.delta, sampling, privacy.accountant)
        budget = PrivacyBudget.fixed(dp.noise_multiplier, epsilon, privacy.delta, sampling, privacy.accountant)
    except ValueError as e:
        raise ConfigError(f"{key}: privacy accounting: {e}") from None
    budget.preflight(sm.planned_steps)
    return budget


def count_noise(dp: Any, sm: StepModel) -> float:
    """σ_b of the noised count of unclipped updates (Andrew et al. suggest expected clients / 20)."""
    return dp.count_noise if dp.count_noise is not None else sm.denominator / 20.0


def share_threshold(fraction: float, clients: int, neighbours: int | None) -> int:
    """Shamir threshold t: ``fraction`` of a client's share holders (itself and its ring neighbours, or all)."""
    holders = clients if neighbours is None else min(clients, neighbours + 1)
    return max(1, math.ceil(fraction * holders))


# --------------------------------------------------------------------------- the three transports
class _Plain:
    """No secure aggregation: the server sums the (clipped) updates itself."""

    protocol, extra_rounds = "none", 0

    def __init__(self, dim: int):
        self.total = np.zeros(dim)
        self.stats: list[SecAggStats] = []

    def open(self, cids: list[int], codec: FixedPoint | None) -> None:
        pass

    def add(self, cid: int, x: np.ndarray, s: float) -> None:
        self.total += s * x

    def release(self) -> np.ndarray:
        out, self.total = self.total, np.zeros_like(self.total)
        return out


class _Pairwise:
    """Bonawitz et al.'s protocol over each synchronous round: keys at round start, masked inputs, unmasking."""

    protocol, extra_rounds = "pairwise", len(ROUNDS) - 1

    def __init__(self, dim: int, threshold: float, neighbours: int | None, seed: int):
        self.dim, self.threshold, self.neighbours, self.seed = dim, threshold, neighbours, seed
        self.round: SecureAggregation | None = None
        self.opened = 0
        self.stats: list[SecAggStats] = []

    def open(self, cids: list[int], codec: FixedPoint | None) -> None:
        t = share_threshold(self.threshold, len(cids), self.neighbours)
        self.round = SecureAggregation(cids, self.dim, codec, t, derive_seed(self.seed, "secagg-round", self.opened),
                                       self.neighbours)
        self.opened += 1

    def add(self, cid: int, x: np.ndarray, s: float) -> None:
        self.round.add(cid, s * x)

    def release(self) -> np.ndarray:
        rnd, self.round = self.round, None
        try:
            return rnd.release()
        finally:
            self.stats.append(rnd.stats)


class _TrustedBuffer:
    """Papaya's enclave: sealed uploads, s(τ) applied inside, only a full buffer's sum leaves it."""

    protocol, extra_rounds = "trusted_buffer", 0

    def __init__(self, dim: int, buffer_size: int, seed: int):
        self.dim, self.k, self.seed = dim, buffer_size, seed
        self.tee: TrustedBufferAggregator | None = None
        self.codec: FixedPoint | None = None
        self.opened = 0
        self.stats: list[SecAggStats] = []

    def open(self, cids: list[int], codec: FixedPoint | None) -> None:
        self.codec = codec

    def add(self, cid: int, x: np.ndarray, s: float) -> None:
        if self.tee is None:  # a fresh enclave session per buffer (its key is published with the model)
            self.tee = TrustedBufferAggregator(self.dim, self.k, self.codec, derive_seed(self.seed, "tee", self.opened))
            self.opened += 1
        self.tee.add(x, weight=s)

    def release(self) -> np.ndarray:
        tee, self.tee = self.tee, None
        self.stats.append(tee.stats)
        return tee.release()


# --------------------------------------------------------------------------- the aggregation a server mode uses
class PrivateAggregation:
    """One server mode's private sum: ``open`` a round, ``add`` each upload, ``release`` the step's Δ̄.

    ``epsilon`` None: no DP (secure aggregation only). The noise, the clip norm (adaptive or fixed) and the
    budget live in :class:`~runner.privacy.user_dp.DPFedAvg` / :class:`~runner.privacy.user_dp.PrivacyBudget`.
    """

    def __init__(self, server: Any, sim_cfg: Any, privacy: Any, epsilon: float | None, population: int,
                 concurrency: int, dim: int, seed: int, key: str = "server", codec_name: str | None = None):
        self.mode, self.dim, self.concurrency = server.mode, dim, concurrency
        self.sm = step_model(server, sim_cfg.max_client_updates, concurrency)
        dp = sim_cfg.dp
        check_combination(server, key, epsilon is not None, dp, codec_name or _codec_name(sim_cfg))
        self.budget: PrivacyBudget | None = None
        self.dp: DPFedAvg | None = None
        self.adaptive = epsilon is not None and bool(dp.adaptive_clipping)
        if epsilon is not None:
            self.budget = make_budget(dp, privacy, epsilon, self.sm, population, key)
            z = self.budget.noise_multiplier
            clip = None
            if self.adaptive:
                sigma_b = count_noise(dp, self.sm)
                if not 2 * sigma_b > z:
                    raise ConfigError(f"{key}: adaptive clipping needs 2σ_b > z: count_noise={sigma_b:.3g}, "
                                      f"noise multiplier {z:.3g} (raise algorithm.dp.count_noise)")
                clip = AdaptiveClipping(dp.clip_norm, dp.target_quantile, dp.clip_learning_rate, sigma_b)
            self.dp = DPFedAvg(dim, dp.clip_norm, z, self.sm.denominator,
                               np.random.default_rng(derive_seed(seed, "dp-noise", key)), clip)
        sa = sim_cfg.secure_aggregation
        self.sa, self.max_norm = sa, float(sim_cfg.faults.max_update_norm)
        width = dim + int(self.adaptive)
        if server.secagg == "pairwise":
            t = share_threshold(sa.threshold, concurrency, sa.neighbours)
            if t > self.sm.denominator:
                raise ConfigError(f"{key}: secure_aggregation.threshold={sa.threshold} needs t={t} survivors, but a "
                                  f"round closes after {self.sm.denominator} reports")
            self.transport: Any = _Pairwise(width, sa.threshold, sa.neighbours, derive_seed(seed, "secagg", key))
        elif server.secagg == "trusted_buffer":
            self.transport = _TrustedBuffer(width, server.buffer_size, derive_seed(seed, "secagg", key))
        else:
            self.transport = _Plain(width)
        self.summands = concurrency if server.secagg == "pairwise" else self.sm.sampled
        self.count, self.members = 0, set()
        self.duplicates, self.aborted, self.exhausted = 0, 0, False
        if server.secagg == "trusted_buffer":
            self.transport.open([], self.codec())
        self.overhead = self._overhead(server.secagg)

    # ------------------------------------------------------------------ client side
    def codec(self) -> FixedPoint:
        """Fixed point for this round's summands: coordinates bounded by S (DP; 1 for the count) or the
        largest accepted update norm (no DP)."""
        bound = max(self.dp.clip_norm, 1.0) if self.adaptive else (self.dp.clip_norm if self.dp else self.max_norm)
        if self.sa.frac_bits is None:
            return FixedPoint.fitting(bound, self.summands, self.sa.bits)
        return FixedPoint(bound, self.summands, self.sa.frac_bits, self.sa.bits)

    def open(self, cids: list[int]) -> None:
        """A synchronous round starts with these clients (pairwise SecAgg: they advertise and share keys)."""
        self.count, self.members = 0, set()
        self.transport.open(cids, self.codec() if self.transport.protocol == "pairwise" else None)

    def add(self, cid: int, delta: torch.Tensor, s: float = 1.0) -> None:
        """One client's upload: clip (DP), scale by s(τ), send through the transport."""
        if cid in self.members:  # the accounting assumes one update per client and step
            self.duplicates += 1
            return
        x = delta.detach().double().numpy()
        if self.dp is not None:
            below = float(np.linalg.norm(x) <= self.dp.clip_norm)
            x = clip_update(x, self.dp.clip_norm)
            if self.adaptive:
                x = np.append(x, below)
        self.transport.add(cid, x, s)
        self.members.add(cid)
        self.count += 1

    # ------------------------------------------------------------------ server side
    def release(self, sim: Any) -> torch.Tensor | None:
        """Δ̄ of this step, or None: no step (secure aggregation aborted, or the budget is spent: halts ``sim``)."""
        count, self.count, self.members = self.count, 0, set()
        if self.budget is not None and not self.budget.can_step():
            self.exhausted = True
            sim.halt("privacy budget")
            return None
        try:
            total = self.transport.release()
        except SecAggError:
            self.aborted += 1
            return None
        if self.dp is None:
            return torch.from_numpy(total / count).to(torch.float32)
        below = 0.0
        if self.adaptive:
            total, below = total[:-1], total[-1]
        self.budget.step()
        out = torch.from_numpy(self.dp.privatize_sum(total, round(below))).to(torch.float32)
        if self.transport.protocol == "trusted_buffer":
            self.transport.open([], self.codec())  # the clip norm may have moved
        return out

    def _overhead(self, protocol: str) -> dict[str, float]:
        """What secure aggregation adds to a client's task on the clock (the protocol's cost model)."""
        if protocol == "none":
            return {}
        codec = self.codec()
        if protocol == "pairwise":
            total = expected_bytes_per_client(self.concurrency, self.transport.dim, codec, self.sa.neighbours)
        else:
            total = KEY_BYTES + TrustedBufferAggregator.envelope_bytes(codec, self.transport.dim)
        return {"extra_bytes": float(total - 4 * self.dim),
                "extra_seconds": self.transport.extra_rounds * float(self.sa.round_trip_seconds)}

    # ------------------------------------------------------------------ results
    def results(self) -> dict[str, Any]:
        """``privacy`` (from the accountant) and ``secagg`` (from the protocol runs) blocks of a mode's results."""
        out: dict[str, Any] = {}
        if self.budget is not None:
            b = self.budget
            out["privacy"] = {**b.as_results(self.dp.clip_norm), "sample_rate": b.sample_rate,
                              "denominator": self.sm.denominator, "planned_steps": self.sm.planned_steps,
                              "update_noise_multiplier": self.dp.update_noise, "adaptive_clipping": self.adaptive,
                              "stopped_by_budget": self.exhausted,
                              "duplicates_dropped": self.duplicates}
        stats = self.transport.stats
        if self.transport.protocol != "none":
            out["secagg"] = {
                "protocol": self.transport.protocol,
                "bytes_per_client": float(np.mean([s.bytes_per_client for s in stats])) if stats else 0.0,
                "plaintext_bytes_per_client": 4.0 * self.dim,  # the float32 update it replaces
                "rounds": max((s.rounds for s in stats), default=0),
                "dropouts_recovered": int(sum(s.dropouts_recovered for s in stats)),
                "aggregations": len(stats),
                "aborted": self.aborted,
                "charged_extra_bytes_per_client": self.overhead["extra_bytes"],
                "charged_extra_seconds_per_client": self.overhead["extra_seconds"],
                "frac_bits": self.codec().frac_bits,
            }
        return out


def _codec_name(sim_cfg: Any) -> str | None:
    codec = sim_cfg.client.get("codec") if hasattr(sim_cfg.client, "get") else None
    return None if codec is None else codec.get("name", "none")


def make_aggregation(server: Any, sim_cfg: Any, privacy: Any, epsilon: float | None, population: int,
                     concurrency: int, dim: int, seed: int, key: str = "server",
                     codec_name: str | None = None) -> PrivateAggregation | None:
    """The private aggregation a server mode needs, or None for the plain (non-private) mean. ``codec_name``:
    the clients' update codec, when the trainer has one (FedSynth, random masking)."""
    if epsilon is None and server.secagg == "none":
        return None
    return PrivateAggregation(server, sim_cfg, privacy, epsilon, population, concurrency, dim, seed, key, codec_name)


def preflight(cfg: Any, runs: list[tuple[str, Any, int]], epsilons: list[float | None]) -> None:
    """Check every (server mode, budget) a run will train before anything runs: combinations, calibration,
    a fixed z's planned spend (ConfigError, one line). The population is ``dataset.num_clients`` when the
    dataset declares it (file datasets are checked when they are loaded)."""
    from omegaconf import OmegaConf

    population = cfg.dataset.get("num_clients")
    delta = cfg.privacy.get("delta")
    if population and delta is not None and any(e is not None for e in epsilons) and delta >= 1.0 / population:
        raise ConfigError(f"privacy.delta={delta:g} must be < 1/N = {1.0 / population:.3g} for a population of "
                          f"N={int(population):,} clients (δ >= 1/N lets the mechanism expose some user outright); "
                          f"set privacy.delta={10 ** math.floor(math.log10(0.1 / population)):.0e} or smaller")
    for key, server, concurrency in runs:
        sim_cfg = OmegaConf.merge(cfg.algorithm, {"concurrency": concurrency})
        for eps in epsilons:
            if population is None:
                check_combination(server, key, eps is not None, sim_cfg.dp, _codec_name(sim_cfg))
            else:
                make_aggregation(server, sim_cfg, cfg.privacy, eps, int(population), concurrency, 1, 0, key)
