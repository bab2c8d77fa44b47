"""The Ray backend (the ``dist`` extra): the same updates and simulation as the local backend, every actor used.

One local Ray instance for the module (Ray's start-up is the slow part); each backend starts its own actors.
"""

from __future__ import annotations

import pytest
import torch

from runner.federated.aggregators import make_server
from runner.federated.backends import LocalBackend, TrainJob, build_trainer
from runner.federated.population import Population
from runner.federated.simulator import Simulator
from tests.federated.conftest import spec

ray = pytest.importorskip("ray")
from runner.federated.backends import RayBackend  # noqa: E402

SPEC = spec(data_kw={"sampler": "hash"}, local_epochs=1, batch_size=5, max_batch=8)


@pytest.fixture(scope="module")
def backend():
    """One local Ray and two actors for the module (start-up is the slow part)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    b = RayBackend(SPEC, clients_per_task=3, num_workers=2, in_flight=2)
    yield b
    b.close()
    ray.shutdown()


def test_ray_chunks_equal_local_and_every_actor_works(backend):
    trainer = build_trainer(SPEC)
    x0 = trainer.space.flatten(trainer.model)
    jobs = [TrainJob(c, c, x0 + 0.01 * i) for i, c in enumerate(range(100, 122))]
    backend.reset_stats()
    remote = backend.train(jobs)
    assert not backend._owns_ray
    assert min(backend.tasks) >= 1 and sum(backend.tasks) == 8  # 22 jobs in chunks of 3, both actors used
    per_actor = backend.utilisation_per_actor()
    assert len(per_actor) == 2 and all(0.0 < u <= 1.0 for u in per_actor)
    assert backend.utilisation() == pytest.approx(sum(backend.busy) / (2 * backend.wall))
    assert backend.cores_used() == pytest.approx(sum(backend.cpu) / backend.wall) and min(backend.cpu) > 0.0
    assert backend.shared  # same node: Δ rows come back through a shared-memory file
    assert torch.equal(remote, LocalBackend(trainer, 3).train(jobs))
    backend.shared = False  # the path for actors on other nodes: Δ returned through the object store
    try:
        assert torch.equal(backend.train(jobs), remote)
    finally:
        backend.shared = True
    one = torch.stack([trainer.train_one(j.x0, trainer.plan(j.cid, j.draw)) for j in jobs[:4]])
    assert torch.allclose(remote[:4], one, atol=1e-5)  # and the plain SGD reference


def test_simulation_on_ray_equals_local(backend, make_sim_cfg, make_server_cfg):
    cfg = make_sim_cfg(concurrency=6, max_client_updates=40, client=SPEC.client,
                       clock={"dropout_rate": 0.002, "uplink_bandwidth": 2.0e5})
    server_cfg = make_server_cfg(mode="fedbuff", buffer_size=3)
    results = []
    for backend_name in ("local", "ray"):
        trainer = build_trainer(SPEC)
        x0 = trainer.space.flatten(trainer.model)
        xt, yt = trainer.data.test_set()
        sim = Simulator(x0, trainer, LocalBackend(trainer, 3) if backend_name == "local" else backend,
                        Population(trainer.data.num_clients, cfg.clock, 0, hashed=True), cfg, 0,
                        lambda x, t=trainer, xt=xt, yt=yt: t.evaluate(x, xt, yt))
        results.append(sim.run(make_server(server_cfg, x0)))
    local, remote = results
    assert remote.counters == local.counters and remote.history == local.history
    assert torch.equal(remote.final_model, local.final_model)
    assert local.counters.dropouts > 0 and local.history[-1].loss < local.history[0].loss  # it trained


def test_ray_scaling_benchmark_prints_its_json():
    """The Ray scaling command the issue's Done-when line reads (small sizes; its own local Ray)."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "benchmarks/fl_ray_scaling.py", "--json", "--clients", "96",
                          "--per-task", "16", "--repeats", "1"], capture_output=True, text=True, check=True,
                         timeout=300)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    one, two = r["actors"]["1"], r["actors"]["2"]
    assert one["speedup"] == 1.0 and r["speedup_2_over_1"] == pytest.approx(two["updates_per_s"] / one["updates_per_s"])
    assert len(two["utilisation_per_actor"]) == 2 and all(0 < u <= 1 for u in two["utilisation_per_actor"])
    assert r["utilisation_2_actors"] == pytest.approx(sum(two["utilisation_per_actor"]) / 2)
    assert two["cores_used"] > 0 and r["cores_used_2_actors"] == two["cores_used"]


def test_shared_rows_need_room_in_dev_shm(monkeypatch):
    """A full /dev/shm (64 MB in many containers) would SIGBUS the writers: then Δ goes through the object store."""
    import os
    from types import SimpleNamespace

    from runner.federated import backends

    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm on this system")
    monkeypatch.setattr(backends.shutil, "disk_usage", lambda p: SimpleNamespace(free=7999))
    assert backends._shared_rows((10, 100)) is None  # 4,000 bytes want 8,000 free
    monkeypatch.setattr(backends.shutil, "disk_usage", lambda p: SimpleNamespace(free=8000))
    path, rows = backends._shared_rows((10, 100))
    try:
        assert path.startswith("/dev/shm/") and rows.shape == (10, 100) and not rows.any()
    finally:
        os.unlink(path)


def test_orphaned_shared_rows_of_dead_drivers_are_removed(tmp_path):
    """A driver killed inside a call leaves its file; the next backend removes files whose driver pid is gone and
    keeps those of live drivers."""
    import os
    import subprocess
    import sys

    from runner.federated import backends

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its pid names no process now
    orphan = tmp_path / f"runner-fl-{dead.pid}-abc.f32"
    mine = tmp_path / f"runner-fl-{os.getpid()}-def.f32"
    other = tmp_path / "something-else.f32"
    for f in (orphan, mine, other):
        f.write_bytes(b"\0" * 16)
    assert backends._remove_orphaned_rows(str(tmp_path)) == [str(orphan)]
    assert not orphan.exists() and mine.exists() and other.exists()
