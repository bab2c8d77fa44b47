"""The device population on the simulated clock: profiles, availability, durations and drop-outs.

Nothing is stored per client. A device's profile (speed, bandwidth, daily availability window, phase)
is derived from ``(seed, client id)`` whenever it is drawn, so a population of 10^8 costs no memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from runner.core.seeding import derive_seed

DAY = 86_400.0


@dataclass(frozen=True)
class DeviceProfile:
    seconds_per_example: float
    bandwidth: float  # bytes / s
    phase: float  # seconds into the day at which the device's availability window opens
    window: float  # seconds of availability per day (DAY = always online)


@dataclass(frozen=True)
class TaskTiming:
    """When a client drawn at ``start`` would finish, and whether (and when) it drops out first."""

    compute: float
    network: float
    duration: float
    drop_at: float | None  # absolute time of the drop-out, or None if it reports


class Population:
    """``size`` devices whose profiles and timings follow :class:`ClockConfig` and the seed."""

    def __init__(self, size: int, clock: Any, seed: int):
        self.size, self.clock, self.seed = int(size), clock, seed

    def profile(self, cid: int) -> DeviceProfile:
        k = self.clock
        rng = np.random.default_rng(derive_seed(self.seed, "device", cid))
        spe = k.seconds_per_example * math.exp(k.speed_sigma * rng.standard_normal())
        bw = k.bandwidth * math.exp(k.bandwidth_sigma * rng.standard_normal())
        lo, hi = k.window_hours
        window = min(DAY, 3600.0 * rng.uniform(lo, hi))
        return DeviceProfile(spe, bw, rng.uniform(0.0, DAY), window)

    @staticmethod
    def available(p: DeviceProfile, t: float) -> bool:
        return p.window >= DAY or (t - p.phase) % DAY < p.window

    @staticmethod
    def window_closes(p: DeviceProfile, t: float) -> float:
        """The time the availability window open at ``t`` closes (inf for always-online devices)."""
        if p.window >= DAY:
            return math.inf
        return t + p.window - (t - p.phase) % DAY

    def timing(self, cid: int, draw: int, start: float, examples: int, nbytes: float) -> TaskTiming:
        """Duration = examples × s/example + bytes / bandwidth; drop-out at window close or an Exp(rate) time."""
        p = self.profile(cid)
        compute = examples * p.seconds_per_example
        network = nbytes / p.bandwidth
        duration = compute + network
        drop = self.window_closes(p, start)
        if self.clock.dropout_rate > 0:
            rng = np.random.default_rng(derive_seed(self.seed, "dropout", cid, draw))
            drop = min(drop, start + rng.exponential(1.0 / self.clock.dropout_rate))
        return TaskTiming(compute, network, duration, drop if drop < start + duration else None)

    def select(self, rng: np.random.Generator, t: float, exclude: set[int] | dict[int, Any],
               max_tries: int = 10_000) -> int:
        """A uniformly drawn device that is online at ``t`` and not already training (a check-in)."""
        for _ in range(max_tries):
            cid = int(rng.integers(self.size))
            if cid not in exclude and self.available(self.profile(cid), t):
                return cid
        raise RuntimeError(f"no available client found at t={t:.0f}s in {max_tries} draws "
                           f"(population {self.size}, {len(exclude)} in flight)")

