"""The event-driven simulator: hand-computed staleness, over-selection, determinism, faults and drop-outs."""

from __future__ import annotations

import pytest
import torch

from runner.federated.aggregators import make_server
from runner.federated.backends import LocalBackend, build_trainer
from runner.federated.population import DAY, Population
from runner.federated.simulator import Simulator


def build(make_spec, cfg, seed=0, data_kw=None, **client):
    trainer = build_trainer(make_spec(seed, data_kw, **client))
    x0 = trainer.space.flatten(trainer.model)
    xt, yt = trainer.data.test_set()
    sim = Simulator(x0, trainer, LocalBackend(trainer, 64), Population(trainer.data.num_clients, cfg.clock, seed),
                    cfg, seed, lambda x: trainer.evaluate(x, xt, yt))
    return sim, x0


def equal_clock(make_sim_cfg, **kw):
    """Every device equally fast: all durations equal, so the event order is known by hand."""
    return make_sim_cfg(clock={"speed_sigma": 0.0, "bandwidth_sigma": 0.0}, **kw)


def test_fedbuff_staleness_sequence_on_an_equal_clock(make_spec, make_sim_cfg, make_server_cfg):
    # C=4 clients, K=2, equal durations d. At t=d the four reports arrive in dispatch order:
    # r1 (v0, tau 0) buffered, r2 (tau 0) -> step v1, r3 (tau 1), r4 (tau 1) -> step v2. Replacements
    # started from v0, v1, v1, v2, so at t=2d: tau = 2-0, 2-1 -> step v3, then 3-1, 3-2 -> step v4.
    cfg = equal_clock(make_sim_cfg, concurrency=4, max_client_updates=8)
    sim, x0 = build(make_spec, cfg, data_kw={"size_sigma": 0.0})
    seen = []
    record = sim.record_staleness
    sim.record_staleness = lambda tau: (seen.append(tau), record(tau))
    res = sim.run(make_server(make_server_cfg(mode="fedbuff", buffer_size=2, concurrency=4), x0))
    assert seen == [0, 0, 1, 1, 2, 1, 2, 1]
    assert res.counters.server_steps == 4 and res.counters.staleness_max == 2
    assert res.counters.concurrency_area / res.end_time == 4.0


def test_fedavg_over_selection_cancels_stragglers(make_spec, make_sim_cfg, make_server_cfg):
    cfg = make_sim_cfg(concurrency=10, max_client_updates=40)
    sim, x0 = build(make_spec, cfg)
    res = sim.run(make_server(make_server_cfg(mode="fedavg", over_selection=0.25, optimizer="momentum"), x0))
    c = res.counters
    assert c.client_updates == 40 and c.server_steps == 5  # goal = ceil(10 / 1.25) = 8 reports per round
    assert c.stragglers_cancelled == 2 * 5  # each closed round cancels the 2 slowest
    assert c.staleness_max == 0 and 0 < c.compute_wasted < c.compute_total


def run_small(make_spec, make_sim_cfg, make_server_cfg, seed, mode="fedbuff", **kw):
    cfg = make_sim_cfg(concurrency=8, max_client_updates=80, **kw)
    sim, x0 = build(make_spec, cfg, seed=seed)
    return sim.run(make_server(make_server_cfg(mode=mode, buffer_size=4), x0))


def test_same_seed_same_run_and_learning(make_spec, make_sim_cfg, make_server_cfg):
    a = run_small(make_spec, make_sim_cfg, make_server_cfg, 3)
    b = run_small(make_spec, make_sim_cfg, make_server_cfg, 3)
    c = run_small(make_spec, make_sim_cfg, make_server_cfg, 4)
    assert a.history == b.history and torch.equal(a.final_model, b.final_model)
    assert a.history != c.history
    assert a.history[-1].accuracy > a.history[0].accuracy + 0.2  # 80 updates of digits learn something


def test_faults_are_rejected_and_the_model_stays_finite(make_spec, make_sim_cfg, make_server_cfg):
    for mode in ("fedbuff", "fedasync", "fedavg"):
        res = run_small(make_spec, make_sim_cfg, make_server_cfg, 0, mode=mode,
                        faults={"nan_rate": 0.2, "blowup_rate": 0.2, "max_update_norm": 50.0})
        c = res.counters
        assert c.rejected_nonfinite > 0 and c.rejected_norm > 0, mode
        assert c.applied + c.rejected_nonfinite + c.rejected_norm == c.client_updates, mode
        assert torch.isfinite(res.final_model).all(), mode
        assert res.history[-1].accuracy > res.history[0].accuracy, mode


def test_dropouts_counted_and_availability_windows(make_spec, make_sim_cfg, make_server_cfg):
    res = run_small(make_spec, make_sim_cfg, make_server_cfg, 0, clock={"dropout_rate": 0.005})
    assert res.counters.dropouts > 0 and res.counters.client_starts == 80 + res.counters.dropouts + 8
    k = make_sim_cfg(clock={"window_hours": [2.0, 6.0]}).clock
    pop = Population(10**8, k, seed=1)
    p = pop.profile(123_456_789)
    assert p == pop.profile(123_456_789) and 2 * 3600 <= p.window <= 6 * 3600
    t_open = p.phase + 1.0
    assert pop.available(p, t_open) and pop.available(p, t_open + DAY)
    assert not pop.available(p, p.phase + p.window + 1.0)
    assert pop.window_closes(p, t_open) == p.phase + p.window


def _record_steps(sim):
    """Wrap ``sim.step`` to record (time, model) of every installed server model."""
    steps = []
    install = sim.step

    def step(x):
        install(x)
        steps.append((sim.t, sim.x.clone()))

    sim.step = step
    return steps


def test_every_server_step_is_evaluated_at_its_time(make_spec, make_sim_cfg, make_server_cfg):
    cfg = make_sim_cfg(concurrency=8, max_client_updates=60)
    sim, x0 = build(make_spec, cfg)
    steps = _record_steps(sim)
    evaluate = sim._evaluate
    res = sim.run(make_server(make_server_cfg(mode="fedbuff", buffer_size=4), x0))
    assert len(steps) == res.counters.server_steps == 15
    by_step = {p.server_steps: p for p in res.history}
    assert set(by_step) == set(range(16))  # the initial model and every version the server produced
    for k, (t, x) in enumerate(steps, start=1):
        assert by_step[k].time == t and by_step[k].accuracy == evaluate(x)["accuracy"]


def test_time_grid_evaluates_the_model_in_place_at_each_grid_point(make_spec, make_sim_cfg, make_server_cfg):
    cfg = make_sim_cfg(concurrency=8, max_client_updates=60, eval_interval=40.0)
    sim, x0 = build(make_spec, cfg)
    steps = _record_steps(sim)
    evaluate = sim._evaluate
    res = sim.run(make_server(make_server_cfg(mode="fedavg", over_selection=0.3), x0))
    grid = [p for p in res.history if p.time < res.end_time]
    assert [p.time for p in grid] == [40.0 * k for k in range(len(grid))] and len(grid) > 5
    for p in grid:
        before = [x for t, x in steps if t < p.time]
        assert p.accuracy == evaluate(before[-1] if before else x0)["accuracy"]


def _saved(state):
    """A state as it comes back from disk (torch.save / torch.load, as the run context's checkpointer does)."""
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("mode", ["fedbuff", "fedavg", "fedasync"])
def test_resume_from_an_in_simulation_checkpoint_is_exact(make_spec, make_sim_cfg, make_server_cfg, mode):
    cfg = make_sim_cfg(concurrency=8, max_client_updates=60, checkpoint_every=4,
                       clock={"dropout_rate": 0.002})
    server_cfg = make_server_cfg(mode=mode, buffer_size=3, optimizer="momentum", round_timeout=300.0)
    sim, x0 = build(make_spec, cfg)
    saved = {}
    full = sim.run(make_server(server_cfg, x0), checkpoint=lambda n, s: saved.setdefault(n, _saved(s)))
    steps = full.counters.server_steps
    # every 4 server steps (whatever the uploads per step), while the run goes on
    assert sorted(saved) in (list(range(0, steps, 4)), list(range(0, steps + 1, 4))) and steps >= 9
    assert all(state["c"].server_steps == n for n, state in saved.items())
    fresh, _ = build(make_spec, cfg)
    resumed = fresh.run(make_server(server_cfg, x0), state=saved[8])
    assert resumed.history == full.history
    assert torch.equal(resumed.final_model, full.final_model)
    assert resumed.counters == full.counters and resumed.end_time == full.end_time
