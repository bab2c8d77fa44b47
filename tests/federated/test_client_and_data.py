"""Client training (vectorised == one by one), backends, and the federated datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from runner.data.federated import FederatedDatasetConfig, LeafJSON, LeafSynthetic, load_digits_partition
from runner.federated.backends import LocalBackend, TrainJob, build_trainer


@pytest.mark.parametrize("client", [{"local_steps": 4, "batch_size": 8}, {"local_epochs": 2, "batch_size": 8}])
def test_vectorised_updates_equal_one_by_one(make_spec, client):
    trainer = build_trainer(make_spec(0, {"size_sigma": 0.8, "samples_per_client": 10}, lr=0.3, **client))
    x0 = trainer.space.flatten(trainer.model)
    plans = [trainer.plan(cid, draw) for cid, draw in zip(range(7, 19), range(12))]
    assert len({len(p.y) for p in plans}) > 2  # uneven shards exercise the masks
    starts = torch.stack([x0 + 0.01 * i for i in range(len(plans))])
    many = trainer.train_many(starts, plans)
    one = torch.stack([trainer.train_one(s, p) for s, p in zip(starts, plans)])
    assert torch.allclose(many, one, atol=1e-5), (many - one).abs().max()
    assert float(one.norm()) > 0


def test_local_backend_chunks_give_the_same_updates(make_spec):
    trainer = build_trainer(make_spec())
    x0 = trainer.space.flatten(trainer.model)
    jobs = [TrainJob(c, c, x0) for c in range(10)]
    a = LocalBackend(trainer, 3).train(jobs)
    b = trainer.train(torch.stack([x0] * 10), [trainer.plan(c, c) for c in range(10)])
    assert torch.allclose(a, b, atol=1e-6)


def test_dirichlet_partition_skew_and_determinism():
    cfg = OmegaConf.structured(FederatedDatasetConfig(num_clients=10**8, alpha=0.1, samples_per_client=50,
                                                      size_sigma=0.0))
    data = load_digits_partition(cfg, seed=0)
    x1, y1 = data.client_shard(99_999_999)
    x2, y2 = data.client_shard(99_999_999)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and len(y1) == 50
    top = [np.bincount(data.client_shard(c)[1].numpy(), minlength=10).max() / 50 for c in range(30)]
    assert np.mean(top) > 0.6  # Dir(0.1): most of a shard is one class
    flat = OmegaConf.merge(cfg, {"alpha": 1000.0})
    top = [np.bincount(load_digits_partition(flat, 0).client_shard(c)[1].numpy(), minlength=10).max() / 50
           for c in range(30)]
    assert np.mean(top) < 0.35  # Dir(1000): close to uniform over 10 classes
    xt, yt = data.test_set()
    assert len(yt) == 360 and xt.max() <= 1.0


def test_leaf_synthetic_labels_follow_the_client_model():
    data = LeafSynthetic(50, 1.0, 1.0, 30, 0.5, seed=2, test_clients=5)
    w, b, _ = data.client_model(7)
    x, y = data.client_shard(7)
    expect = np.argmax(x.double().numpy() @ w.T + b, axis=1)
    assert np.array_equal(y.numpy(), expect)
    assert data.test_set()[0].shape[1] == 60


def test_leaf_json_loader(tmp_path):
    for split, users in (("train", ["u1", "u2"]), ("test", ["u1"])):
        (tmp_path / split).mkdir()
        blob = {"users": users, "num_samples": [2] * len(users),
                "user_data": {u: {"x": [[0.5] * 784, [0.0] * 784], "y": [3, 61]} for u in users}}
        (tmp_path / split / "all_data_0.json").write_text(json.dumps(blob))
    cfg = OmegaConf.structured(FederatedDatasetConfig(name="femnist", kind="femnist", path=str(tmp_path),
                                                      num_clients=0))
    data = LeafJSON(cfg)
    x, y = data.client_shard(1)
    assert data.num_clients == 2 and x.shape == (2, 1, 28, 28) and y.tolist() == [3, 61]
    assert data.test_set()[0].shape == (2, 1, 28, 28) and data.num_classes == 62
