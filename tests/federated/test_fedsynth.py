"""FedSynth and the mask baselines: the server's replay, the synthetic-set fit against a closed form, the mask's
size and unbiasedness, every server mode through the update-codec hook, and the recipe's direction."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from runner.core.cli import compose_recipe, run_recipe
from runner.core.errors import ConfigError
from runner.core.seeding import derive_seed
from runner.federated.aggregators import make_server
from runner.federated.backends import LocalBackend, build_trainer
from runner.federated.client import LocalTrainer, TrainPlan
from runner.federated.fedsynth import (
    FedSynthCodec,
    InnerProblem,
    SyntheticSet,
    dct_basis,
    learn_synthetic_set,
    replay_inner_steps,
    synthetic_floats,
)
from runner.federated.masks import RandomMaskCodec, StructuredMaskCodec, random_mask
from runner.federated.population import Population
from runner.federated.simulator import Simulator

FIXTURE = "tests/fixtures/leaf_femnist"


def _clients(trainer, n: int, draw: int = 0):
    plans = [trainer.plan(c, draw) for c in range(n)]
    x0 = trainer.space.flatten(trainer.model)
    x0s = x0.expand(n, -1).clone()
    return x0s, trainer.train(x0s, plans), plans


def test_server_replay_reproduces_the_clients_synthetic_update(make_spec):
    trainer = build_trainer(make_spec())
    codec = FedSynthCodec({"examples": 2, "inner_steps": 2, "iterations": 30}, trainer)
    x0s, deltas, plans = _clients(trainer, 4)
    s = codec.encode(x0s, deltas, plans)
    # the upload: m·(dim x + C) + 1 floats, counted on the tensors the client sends
    assert s.x[0].numel() + s.y_logits[0].numel() + s.log_lr[0].numel() == codec.upload_floats
    assert codec.upload_floats == 2 * (64 + 10) + 1
    # the client's Δ_syn, computed the way learning computes it (vmapped over clients, gradients tracked) ...
    problem = InnerProblem(trainer)
    client_side = torch.vmap(lambda w, x, y, lr: replay_inner_steps(problem, w, SyntheticSet(x, y, lr), 2))(
        x0s, s.x, s.y_logits, s.log_lr)
    # ... equals what the server replays from the upload alone, one client at a time
    server_side = torch.stack([codec.decode(x0s[i], SyntheticSet(s.x[i], s.y_logits[i], s.log_lr[i]))
                               for i in range(4)])
    torch.testing.assert_close(server_side, client_side, rtol=1e-5, atol=1e-7)
    # and the hook hands the server exactly that replay
    assert torch.equal(codec(x0s, deltas, plans), server_side)


def test_learning_reaches_the_rank_one_optimum_of_a_linear_model(make_spec):
    """Softmax regression, one example, one inner step: Δ_syn = η (q - p) [x; 1]ᵀ is a rank-1 matrix whose class
    factor sums to zero, and so are the top singular pairs of a real Δ (its class columns sum to zero). So the
    best reachable ‖Δ_syn - Δ‖² is ‖Δ‖² - σ₁² (Eckart-Young): learning must come close to it, and cannot beat it."""
    trainer = build_trainer(make_spec())
    trainer = LocalTrainer(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)), trainer.data,
                           trainer.cfg, 0)
    x0s, deltas, plans = _clients(trainer, 3)
    problem = InnerProblem(trainer)
    codec = FedSynthCodec({"examples": 1, "inner_steps": 1}, trainer)
    init = SyntheticSet(*(torch.stack([getattr(codec.initial_set(p), f) for p in plans])
                          for f in ("x", "y_logits", "log_lr")))
    # the replay is the closed form -η ∇CE for softmax regression
    w, x, y = x0s[0], init.x[0], init.y_logits[0]
    W, b = w[:640].view(10, 64), w[640:]
    p, q = torch.softmax(W @ x[0] + b, -1), torch.softmax(y[0], -1)
    lr = init.log_lr[0].exp()
    closed = torch.cat([(-lr * torch.outer(p - q, x[0])).reshape(-1), -lr * (p - q)])
    torch.testing.assert_close(replay_inner_steps(problem, w, SyntheticSet(x, y, init.log_lr[0]), 1), closed,
                               rtol=1e-5, atol=1e-7)

    def rel_err(s: SyntheticSet) -> torch.Tensor:
        d = torch.stack([replay_inner_steps(problem, x0s[i], SyntheticSet(s.x[i], s.y_logits[i], s.log_lr[i]), 1)
                         for i in range(3)])
        return ((d - deltas) ** 2).sum(1) / (deltas ** 2).sum(1)

    learned, err = learn_synthetic_set(problem, x0s, deltas, init, 1, 400, 0.05)
    torch.testing.assert_close(err, rel_err(learned), rtol=1e-4, atol=1e-6)  # the reported error is the replay's
    mats = torch.cat([deltas[:, :640].view(3, 10, 64), deltas[:, 640:].view(3, 10, 1)], dim=2)
    sigma = torch.linalg.svdvals(mats)
    assert torch.allclose(mats.sum(1), torch.zeros(3, 65), atol=1e-6)  # zero-sum class columns
    optimum = 1 - sigma[:, 0] ** 2 / (sigma ** 2).sum(1)
    start = rel_err(init)
    assert (err >= optimum - 1e-4).all()  # nothing beats the best rank-1 approximation
    assert (err <= optimum + 0.1 * (start - optimum)).all(), (start, err, optimum)  # 90% of the way there
    assert (start - optimum > 0.1).all()  # and the start was far from it


def test_random_mask_size_positions_and_unbiasedness():
    torch.manual_seed(0)
    p, k, n = 400, 40, 4000
    delta = torch.randn(p)
    d = random_mask(delta, k, seed=7, rescale=False)
    assert int((d != 0).sum()) == k  # k values uploaded
    assert torch.equal(d, random_mask(delta, k, seed=7, rescale=False))  # the server derives the same positions
    kept = d != 0
    assert torch.equal(d[kept], delta[kept])
    draws = torch.stack([random_mask(delta, k, seed=s, rescale=True) for s in range(n)])
    freq = (draws != 0).float().mean(0)  # each coordinate is kept with probability k/p
    pi = k / p
    assert (freq - pi).abs().max() < 5 * math.sqrt(pi * (1 - pi) / n)
    # rescaled by p/k: E[Δ̂] = Δ; the sample mean's relative error is about sqrt((p/k - 1) / n) = 0.047
    assert float((draws.mean(0) - delta).norm() / delta.norm()) < 0.1
    assert torch.allclose(draws.mean(0) / (p / k), random_mask_mean_unscaled(delta, k, n), atol=1e-6)


def test_structured_mask_is_sgd_restricted_to_the_masked_coordinates(make_spec):
    """Konečný et al.'s structured update: each client's upload equals plain ``torch.optim.SGD`` on its plan with
    every gradient zeroed outside k coordinates drawn from (seed, client, draw); nothing else moves."""
    trainer = build_trainer(make_spec(data_kw={"size_sigma": 0.8}, lr=0.3, local_steps=4, batch_size=8))
    plans = [trainer.plan(c, 2) for c in range(5)]
    assert len({len(p.y) for p in plans}) > 1  # uneven shards: the padded steps must not move anything
    x0 = trainer.space.flatten(trainer.model)
    x0s = torch.stack([x0 + 0.01 * i for i in range(5)])
    k, size = 60, trainer.space.size
    codec = StructuredMaskCodec({"floats": k}, trainer)
    assert codec.upload_floats == k
    for bad in (0, size + 1):  # an upload outside [1, P] is a config error, for either mask
        for mask in (StructuredMaskCodec, RandomMaskCodec):
            with pytest.raises(ConfigError, match=f"floats={bad} must be in \\[1, {size}\\]"):
                mask({"floats": bad}, trainer)
    got = codec(x0s, torch.full_like(x0s, float("nan")), plans)  # the unrestricted Δ is not used
    for x, p, d in zip(x0s, plans, got):
        kept = torch.randperm(size, generator=torch.Generator().manual_seed(
            derive_seed(0, "structured-mask", p.cid, p.draw)))[:k]
        keep = torch.zeros(size)
        keep[kept] = 1.0
        model = copy.deepcopy(trainer.model)
        torch.nn.utils.vector_to_parameters(x.clone(), model.parameters())
        opt = torch.optim.SGD(model.parameters(), lr=0.3)
        for idx, m in zip(p.idx, p.mask):
            rows = idx[m.bool()]
            opt.zero_grad()
            F.cross_entropy(model(p.x[rows]), p.y[rows]).backward()
            off = 0
            for q in model.parameters():
                q.grad *= keep[off:off + q.numel()].view_as(q)
                off += q.numel()
            opt.step()
        ref = torch.nn.utils.parameters_to_vector(model.parameters()).detach() - x
        torch.testing.assert_close(d, ref, rtol=1e-5, atol=1e-7)
        # only kept coordinates move (some kept ones may not: pixels that are 0 on every digit, dead units)
        assert torch.equal(d[keep == 0], torch.zeros(size - k)) and int((d != 0).sum()) > k // 4
    rescaled = StructuredMaskCodec({"floats": k, "rescale": True}, trainer)(x0s, x0s, plans)
    torch.testing.assert_close(rescaled, got * (size / k))


def random_mask_mean_unscaled(delta: torch.Tensor, k: int, n: int) -> torch.Tensor:
    return torch.stack([random_mask(delta, k, seed=s, rescale=False) for s in range(n)]).mean(0)


def _simulate(trainer, cfg, server):
    """Run ``server`` and record what it receives (task, Δ̂) on each report."""
    x0 = trainer.space.flatten(trainer.model)
    sim = Simulator(x0, trainer, LocalBackend(trainer, 64), Population(trainer.data.num_clients, cfg.clock, 0),
                    cfg, 0, lambda x: trainer.evaluate(x, *trainer.data.test_set()))
    seen, on_update = [], server.on_update

    def record(s, task, delta):
        seen.append((task, delta))
        on_update(s, task, delta)

    server.on_update = record
    return sim.run(server), seen


@pytest.mark.parametrize("mode", ["fedavg", "fedasync", "fedbuff"])
def test_codecs_in_every_server_mode(mode, make_spec, make_sim_cfg, make_server_cfg):
    """Through the client hook: the clock charges the codec's upload, the server applies the replayed Δ̂."""
    for codec, floats in (({"name": "fedsynth", "examples": 1, "iterations": 10}, 64 + 10 + 1),
                          ({"name": "random_mask", "floats": 50, "rescale": True}, 50),
                          ({"name": "structured_mask", "floats": 50}, 50)):
        spec = make_spec()
        spec.client["codec"] = codec
        trainer = build_trainer(spec)
        assert trainer.upload_floats == floats
        x0 = trainer.space.flatten(trainer.model)
        r, seen = _simulate(trainer, make_sim_cfg(concurrency=6, max_client_updates=18),
                            make_server(make_server_cfg(mode=mode, concurrency=6, buffer_size=3), x0))
        assert r.counters.client_updates == 18 and r.counters.bytes_up == 18 * 4 * floats
        assert r.counters.server_steps > 0 and not torch.equal(r.final_model, x0)
        task, delta = seen[0]  # what the server received is the codec's reconstruction of the client's Δ
        raw = trainer.train_many(task.base[None], [trainer.plan(task.cid, task.id)])[0]
        if codec["name"] == "random_mask":
            ref = random_mask(raw, 50, derive_seed(0, "random-mask", task.cid, task.id), True)
            torch.testing.assert_close(delta, ref, rtol=1e-5, atol=1e-7)
        elif codec["name"] == "structured_mask":  # only the coordinates the server derives moved
            kept = torch.zeros_like(delta, dtype=torch.bool)
            kept[torch.randperm(delta.numel(), generator=torch.Generator().manual_seed(
                derive_seed(0, "structured-mask", task.cid, task.id)))[:50]] = True
            assert bool((delta[~kept] == 0).all()) and bool((delta[kept] != 0).any())
        else:
            assert float(delta @ raw / (delta.norm() * raw.norm())) > 0.5  # it points where the real Δ does


def test_fedsynth_upload_is_closer_to_the_update_than_random_masking(make_spec):
    """The direction at the level of one upload: at 1% of the model, the replayed synthetic set is far closer to
    the client's Δ than random masking of the same floats, rescaled (unbiased, what the recipe uses) or not."""
    trainer = build_trainer(make_spec(data_kw={"num_clients": 10_000, "samples_per_client": 32}))
    x0s, deltas, plans = _clients(trainer, 8)
    codec = FedSynthCodec({"examples": 1, "init": "mean"}, trainer)
    fs = codec(x0s, deltas, plans)
    k = codec.upload_floats  # 75 floats of a 1,210-parameter model
    err = {"fedsynth": ((fs - deltas).norm(dim=1) / deltas.norm(dim=1)).mean()}
    for rescale in (False, True):
        rm = torch.stack([random_mask(d, k, s, rescale) for s, d in enumerate(deltas)])
        err[f"mask rescale={rescale}"] = ((rm - deltas).norm(dim=1) / deltas.norm(dim=1)).mean()
    # masking keeps k of P coordinates: relative error sqrt(1 - k/P) = 0.97 unscaled, sqrt(P/k - 1) = 3.9 rescaled
    assert err["mask rescale=False"] > 0.9 and err["mask rescale=True"] > 3
    assert err["fedsynth"] < 0.7, err


def test_recipe_reports_every_budget_and_learns(tmp_path):
    """A reduced run: the results layout, upload sizes, the summary table, and FedSynth training the model. (Which
    of FedSynth and random masking ends ahead is measured over seeds by the full recipe, not here.)"""
    r = run_recipe("fedsynth", ["run.smoke=true", "run.progress=false"], run_dir=tmp_path)
    b = r["by_budget"]["75"]
    assert (b["fedsynth"]["upload_floats"] == b["random_mask"]["upload_floats"] == b["structured_mask"]["upload_floats"]
            == 75 == synthetic_floats(1, 64, 10, True))
    assert r["full"]["upload_floats"] == r["num_parameters"] == 7510
    assert b["fedsynth"]["bytes"] < r["full"]["bytes"]  # the clock charged the smaller uploads
    assert b["fedsynth"]["final_accuracy"] > b["fedsynth"]["initial_accuracy"] + 0.05
    assert (tmp_path / "accuracy_vs_upload_floats.png").exists()
    assert "| upload floats |" in (tmp_path / "summary.md").read_text()


def test_femnist_recipe_reads_leaf_files_and_runs(tmp_path):
    cfg = compose_recipe("fedsynth_femnist", [f"dataset.path={FIXTURE}"])
    assert cfg.algorithm.synthetic_examples == [3, 8, 25] and cfg.model.arch == "cnn"
    with pytest.raises(ConfigError, match="dataset.path"):
        compose_recipe("fedsynth_femnist")
    with pytest.raises(ConfigError, match="tokens"):
        compose_recipe("fedsynth", ["dataset=shakespeare", "dataset.path=x", "model=fl_lstm_sent140"])
    r = run_recipe("fedsynth_femnist", [f"dataset.path={FIXTURE}", "run.smoke=true", "run.progress=false"],
                   run_dir=tmp_path)
    assert r["by_budget"]["847"]["fedsynth"]["upload_floats"] == 28 * 28 + 62 + 1
    assert r["full"]["client_updates"] == 6


@pytest.mark.parametrize("override, match", [
    ("algorithm.synthetic_examples=[1,1]", "synthetic_examples"),
    ("algorithm.baselines=[top_k]", "algorithm.baselines"),
    ("algorithm.fedsynth.init=zeros", "algorithm.fedsynth.init"),
    ("+algorithm.fedsynth_by_budget.one.iterations=2", "fedsynth_by_budget.one"),
    ("+algorithm.server_lr_by_budget.1.full=2", "server_lr_by_budget.1"),
    ("algorithm.server_lr_by_budget.1.random_mask=-1", "server_lr_by_budget.1"),
    ("algorithm.server_lr_by_budget={1:{fedsynth:2}}", r"server_lr_by_budget\.1: .*quote the key in YAML \('1': not"),
])
def test_config_errors(override, match):
    with pytest.raises(ConfigError, match=match):
        compose_recipe("fedsynth", [override])


def test_per_budget_settings_from_the_command_line():
    """A budget's settings are reachable from the command line (a Hydra sweep), over the recipe's own."""
    assert OmegaConf.to_container(compose_recipe("fedsynth").algorithm.random_mask) == {"rescale": True}
    a = compose_recipe("fedsynth", ["algorithm.server_lr_by_budget.1.random_mask=2",
                                    "+algorithm.fedsynth_by_budget.3.iterations=7"]).algorithm
    assert a.server_lr_by_budget["1"].random_mask == 2 and a.server_lr_by_budget["1"].fedsynth == 1.4
    assert a.fedsynth_by_budget["3"].iterations == 7 and a.fedsynth_by_budget["3"].input_coefficients == 27


def test_fedsynth_under_user_level_dp(tmp_path):
    """privacy=eps1 trains every upload codec with DP (the server clips and noises the decoded Δ̂): each stage's
    spend, recomputed with Opacus' RDP accountant from its own (z, q, steps), is the one reported and ≤ ε."""
    from opacus.accountants import RDPAccountant

    r = run_recipe("fedsynth", ["run.smoke=true", "run.progress=false", "privacy=eps1"], run_dir=tmp_path)
    stages = [r["full"], r["by_budget"]["75"]["fedsynth"], r["by_budget"]["75"]["random_mask"]]
    for p in (s["privacy"] for s in stages):
        acc = RDPAccountant()
        acc.history = [(p["noise_multiplier"], p["sample_rate"], p["steps"])]
        assert p["steps"] > 0 and p["epsilon"] == pytest.approx(acc.get_epsilon(p["delta"]), rel=1e-6)
        assert p["epsilon"] <= 1.0
    assert r["privacy"]["epsilon"] == max(s["privacy"]["epsilon"] for s in stages)


def test_class_init_starts_at_class_prototypes(make_spec):
    """``init: class``: the shard sorted by class (most frequent first) and cut into m equal runs, so each synthetic
    example starts at the mean of examples of one class with that class's one-hot label; m = 1: the shard's mean."""
    trainer = build_trainer(make_spec())
    torch.manual_seed(0)
    x = torch.randn(16, 64)
    y = torch.tensor([7] * 4 + [3] * 12)[torch.randperm(16)]  # class 3: 12 examples, class 7: 4
    plan = TrainPlan(x, y, torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1), cid=5, draw=0)
    s = FedSynthCodec({"examples": 4, "init": "class", "label_scale": 2.0}, trainer).initial_set(plan)
    # three runs of four class-3 examples, then the four class-7 examples
    torch.testing.assert_close(s.y_logits, 2.0 * F.one_hot(torch.tensor([3, 3, 3, 7]), 10).float())
    torch.testing.assert_close(s.x[3], x[y == 7].mean(0))
    torch.testing.assert_close(s.x[:3].mean(0), x[y == 3].mean(0))  # together: the class-3 mean
    assert not torch.allclose(s.x[0], s.x[1])  # three different runs of class 3
    one = FedSynthCodec({"examples": 1, "init": "class", "label_scale": 2.0}, trainer).initial_set(plan)
    torch.testing.assert_close(one.x[0], x.mean(0))
    torch.testing.assert_close(one.y_logits[0], 2.0 * torch.tensor([0, 0, 0, 0.75, 0, 0, 0, 0.25, 0, 0]))


def test_dct_basis_gives_scipys_lowest_frequency_coefficients():
    """The basis' columns are orthonormal, and an image's coefficients in it are scipy's orthonormal 2-D DCT-II at
    the r lowest frequencies (by u + v, then u); with channels, each channel's own."""
    from scipy.fft import dctn

    b = dct_basis([8, 8], 27)
    torch.testing.assert_close(b.T @ b, torch.eye(27), atol=1e-5, rtol=0)
    img = torch.rand(8, 8, dtype=torch.float64)
    ref = dctn(img.numpy(), norm="ortho")
    freqs = sorted(((u, v) for u in range(8) for v in range(8)), key=lambda f: (f[0] + f[1], f[0]))[:27]
    assert freqs[:4] == [(0, 0), (0, 1), (1, 0), (0, 2)]
    got = img.reshape(-1).float() @ b
    torch.testing.assert_close(got, torch.tensor([ref[u, v] for u, v in freqs], dtype=torch.float32),
                               atol=1e-5, rtol=0)
    two = dct_basis([2, 8, 8], 5)  # [128, 10]: channel 0's 5 coefficients, then channel 1's
    x = torch.rand(2, 8, 8)
    torch.testing.assert_close(x.reshape(-1) @ two, torch.cat([x[0].reshape(-1) @ b[:, :5],
                                                              x[1].reshape(-1) @ b[:, :5]]))
    with pytest.raises(ConfigError, match="input_coefficients"):
        dct_basis([8, 8], 65)


def test_low_frequency_set_with_an_unbiased_residual_sketch(make_spec):
    """At the 1% budget of the recipe (75 floats): one synthetic example stored as 27 DCT coefficients (27 + 10 + 1
    floats) and a random mask of the residual on the other 37 floats, rescaled by P/37. The server's Δ̂ is the replay
    of the set on the decoded input plus that sketch, so E[Δ̂] = Δ over the mask (random_mask's unbiasedness)."""
    trainer = build_trainer(make_spec(data_kw={"num_clients": 10_000, "samples_per_client": 32}))
    x0s, deltas, plans = _clients(trainer, 3)
    codec = FedSynthCodec({"examples": 1, "init": "class", "input_coefficients": 27, "image_shape": [8, 8],
                           "residual_fraction": 0.5, "iterations": 20}, trainer)
    assert (codec.examples, codec.residual_floats, codec.upload_floats) == (1, 37, 75)
    s = codec.encode(x0s, deltas, plans)
    assert s.x.shape == (3, 1, 27) and s.y_logits.shape == (3, 1, 10)  # 27 + 10 + 1 floats per client
    # the set's replay on the decoded input (the coefficients mapped back through scipy-checked DCT basis)
    problem = InnerProblem(trainer)
    images = s.x @ dct_basis([8, 8], 27).T
    syn = torch.stack([replay_inner_steps(problem, x0s[i], SyntheticSet(images[i], s.y_logits[i], s.log_lr[i]), 1)
                       for i in range(3)])
    got = codec(x0s, deltas, plans)
    p = trainer.space.size
    for i, plan in enumerate(plans):
        kept = torch.zeros(p, dtype=torch.bool)
        kept[torch.randperm(p, generator=torch.Generator().manual_seed(
            derive_seed(0, "fedsynth-residual", plan.cid, plan.draw)))[:37]] = True
        torch.testing.assert_close(got[i][~kept], syn[i][~kept], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(got[i][kept], syn[i][kept] + (p / 37) * (deltas[i] - syn[i])[kept],
                                   rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="exceeds the budget"):
        FedSynthCodec({"examples": 1, "residual_fraction": 0.5}, trainer)  # a whole example (74) > 75 - 37
