"""Private FL in the simulator: SecAgg gives the plain model up to its fixed-point error, DP noise and budget
wiring against independent references, combinations refused at preflight, and a private recipe run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from runner.core.cli import compose_recipe, run_recipe
from runner.core.errors import ConfigError
from runner.core.seeding import derive_seed
from runner.federated.aggregators import make_server
from runner.federated.backends import LocalBackend, build_trainer
from runner.federated.population import Population
from runner.federated.private import make_aggregation
from runner.federated.secagg import expected_bytes_per_client
from runner.federated.simulator import Simulator
from runner.privacy.user_dp import clip_update

PRIVACY = OmegaConf.create({"epsilon": 1.0, "delta": 3e-6, "accountant": "rdp"})


def simulate(make_spec, cfg, server, secagg=None, epsilon=None, seed=0):
    """One simulation of ``server`` (with ``secagg`` and/or DP at ``epsilon``); the result and its aggregation."""
    trainer = build_trainer(make_spec(seed))
    x0 = trainer.space.flatten(trainer.model)
    xt, yt = trainer.data.test_set()
    pop = Population(trainer.data.num_clients, cfg.clock, seed)
    sim = Simulator(x0, trainer, LocalBackend(trainer, 64), pop, cfg, seed, lambda x: trainer.evaluate(x, xt, yt))
    if secagg is not None:
        server = OmegaConf.merge(server, {"secagg": secagg})
    agg = make_aggregation(server, cfg, PRIVACY, epsilon, pop.size, cfg.concurrency, x0.numel(), seed, "test")
    return sim.run(make_server(server, x0, agg)), agg, sim


@pytest.mark.parametrize("mode, secagg", [("fedbuff", "trusted_buffer"), ("fedavg", "pairwise")])
def test_secure_aggregation_gives_the_plain_model_up_to_the_encoding_error(make_spec, make_sim_cfg, make_server_cfg,
                                                                           mode, secagg):
    f = 14  # coarse on purpose: 2^-f is far above float32 rounding, so the bound is what is tested
    server = make_server_cfg(mode=mode, buffer_size=5, over_selection=0.6, weighting="uniform",
                             optimizer="momentum" if mode == "fedavg" else "sgd", lr=2.0)
    one_step = 5 if mode == "fedbuff" else 7  # K uploads / a round's goal ⌈10 / 1.6⌉: exactly one server step
    cfg = make_sim_cfg(concurrency=10, max_client_updates=one_step, secure_aggregation={"frac_bits": f})
    plain, _, _ = simulate(make_spec, cfg, server)
    sec, agg, sim = simulate(make_spec, cfg, server, secagg)
    assert plain.counters.server_steps == sec.counters.server_steps == 1
    # per coordinate, rounding to nearest costs ≤ 2^-(f+1) per update; the enclave re-encodes s(τ)·x once more.
    # The mean of n such sums is off by ≤ 2^-(f+1) (pairwise) or 2^-f (trusted buffer), times the server lr.
    bound = server.lr * 2.0 ** -(f + (0 if secagg == "trusted_buffer" else 1)) + 1e-6
    diff = float((sec.final_model - plain.final_model).abs().max())
    assert 0 < diff <= bound, (diff, bound)
    s = agg.results()["secagg"]
    assert s["protocol"] == secagg and s["aggregations"] == 1 and s["aborted"] == 0
    d = plain.final_model.numel()
    if secagg == "pairwise":  # the 3 cancelled stragglers shared keys and never sent: recovered from shares
        assert s["rounds"] == 4 and s["dropouts_recovered"] == sec.counters.stragglers_cancelled == 3
        codec_bytes = 0.7 * 8 * d  # 7 of 10 sent a masked vector of 64-bit field elements; stragglers sent less
        assert s["charged_extra_bytes_per_client"] == expected_bytes_per_client(10, d, agg.codec()) - 4 * d
        assert codec_bytes < s["bytes_per_client"] < expected_bytes_per_client(10, d, agg.codec())
    else:
        assert s["rounds"] == 1 and s["bytes_per_client"] == 32 + 12 + 8 * d + 16 + 32  # envelope + enclave key
    # the clock and the byte counters carry the protocol's cost model
    assert sec.counters.bytes_secagg == pytest.approx(sec.counters.client_starts * agg.overhead["extra_bytes"])
    assert sec.end_time > plain.end_time


def test_secure_aggregation_over_many_steps_trains_the_same_model(make_spec, make_sim_cfg, make_server_cfg):
    server = make_server_cfg(mode="fedbuff", buffer_size=4, lr=2.0)
    cfg = make_sim_cfg(concurrency=8, max_client_updates=60)  # the finest encoding that cannot wrap
    plain, _, _ = simulate(make_spec, cfg, server)
    sec, _, _ = simulate(make_spec, cfg, server, "trusted_buffer")
    assert sec.counters.server_steps == plain.counters.server_steps == 15
    assert float((sec.final_model - plain.final_model).abs().max()) < 1e-4  # float32 rounding only
    assert sec.history[-1].accuracy == pytest.approx(plain.history[-1].accuracy, abs=0.01)


def test_dp_fedbuff_step_is_the_noised_clipped_sum_over_k(make_spec, make_sim_cfg, make_server_cfg):
    """Wiring against an independent recomputation: Δ̄ = (Σ s(τ) clip(Δ, S) + N(0, (zS)²)) / K, same noise stream."""
    server = make_server_cfg(mode="fedbuff", buffer_size=4, lr=1.0)
    cfg = make_sim_cfg(concurrency=4, max_client_updates=4, dp={"clip_norm": 0.05})
    seen = []
    agg = make_aggregation(server, cfg, PRIVACY, 1.0, 500, 4, 10, 0, "k")
    rng = np.random.default_rng(7)
    ups = [torch.from_numpy(rng.normal(size=10) * r).float() for r in (0.01, 0.1, 1.0, 3.0)]
    weights = [1.0, 0.7, 0.5, 1.0]
    for i, (u, w) in enumerate(zip(ups, weights)):
        agg.add(i, u, w)
    agg.add(2, ups[0], 1.0)  # the same client again in this buffer: dropped (one update per client and step)

    class Sim:
        def halt(self, reason):
            seen.append(reason)

    out = agg.release(Sim()).double().numpy()
    z, s = agg.budget.noise_multiplier, 0.05
    total = sum(w * clip_update(u.double().numpy(), s) for u, w in zip(ups, weights))
    noise = np.random.default_rng(derive_seed(0, "dp-noise", "k")).normal(0.0, z * s, size=10)
    np.testing.assert_allclose(out, (total + noise) / 4, rtol=1e-6, atol=1e-9)
    assert agg.duplicates == 1 and agg.budget.steps == 1 and not seen
    p = agg.results()["privacy"]
    assert p["sample_rate"] == 4 / 500 and p["denominator"] == 4 and p["planned_steps"] == 1


def test_dp_fedavg_stops_before_the_budget_is_exceeded(make_spec, make_sim_cfg, make_server_cfg):
    """Drop-outs leave rounds short of their goal, so more rounds are needed than planned: the budget stops it."""
    from opacus.accountants import RDPAccountant

    server = make_server_cfg(mode="fedavg", over_selection=0.0, weighting="uniform", optimizer="momentum", lr=1.0)
    cfg = make_sim_cfg(concurrency=10, max_client_updates=60, clock={"dropout_rate": 2e-3})
    res, agg, sim = simulate(make_spec, cfg, server, epsilon=1.0)
    p = agg.results()["privacy"]
    assert sim.halted == "privacy budget" and p["stopped_by_budget"]
    assert p["steps"] == res.counters.server_steps == agg.budget.max_steps == p["planned_steps"] == 6
    assert res.counters.client_updates < 60
    # ε from Opacus' accountant called directly, for the steps taken and for one more
    for steps, holds in ((p["steps"], True), (p["steps"] + 1, False)):
        acc = RDPAccountant()
        acc.history = [(p["noise_multiplier"], 10 / 500, steps)]
        eps = acc.get_epsilon(3e-6)
        assert (eps <= 1.0) is holds
        if holds:
            assert p["epsilon"] == pytest.approx(eps, rel=1e-9) and eps > 0.9


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.servers.fedasync.secagg=pairwise"], "mode=fedasync is unsupported"),
    (["algorithm.servers.fedbuff.secagg=pairwise"], "secagg=pairwise needs synchronous rounds"),
    (["algorithm.servers.fedavgm.secagg=trusted_buffer"], "secagg=trusted_buffer is buffer-level"),
    (["privacy=eps1", "algorithm.servers.fedavgm.weighting=examples"], "weighting=examples is unsupported"),
    (["privacy=eps1", "algorithm.dp.noise_multiplier=0.3"], "steps fit"),
    (["privacy=eps1", "algorithm.dp.adaptive_clipping=true", "algorithm.servers.fedbuff.secagg=trusted_buffer"],
     "adaptive clipping with secagg=trusted_buffer"),
    (["privacy=eps1", "algorithm.dp.adaptive_clipping=true", "algorithm.dp.count_noise=0.1"], "2σ_b > z"),
    (["privacy=none", "algorithm.dp.noise_multiplier=1.0"], "need privacy.delta"),
])
def test_unsupported_combinations_fail_at_preflight(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose_recipe("fedbuff", overrides)


def test_private_fedbuff_recipe_reports_the_accountant(tmp_path):
    """``+recipe=fedbuff privacy=eps1`` (private setting, smoke sizes): every mode within ε, z from calibration."""
    from runner.privacy.user_dp import SamplingModel, epsilon_for_noise

    r = run_recipe("fedbuff", ["privacy=eps1", "run.smoke=true", "algorithm.max_client_updates=200",
                               "algorithm.servers.fedbuff.secagg=trusted_buffer",
                               "algorithm.servers.fedavgm.secagg=pairwise"], run_dir=tmp_path)
    for name, a in r["algorithms"].items():
        p = a["privacy"]
        assert p["epsilon"] <= 1.0 and p["steps"] == a["server_steps"] > 0, name
        planned = SamplingModel(p["sample_rate"] * r["population"], r["population"], p["planned_steps"])
        assert 0.98 <= epsilon_for_noise(p["noise_multiplier"], 3e-6, planned) <= 1.0, name  # z spends ε as planned
        assert a["global_model_finite"], name
    assert r["algorithms"]["fedbuff"]["secagg"]["protocol"] == "trusted_buffer"
    assert r["algorithms"]["fedavgm"]["secagg"]["dropouts_recovered"] > 0
    assert "secagg" not in r["algorithms"]["fedasync"]
    top = r["privacy"]
    assert top["epsilon"] == max(a["privacy"]["epsilon"] for a in r["algorithms"].values())
    assert top["epsilon"] <= top["budget_epsilon"] == 1.0 < top["epsilon_all_models"]
    assert math.isclose(r["algorithms"]["fedbuff"]["privacy"]["sample_rate"], 20 / 10_000)  # K / N, private setting


def test_dp_simulation_resumes_from_a_checkpoint_to_the_same_model_and_spend(make_spec, make_sim_cfg, make_server_cfg):
    """The noise stream and the budget are part of the checkpointed server state."""
    import io

    server = make_server_cfg(mode="fedbuff", buffer_size=4, lr=1.0)
    cfg = make_sim_cfg(concurrency=8, max_client_updates=48, checkpoint_every=5, dp={"clip_norm": 0.3})
    trainer = build_trainer(make_spec(0))
    x0 = trainer.space.flatten(trainer.model)
    xt, yt = trainer.data.test_set()

    def fresh():
        pop = Population(trainer.data.num_clients, cfg.clock, 0)
        sim = Simulator(x0, trainer, LocalBackend(trainer, 64), pop, cfg, 0, lambda x: trainer.evaluate(x, xt, yt))
        agg = make_aggregation(server, cfg, PRIVACY, 1.0, pop.size, 8, x0.numel(), 0, "resume")
        return sim, make_server(server, x0, agg)

    saved = {}

    def checkpoint(steps, state):
        if steps == 5:
            buf = io.BytesIO()
            torch.save(state, buf)
            saved["state"] = buf.getvalue()

    sim, srv = fresh()
    full = sim.run(srv, checkpoint=checkpoint)
    sim2, srv2 = fresh()
    resumed = sim2.run(srv2, state=torch.load(io.BytesIO(saved["state"]), weights_only=False))
    assert torch.equal(full.final_model, resumed.final_model)
    assert srv2.agg.results()["privacy"] == srv.agg.results()["privacy"]
    assert srv.agg.results()["privacy"]["steps"] == 12
