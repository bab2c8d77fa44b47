"""Staleness weights, server optimisers and the server modes against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from runner.federated.aggregators import (
    FedAsyncServer,
    FedAvgServer,
    FedBuffServer,
    ServerOptimizer,
    staleness_weight,
)


def test_staleness_weights_match_their_formulas():
    assert staleness_weight(3, "polynomial", 0.5) == pytest.approx(0.5)  # 1/sqrt(1+3)
    assert staleness_weight(0, "polynomial", 0.5) == 1.0
    assert staleness_weight(8, "polynomial", 1.0) == pytest.approx(1 / 9)
    assert staleness_weight(100, "constant") == 1.0
    assert staleness_weight(4, "hinge", a=10, b=4) == 1.0
    assert staleness_weight(6, "hinge", a=10, b=4) == pytest.approx(1 / 21)
    assert staleness_weight(2, "exponential", a=0.5) == pytest.approx(math.exp(-1))


class FakeSim:
    """Just what a server touches: the model, its version, step() and the bookkeeping calls."""

    def __init__(self, x):
        self.x, self.version, self.steps, self.dispatched, self.discarded = x.clone(), 0, [], 0, 0
        self.staleness = []

    def step(self, x):
        self.x, self.version = x.clone(), self.version + 1
        self.steps.append(x.clone())

    def dispatch(self, round=0):
        self.dispatched += 1

    def discard(self, task):
        self.discarded += 1

    def record_staleness(self, tau):
        self.staleness.append(tau)


class T:
    def __init__(self, version, base=None, examples=1):
        self.version, self.base, self.examples = version, base, examples


def test_fedbuff_buffers_k_staleness_weighted_updates_then_steps(make_server_cfg):
    x0 = torch.tensor([1.0, -1.0])
    sim = FakeSim(x0)
    srv = FedBuffServer(make_server_cfg(buffer_size=2, optimizer="sgd", lr=1.0), x0)
    d1, d2 = torch.tensor([0.4, 0.2]), torch.tensor([-0.2, 0.6])
    srv.on_update(sim, T(0), d1)
    assert sim.steps == [] and sim.dispatched == 1  # a new client starts at once; no step before K
    sim.version = 3  # three server steps happened elsewhere meanwhile: the next report has tau = 3
    srv.on_update(sim, T(0), d2)
    expect = x0 + (1.0 * d1 + 0.5 * d2) / 2  # s(0)=1, s(3)=1/sqrt(4)
    assert torch.allclose(sim.x, expect)
    assert sim.staleness == [0, 3] and srv.count == 0 and float(srv.buffer.abs().sum()) == 0.0


def test_fedbuff_max_staleness_discards(make_server_cfg):
    sim = FakeSim(torch.zeros(2))
    srv = FedBuffServer(make_server_cfg(buffer_size=1, max_staleness=2), torch.zeros(2))
    sim.version = 3
    srv.on_update(sim, T(0), torch.ones(2))
    assert sim.discarded == 1 and sim.steps == [] and sim.dispatched == 1


def test_server_momentum_and_adam_by_hand(make_server_cfg):
    x0 = torch.tensor([0.0, 0.0])
    d1, d2 = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.5])
    opt = ServerOptimizer(x0, make_server_cfg(optimizer="momentum", lr=0.5, momentum=0.9))
    x1 = opt.step(x0, d1)
    x2 = opt.step(x1, d2)
    v1 = d1
    v2 = 0.9 * v1 + d2
    assert torch.allclose(x1, x0 + 0.5 * v1) and torch.allclose(x2, x0 + 0.5 * v1 + 0.5 * v2)
    adam = ServerOptimizer(x0, make_server_cfg(optimizer="adam", lr=0.1, betas=[0.9, 0.99], eps=1e-12))
    # Adam's bias-corrected first step is lr * g / |g| with g = -delta
    assert torch.allclose(adam.step(x0, d1), torch.tensor([0.1, -0.1]), atol=1e-6)


def test_fedasync_mixes_with_staleness_decayed_weight(make_server_cfg):
    x = torch.tensor([2.0, 0.0])
    base = torch.tensor([1.0, 1.0])
    delta = torch.tensor([1.0, -1.0])
    sim = FakeSim(x)
    sim.version = 3
    FedAsyncServer(make_server_cfg(mode="fedasync", mixing=0.6, staleness="polynomial", staleness_a=0.5)).on_update(
        sim, T(0, base), delta)
    a = 0.6 * 0.5
    assert torch.allclose(sim.x, (1 - a) * x + a * (base + delta))


def test_fedavg_weighted_mean_with_examples(make_server_cfg):
    x0 = torch.zeros(2)
    srv = FedAvgServer(make_server_cfg(mode="fedavg", weighting="examples", optimizer="sgd", lr=1.0), x0)
    sim = FakeSim(x0)
    sim.in_flight = {0: None}  # the round stays open until it is closed below
    srv.goal = 3
    srv._new_round = lambda sim: None  # only the aggregation is under test here
    srv.on_update(sim, T(0, examples=1), torch.tensor([3.0, 0.0]))
    srv.on_update(sim, T(0, examples=3), torch.tensor([-1.0, 4.0]))
    assert sim.steps == []
    sim.in_flight = {}
    srv._close(sim)
    assert torch.allclose(sim.x, torch.tensor([0.0, 3.0]))  # (1*3 + 3*-1)/4, (0 + 12)/4
