"""PrE-Text: the vote histogram's sensitivity and release, the search, masking, accounting, and the PE loop."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from runner.core.errors import ConfigError
from runner.privacy.pre_text import (
    PrivateEvolution,
    client_vote_vectors,
    dp_histogram,
    nearest_synthetic,
    noise_for,
    release_plan,
    resample,
)


def test_client_votes_have_unit_norm_and_sensitivity_one():
    votes = client_vote_vectors([np.array([0, 0, 1]), np.array([2, 2, 2, 2]), np.array([3])], 4)
    # hand-computed: counts (2, 1, 0, 0)/√5, (0, 0, 4, 0)/4, (0, 0, 0, 1)
    np.testing.assert_allclose(votes[0], np.array([2, 1, 0, 0]) / math.sqrt(5))
    np.testing.assert_allclose(votes[1], [0, 0, 1, 0])
    np.testing.assert_allclose(np.linalg.norm(votes, axis=1), 1.0)
    # removing any one client moves the summed histogram by exactly 1 in L2
    for i in range(3):
        assert np.linalg.norm(votes.sum(0) - np.delete(votes, i, 0).sum(0)) == pytest.approx(1.0)


def test_dp_histogram_is_noise_minus_threshold_clipped():
    votes = client_vote_vectors([np.array([0] * 8)] * 30 + [np.array([1])] * 3, 3)  # totals (30, 3, 0)
    sigma, h = 2.0, 1.5
    out = dp_histogram(votes, sigma, h, np.random.default_rng(7))
    noise = np.random.default_rng(7).normal(0.0, sigma, size=3)  # the same draws, by hand
    np.testing.assert_allclose(out, np.maximum(np.array([30.0, 3.0, 0.0]) + noise - h * sigma, 0.0))
    draws = np.stack([dp_histogram(votes, sigma, 0.0, np.random.default_rng(s)) for s in range(4000)])
    assert draws[:, 0].std() == pytest.approx(sigma, rel=0.05)  # far from 0: the clip never binds
    assert (draws >= 0).all()


def test_faiss_search_matches_brute_force_and_the_client_side_search():
    from runner.privacy.pre_text_run import client_nearest

    rng = np.random.default_rng(0)
    private, synthetic = rng.normal(size=(200, 16)), rng.normal(size=(50, 16))
    brute = ((private[:, None] - synthetic[None]) ** 2).sum(-1).argmin(1)
    np.testing.assert_array_equal(nearest_synthetic(private, synthetic), brute)
    np.testing.assert_array_equal(client_nearest(torch.as_tensor(private), torch.as_tensor(synthetic)).numpy(), brute)


def test_resample_follows_the_released_histogram():
    rng = np.random.default_rng(1)
    out = resample(["a", "b", "c"], np.array([0.0, 3.0, 1.0]), 4000, rng)
    assert "a" not in out and out.count("b") / 4000 == pytest.approx(0.75, abs=0.03)
    assert set(resample(["a", "b"], np.zeros(2), 100, rng)) == {"a", "b"}  # nothing released: uniform


def test_mask_tokens_masks_the_fraction_of_maskable_positions_only():
    from runner.privacy.pre_text_models import mask_tokens

    maskable = torch.tensor([[False, True, True, True, True, True, True, True, True, True, True, False],
                             [False, True, True, True, False, False, False, False, False, False, False, False]])
    ids = torch.zeros_like(maskable, dtype=torch.long)
    chosen = mask_tokens(ids, maskable, 0.3, 4, torch.Generator().manual_seed(0))
    assert chosen.sum(1).tolist() == [3, 1]  # round(0.3·10) = 3, round(0.3·3) = 1
    assert not (chosen & ~maskable).any()


def test_noise_calibration_matches_the_papers_sigmas():
    """PAPERS.md section 5: T = 11, δ = 3e-6: σ ≈ 11.3 → ε = 1.29 (RDP); exact GDP σ = 10.49."""
    from omegaconf import OmegaConf

    a = OmegaConf.create({"noise_multiplier": None, "rounds": 11})
    gdp = noise_for(a, OmegaConf.create({"delta": 3e-6, "accountant": "gdp"}), 1.29)
    assert gdp == pytest.approx(10.49, abs=0.02)
    rdp = noise_for(a, OmegaConf.create({"delta": 3e-6, "accountant": "rdp"}), 1.29)
    assert rdp == pytest.approx(11.3, rel=0.03)
    mu = math.sqrt(11) / gdp  # μ-GDP, then δ(ε) at ε = 1.29 equals 3e-6 (Dong, Roth, Su)
    from scipy.stats import norm

    delta = norm.cdf(-1.29 / mu + mu / 2) - math.exp(1.29) * norm.cdf(-1.29 / mu - mu / 2)
    assert delta == pytest.approx(3e-6, rel=1e-3)
    assert release_plan(gdp, 11)[0].steps == 11


def test_private_evolution_moves_the_population_to_the_private_cluster():
    """Toy: texts 'A…' embed near +e1, 'B…' near -e1; every client holds A-like samples. Variation appends a
    suffix (kept in the same cluster). Nearly all survivors are A (a B survives only when its noise exceeds H)."""
    def embed(texts):
        return np.array([[1.0 if t.startswith("A") else -1.0, 0.01 * len(t)] for t in texts])

    def vary(texts, seed):
        return [t + "x" for t in texts]

    a = SimpleNamespace(lookahead=0, download_dtype="float32", threshold=2.0, rounds=4, population_size=40)
    clients = [np.array([[1.0, 0.1]] * 8) for _ in range(200)]
    initial = [f"A{i}" for i in range(4)] + [f"B{i}" for i in range(36)]
    seed_set, rounds = PrivateEvolution(embed, vary, clients, a).run(initial, sigma=5.0, seed=0)
    assert sum(t.startswith("A") for t in seed_set) / len(seed_set) >= 0.8  # initial population: 10% A
    # identical clients all vote for one A sample: each client's vector is e_j, so it gets 200 + noise - H
    assert rounds[0].histogram[:4].max() == pytest.approx(200 - 10, abs=4 * 5.0)
    assert rounds[-1].histogram.sum() > 0 and not any(r.fallback for r in rounds)


def test_fixed_noise_over_budget_fails_at_validation_and_paper_recipe_composes():
    from runner.core.cli import compose_recipe

    with pytest.raises(ConfigError, match="privacy budget exceeded"):
        compose_recipe("pre_text", ["algorithm.noise_multiplier=1.0"])
    paper = compose_recipe("pre_text_paper", [])
    assert paper.algorithm.rounds == 11 and paper.model.hf_id == "distilbert/distilgpt2"
    assert paper.algorithm.expansion.engine == "vllm" and paper.algorithm.variation.mlm.kind == "hf"
    with pytest.raises(ConfigError, match="dp_fedavg.server.mode"):
        compose_recipe("pre_text", ["algorithm.dp_fedavg.server.mode=fedbuff"])


def test_dp_fedavg_lm_clients_through_the_simulator():
    """The LM client trainer gives the update of a plain SGD loop on the same windows; one FedAvg run through the
    simulator moves 2 × 4 × P bytes per client per round (download + upload of float32 weights), and with a
    budget its noise comes from the simulator's accountant."""
    from omegaconf import OmegaConf

    from runner.models.builder import build_model_and_tokenizer
    from runner.models.finetune import token_stream
    from runner.privacy.pre_text_fl import DPFedAvgConfig, LMClientTrainer, run_dp_fedavg

    torch.manual_seed(0)
    model_cfg = OmegaConf.create({"kind": "tiny", "tokenizer": "byte", "hidden_size": 16, "num_layers": 1,
                                  "num_heads": 2, "num_kv_heads": 1, "intermediate_size": 32,
                                  "max_position_embeddings": 64, "rope_theta": 10000.0, "tie_word_embeddings": True})
    lm, tok = build_model_and_tokenizer(model_cfg)
    streams = [token_stream([f"client {i} says hello number {j}" for j in range(4)], tok) for i in range(6)]
    cfg = OmegaConf.structured(DPFedAvgConfig(rounds=2, concurrency=3, seq_len=16))
    cfg.client.local_steps, cfg.client.batch_size, cfg.client.lr = 2, 2, 0.1
    trainer = LMClientTrainer(lm, streams, cfg.client, cfg.seq_len, seed=3)
    x0 = trainer.space.flatten(lm)
    plan = trainer.plan(1, 0)
    delta = trainer.train_clients(x0[None], [1], [0])[0]
    ref = build_model_and_tokenizer(model_cfg)[0].train()  # the same weights, trained by hand
    torch.nn.utils.vector_to_parameters(x0.clone(), ref.parameters())
    opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for idx in plan.idx:
        opt.zero_grad()
        ref(input_ids=plan.x[idx], labels=plan.x[idx]).loss.backward()
        opt.step()
    torch.testing.assert_close(delta, torch.nn.utils.parameters_to_vector(ref.parameters()).detach() - x0)

    logged = []
    ctx = SimpleNamespace(seed=0, log=lambda m, step, stage: logged.append(m))  # what the run uses of a context
    privacy = OmegaConf.create({"epsilon": 5.0, "delta": 1e-5, "accountant": "rdp"})
    res, _ = run_dp_fedavg(lm, streams, cfg, privacy, 5.0, lambda m: {"next_token_accuracy": 0.0, "loss": 0.0},
                           ctx, "dp_fedavg_test")
    assert res["rounds"] == 2 and res["client_updates"] == 6
    assert res["client_bytes_per_round"] == pytest.approx(8 * x0.numel())
    assert res["client_flops_per_round"] > 0 and res["privacy"]["epsilon"] <= 5.0
    assert [m["server_steps"] for m in logged][:3] == [0, 1, 2]  # the start model and both rounds' models

    # a tuning entry with every client in one round is its own DP run: q = 1, T = 1, σ recalibrated to ε;
    # reference: the exact δ(ε) of one Gaussian release of sensitivity 1 (Balle & Wang 2018), which the
    # (looser) RDP calibration must meet, and which a 15% smaller σ would break
    from scipy.stats import norm

    from runner.privacy.pre_text import _dotted

    entry = OmegaConf.merge(cfg, _dotted({"concurrency": 6, "rounds": 1, "dp.clip_norm": 0.1}))
    res1, _ = run_dp_fedavg(lm, streams, entry, privacy, 5.0, lambda m: {"next_token_accuracy": 0.0, "loss": 0.0},
                            ctx, "dp_fedavg_test_all")
    p1 = res1["privacy"]
    assert (res1["rounds"], res1["client_updates"], p1["sample_rate"], p1["clip_norm"]) == (1, 6, 1.0, 0.1)

    def exact_delta(sigma: float, eps: float) -> float:
        return norm.cdf(-eps * sigma + 1 / (2 * sigma)) - math.exp(eps) * norm.cdf(-eps * sigma - 1 / (2 * sigma))

    z = p1["noise_multiplier"]
    assert exact_delta(z, 5.0) <= 1e-5 < exact_delta(0.85 * z, 5.0)
    assert z != res["privacy"]["noise_multiplier"] and res["privacy"]["sample_rate"] == pytest.approx(0.5)
