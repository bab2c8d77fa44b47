"""The device population on the simulated clock: profiles, availability, durations and drop-outs.

Nothing is stored per client. A device's profile is derived from ``(seed, client id)`` whenever it is drawn,
so a population of 10^8 costs no memory:

- compute speed: seconds per example, lognormal(median, ``speed_sigma``) across devices (the heavy tail of
  stragglers);
- network: downlink and uplink bandwidth, lognormal around their medians with one shared factor per device
  (a device on a good connection is good both ways);
- availability: one window per day. Without ``time_zones`` it opens at a phase uniform over the day; with
  them the device lives in a time zone drawn with ``time_zone_weights`` and its window opens around the local
  hour ``window_start_hour`` (normal, ``window_start_sigma_hours``): devices train when idle and charging,
  mostly at night (Papaya, arXiv 2111.04877: availability is diurnal), so the online population follows the
  sun. The simulated clock starts at 00:00 UTC.

A participation runs download → compute → upload on the clock: the model arrives after
``model_bytes / downlink``, compute takes ``examples × seconds_per_example`` (the examples come from the
client's shard), the upload ``upload_bytes / uplink``. The client drops out if its window closes first, or at
an exponential time with ``dropout_rate`` per second.

Two ways to draw the per-device randomness (``hashed``): a numpy Generator per device (the original
stream), or counter-based hashes (:func:`runner.core.seeding.hash_uniform`), which derive a whole block of
check-ins in a few vectorised operations (:class:`CheckInStream`). Both use the same formulas.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from scipy.special import ndtri

from runner.core.seeding import derive_seed, hash_uniform

DAY = 86_400.0


class DeviceProfile(NamedTuple):  # a NamedTuple: immutable and built once per check-in, ~4x faster than a dataclass
    seconds_per_example: float
    bandwidth: float  # downlink bytes / s
    phase: float  # seconds after 00:00 UTC at which the device's availability window opens
    window: float  # seconds of availability per day (DAY = always online)
    uplink: float  # uplink bytes / s


class TaskTiming(NamedTuple):
    """When a client drawn at ``start`` would finish, and whether (and when) it drops out first."""

    compute: float
    network: float
    duration: float
    drop_at: float | None  # absolute time of the drop-out, or None if it reports
    download: float = 0.0  # seconds before compute starts


def _uplink_median(k: Any) -> float:
    up = k.get("uplink_bandwidth") if hasattr(k, "get") else getattr(k, "uplink_bandwidth", None)
    return float(up) if up else float(k.bandwidth)


def profile_arrays(k: Any, z_speed: np.ndarray, z_bw: np.ndarray, u_window: np.ndarray, u_phase: np.ndarray,
                   u_zone: np.ndarray | None) -> dict[str, np.ndarray]:
    """Profiles from standard normal (z) and uniform (u) variates, one per device: the population's formulas."""
    lo, hi = k.window_hours
    window = np.minimum(DAY, 3600.0 * (lo + (hi - lo) * u_window))
    zones = list(k.get("time_zones") or []) if hasattr(k, "get") else list(getattr(k, "time_zones", []) or [])
    if zones and u_zone is not None:
        w = np.asarray(list(k.time_zone_weights) or [1.0] * len(zones), np.float64)
        zone = np.minimum(np.searchsorted(np.cumsum(w / w.sum()), u_zone, side="right"), len(zones) - 1)
        local = k.window_start_hour + k.window_start_sigma_hours * ndtri(u_phase)  # local opening hour
        phase = np.mod(3600.0 * (local - np.asarray(zones, np.float64)[zone]), DAY)
    else:
        phase = DAY * u_phase
    down = k.bandwidth * np.exp(k.bandwidth_sigma * z_bw)
    return {"seconds_per_example": k.seconds_per_example * np.exp(k.speed_sigma * z_speed), "bandwidth": down,
            "phase": phase, "window": window, "uplink": down * (_uplink_median(k) / k.bandwidth)}


class Population:
    """``size`` devices whose profiles and timings follow :class:`ClockConfig` and the seed."""

    def __init__(self, size: int, clock: Any, seed: int, hashed: bool = False):
        self.size, self.clock, self.seed, self.hashed = int(size), clock, seed, hashed

    def profiles(self, cids: np.ndarray) -> dict[str, np.ndarray]:
        """Profiles of many devices at once (arrays keyed like :class:`DeviceProfile`'s fields)."""
        cids = np.asarray(cids, np.int64)
        if self.hashed:
            u = hash_uniform(self.seed, "device", cids[:, None], np.arange(5)[None])
            z = ndtri(u[:, :2])
            return profile_arrays(self.clock, z[:, 0], z[:, 1], u[:, 2], u[:, 3], u[:, 4])
        v = np.empty((len(cids), 5))
        for i, cid in enumerate(cids.tolist()):  # the original per-device stream, in its original order
            rng = np.random.default_rng(derive_seed(self.seed, "device", cid))
            v[i, :2] = rng.standard_normal(2)
            v[i, 2:] = rng.random(3)
        return profile_arrays(self.clock, v[:, 0], v[:, 1], v[:, 2], v[:, 3], v[:, 4])

    def profile(self, cid: int) -> DeviceProfile:
        p = self.profiles(np.array([cid]))
        return DeviceProfile(**{k: float(v[0]) for k, v in p.items()})

    @staticmethod
    def available(p: DeviceProfile, t: float) -> bool:
        return p.window >= DAY or (t - p.phase) % DAY < p.window

    @staticmethod
    def window_closes(p: DeviceProfile, t: float) -> float:
        """The time the availability window open at ``t`` closes (inf for always-online devices)."""
        if p.window >= DAY:
            return math.inf
        return t + p.window - (t - p.phase) % DAY

    def timing_of(self, p: DeviceProfile, start: float, examples: int, down_bytes: float, up_bytes: float,
                  drop_after: float | None) -> TaskTiming:
        """Download → compute → upload from ``start``; drop-out at window close or ``drop_after`` seconds
        (an Exp(dropout_rate) time), whichever comes first."""
        download = down_bytes / p.bandwidth
        compute = examples * p.seconds_per_example
        network = download + up_bytes / p.uplink
        duration = compute + network
        drop = self.window_closes(p, start)
        if drop_after is not None:
            drop = min(drop, start + drop_after)
        return TaskTiming(compute, network, duration, drop if drop < start + duration else None, download)

    def timing(self, cid: int, draw: int, start: float, examples: int, nbytes: float,
               up_bytes: float = 0.0) -> TaskTiming:
        """Timing of client ``cid``'s ``draw``-th participation: ``nbytes`` downloaded, ``up_bytes`` uploaded."""
        after = None
        if self.clock.dropout_rate > 0:
            rng = np.random.default_rng(derive_seed(self.seed, "dropout", cid, draw))
            after = rng.exponential(1.0 / self.clock.dropout_rate)
        return self.timing_of(self.profile(cid), start, examples, nbytes, up_bytes, after)

    def select(self, rng: np.random.Generator, t: float, exclude: set[int] | dict[int, Any],
               max_tries: int = 10_000) -> int:
        """A uniformly drawn device that is online at ``t`` and not already training (a check-in)."""
        for _ in range(max_tries):
            cid = int(rng.integers(self.size))
            if cid not in exclude and self.available(self.profile(cid), t):
                return cid
        raise RuntimeError(f"no available client found at t={t:.0f}s in {max_tries} draws "
                           f"(population {self.size}, {len(exclude)} in flight)")


class CheckInStream:
    """Devices checking in (``hashed`` populations): uniformly drawn ids, each with its profile, its examples of
    work and the uniform behind its drop-out time, derived a block at a time with vectorised operations.

    Candidate j of the stream is the j-th draw of one Generator; its drop-out uniform is a hash of
    (seed, j), so the stream is a pure function of the seed. ``state``/``load`` capture it (the Generator's
    state at the block's start and the position in it; the block is re-derived on load).
    """

    def __init__(self, population: Population, seed: int, work: Any, block: int = 4096):
        self.pop, self.work, self.block = population, work, block
        self.rng = np.random.default_rng(seed)
        self._next_block()

    def _next_block(self) -> None:
        self.block_state = self.rng.bit_generator.state
        self.first = getattr(self, "first", -self.block) + self.block  # stream index of the block's first id
        cids = self.rng.integers(self.pop.size, size=self.block)
        p = self.pop.profiles(cids)
        self.cids = cids.tolist()
        self.items = list(zip(p["seconds_per_example"].tolist(), p["bandwidth"].tolist(), p["phase"].tolist(),
                              p["window"].tolist(), p["uplink"].tolist()))
        self.examples = np.asarray(self.work(cids)).tolist()
        self.u_drop = hash_uniform(self.pop.seed, "dropout", self.first + np.arange(self.block)).tolist()
        self.pos = 0

    def next(self, t: float, busy: dict[int, int], max_tries: int = 100_000) -> tuple[int, DeviceProfile, int,
                                                                                    float]:
        """The next device online at ``t`` and not training: (id, profile, examples, drop-out uniform)."""
        for _ in range(max_tries):
            if self.pos == self.block:
                self._next_block()
            i = self.pos
            self.pos += 1
            cid = self.cids[i]
            spe, down, phase, window, up = self.items[i]
            if cid not in busy and (window >= DAY or (t - phase) % DAY < window):
                return cid, DeviceProfile(spe, down, phase, window, up), self.examples[i], self.u_drop[i]
        raise RuntimeError(f"no available client found at t={t:.0f}s in {max_tries} draws "
                           f"(population {self.pop.size}, {len(busy)} in flight)")

    def state(self) -> dict[str, Any]:
        return {"block_state": self.block_state, "first": self.first, "pos": self.pos}

    def load(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["block_state"]
        self.first = state["first"] - self.block
        self._next_block()
        self.pos = state["pos"]
