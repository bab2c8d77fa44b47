"""Population-scale pieces: counter-based hashing, batched shards and plans, the closed-form MLP kernel,
the realistic device population (time zones, down/uplink, download → compute → upload), check-in streams,
resume with them, the δ < 1/N preflight, the Ray batch-size check and the throughput benchmark's JSON."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy import stats

from runner.core.cli import compose_recipe
from runner.core.errors import ConfigError
from runner.core.seeding import hash_uniform
from runner.data.federated import FederatedDatasetConfig, build_federated_data, hashed_gamma
from runner.federated.aggregators import make_server
from runner.federated.backends import LocalBackend, build_trainer
from runner.federated.models import FLModelConfig
from runner.federated.population import DAY, CheckInStream, Population
from runner.federated.simulator import Simulator
from tests.federated.conftest import spec


def test_hash_uniform_is_uniform_batch_invariant_and_label_separated():
    u = hash_uniform(3, "a", np.arange(200_000))
    assert stats.kstest(u, "uniform").pvalue > 1e-3 and 0 < u.min() and u.max() < 1
    assert hash_uniform(3, "a", np.array([17]))[0] == u[17]
    pairs = hash_uniform(3, "a", np.arange(1000)[:, None], np.arange(2)[None])
    assert abs(np.corrcoef(pairs[:, 0], pairs[:, 1])[0, 1]) < 0.1  # the counters are mixed, not shifted
    assert abs(np.corrcoef(u[:1000], hash_uniform(3, "b", np.arange(1000)))[0, 1]) < 0.1


@pytest.mark.parametrize("alpha", [0.3, 2.5])
def test_hashed_gamma_follows_scipys_gamma(alpha):
    g = hashed_gamma(0, "t", alpha, np.arange(100_000))
    assert stats.kstest(g, "gamma", args=(alpha,)).pvalue > 1e-3
    assert abs(g.mean() - alpha) < 0.03 * alpha and np.isfinite(g).all() and (g >= 0).all()
    assert hashed_gamma(0, "t", alpha, np.array([777]))[0] == g[777]


def test_hashed_shards_follow_the_dirichlet_and_lognormal_laws():
    cfg = OmegaConf.structured(FederatedDatasetConfig(num_clients=10**8, sampler="hash", alpha=0.3,
                                                      samples_per_client=32, size_sigma=0.5))
    data = build_federated_data(cfg, 0)
    cids = np.arange(10**7, 10**7 + 4000)
    idx, sizes = data.client_indices_many(cids)
    z = np.log(sizes[sizes > 3] / 32.0) / 0.5  # rounding aside, log sizes are N(0, 1)
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05
    labels = data.y.numpy()[idx]
    rows = np.repeat(np.arange(len(cids)), sizes)
    share = np.zeros((len(cids), 10))
    np.add.at(share, (rows, labels), 1.0)
    share /= sizes[:, None]
    # E[p_c²] of Dir(α·1) over K classes is α(α+1) / (Kα(Kα+1)); multinomial sampling adds E[p_c(1-p_c)]/n
    a, k = 0.3, 10
    second = a * (a + 1) / (k * a * (k * a + 1))
    expected = second + np.mean((1 / k - second) / sizes)
    assert abs((share ** 2).mean() - expected) < 0.1 * expected
    i = 123
    alone = data.client_indices(int(cids[i]))
    assert np.array_equal(alone, idx[sizes[:i].sum():sizes[:i + 1].sum()])


@pytest.mark.parametrize("client", [{"local_epochs": 2, "batch_size": 4}, {"local_steps": 3, "batch_size": 8}])
def test_batched_plans_and_the_mlp_kernel_equal_plain_sgd(client):
    s = spec(0, {"sampler": "hash", "size_sigma": 0.8, "samples_per_client": 10}, lr=0.3, **client)
    s.model = OmegaConf.to_container(OmegaConf.structured(FLModelConfig(hidden=[16, 8])))
    trainer = build_trainer(s)
    assert trainer.kernel is not None
    cids, draws = np.arange(40, 52), np.arange(12)
    bp = trainer.plan_many(cids, draws)
    plans = bp.plans(trainer.data.x, trainer.data.y)
    assert len(set(bp.steps.tolist())) > 1 or "local_steps" in client
    assert np.array_equal(trainer.examples(cids), [p.examples for p in plans])
    if "local_epochs" in client:  # each epoch visits every example of the shard exactly once
        pool, sizes = trainer.data.client_indices_many(cids)
        mine = pool[: sizes[0]]
        used = bp.idx[0][bp.mask[0].bool()].numpy()
        assert sorted(used.tolist()) == sorted(np.concatenate([mine, mine]).tolist())
    single = trainer.plan(int(cids[5]), int(draws[5]))
    assert torch.equal(single.mask, plans[5].mask) and torch.equal(single.y, plans[5].y)
    x0 = trainer.space.flatten(trainer.model)
    starts = torch.stack([x0 + 0.01 * i for i in range(len(cids))])
    fast = trainer.train_clients(starts, cids, draws)
    ref = torch.stack([trainer.train_one(x, p) for x, p in zip(starts, plans)])
    assert torch.allclose(fast, ref, atol=1e-5), (fast - ref).abs().max()
    assert float(ref.norm()) > 0
    trainer.kernel.block = 5  # 12 clients in cache-sized blocks of 4: the same updates
    assert torch.allclose(trainer.train_clients(starts, cids, draws), ref, atol=1e-5)


def _clock(**kw):
    from runner.federated.config import ClockConfig

    return OmegaConf.merge(OmegaConf.structured(ClockConfig), kw)


def test_time_zones_windows_and_download_compute_upload():
    clock = _clock(time_zones=[5.0, -8.0], time_zone_weights=[0.75, 0.25], window_hours=[4.0, 4.0],
                   window_start_hour=22.0, window_start_sigma_hours=0.0, uplink_bandwidth=2.5e5,
                   bandwidth=1.0e6, bandwidth_sigma=0.7)
    pop = Population(10**8, clock, seed=2, hashed=True)
    p = pop.profiles(np.arange(20_000))
    east = np.isclose(p["phase"], 17 * 3600.0)  # 22:00 at UTC+5 is 17:00 UTC
    west = np.isclose(p["phase"], 6 * 3600.0)  # 22:00 at UTC-8 is 06:00 UTC
    assert (east | west).all() and abs(east.mean() - 0.75) < 0.02
    assert np.allclose(p["uplink"] / p["bandwidth"], 0.25) and np.allclose(p["window"], 4 * 3600.0)
    one = pop.profile(7)
    t_in, t_out = one.phase + 60.0, one.phase + 5 * 3600.0
    assert pop.available(one, t_in) and pop.available(one, t_in + DAY) and not pop.available(one, t_out)
    timing = pop.timing_of(one, t_in, 40, 2.0e6, 1.0e6, None)
    download, upload = 2.0e6 / one.bandwidth, 1.0e6 / one.uplink
    assert timing.download == pytest.approx(download) and timing.compute == pytest.approx(40 * one.seconds_per_example)
    assert timing.duration == pytest.approx(download + timing.compute + upload)
    late = pop.timing_of(one, one.phase + 4 * 3600.0 - 1.0, 40, 2.0e6, 1.0e6, None)  # the window closes first
    assert late.drop_at == pytest.approx(one.phase + 4 * 3600.0)


def test_checkin_stream_resumes_and_respects_busy_and_availability():
    clock = _clock(window_hours=[6.0, 12.0])
    pop = Population(10**6, clock, seed=1, hashed=True)
    a = CheckInStream(pop, 11, lambda c: np.full(len(c), 30), block=64)
    busy = {}
    first = [a.next(1000.0, busy) for _ in range(100)]
    for cid, prof, examples, u in first:
        assert pop.available(prof, 1000.0) and examples == 30 and 0 < u < 1
        assert prof == pop.profile(cid)
    state = a.state()
    rest = [a.next(5000.0, {first[0][0]: 1})[0] for _ in range(150)]
    b = CheckInStream(pop, 11, lambda c: np.full(len(c), 30), block=64)
    b.load(state)
    assert [b.next(5000.0, {first[0][0]: 1})[0] for _ in range(150)] == rest
    assert first[0][0] not in rest


def test_hashed_simulation_resumes_exactly(make_sim_cfg, make_server_cfg):
    s = spec(0, {"sampler": "hash"}, local_epochs=1, batch_size=5, max_batch=16)
    cfg = make_sim_cfg(concurrency=12, max_client_updates=80, checkpoint_every=5, client=s.client,
                       clock={"dropout_rate": 0.003, "time_zones": [0.0, 9.0], "window_hours": [3.0, 8.0],
                              "uplink_bandwidth": 3.0e5})

    def build():
        trainer = build_trainer(s)
        x0 = trainer.space.flatten(trainer.model)
        xt, yt = trainer.data.test_set()
        pop = Population(trainer.data.num_clients, cfg.clock, 0, hashed=True)
        sim = Simulator(x0, trainer, LocalBackend(trainer, 8), pop, cfg, 0, lambda x: trainer.evaluate(x, xt, yt))
        return sim, make_server(make_server_cfg(mode="fedbuff", buffer_size=4), x0)

    saved = {}

    def keep(n, state):
        buf = io.BytesIO()
        torch.save(state, buf)
        buf.seek(0)
        saved[n] = torch.load(buf, weights_only=False)

    sim, server = build()
    full = sim.run(server, checkpoint=keep)
    fresh, server2 = build()
    assert sorted(saved) == [0, 5, 10, 15]  # FedBuff K=4, 80 uploads: 20 server steps
    resumed = fresh.run(server2, state=saved[10])
    assert resumed.history == full.history and torch.equal(resumed.final_model, full.final_model)
    assert resumed.counters == full.counters and full.counters.dropouts > 0


def test_delta_must_be_below_one_over_the_population():
    with pytest.raises(ConfigError, match=r"privacy\.delta=3e-06 must be < 1/N = 1e-08"):
        compose_recipe("papaya", ["privacy=eps1"])
    compose_recipe("papaya", ["privacy=eps1", "privacy.delta=1e-9"])


def test_ray_batches_must_feed_every_actor():
    with pytest.raises(ConfigError, match=r"algorithm\.client\.max_batch=64 must be >= .* = 128"):
        compose_recipe("fedbuff", ["algorithm.backend.name=ray", "algorithm.client.max_batch=64",
                                   "algorithm.backend.clients_per_task=64", "algorithm.backend.num_workers=2"])


def test_throughput_benchmark_prints_its_json():
    out = subprocess.run([sys.executable, "benchmarks/fl_throughput.py", "--json", "--updates", "400",
                          "--concurrency", "50", "--sequential-clients", "20", "--kernel-clients", "64",
                          "--repeats", "2"],
                         capture_output=True, text=True, check=True, timeout=300)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("end_to_end_updates_per_s", "sequential_updates_per_s", "end_to_end_over_sequential", "peak_rss_mb"):
        assert r[key] > 0 and math.isfinite(r[key]), key
    assert r["client_updates"] == 400 and r["population"] == 10**8
    assert r["sequential_updates_per_s"] == max(r["sequential_runs_updates_per_s"])  # best of the alternating runs
    assert r["end_to_end_updates_per_s"] == max(r["end_to_end_runs_updates_per_s"])
    ratio = r["end_to_end_updates_per_s"] / r["sequential_updates_per_s"]
    assert r["end_to_end_over_sequential"] == pytest.approx(ratio)
