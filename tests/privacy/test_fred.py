"""FreD end to end: the domain world, the ranking at ε = 1 over 20 seeds, embedders, budget checks, recipe."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runner.core.errors import ConfigError
from runner.data.domains import DOMAINS, check_mixture, federated_clients, sample_texts, total_variation
from runner.privacy.accounting import calibrate_noise, split_noise
from runner.privacy.estimators import RELEASES
from runner.privacy.fred import fred_scores, ranks

PRIVATE = {"jobs": 0.4, "forum": 0.3, "microblog": 0.2, "code": 0.1}
CANDIDATES = {
    "near": {"jobs": 0.35, "forum": 0.3, "microblog": 0.25, "code": 0.1},
    "forum_heavy": {"jobs": 0.15, "forum": 0.55, "microblog": 0.2, "code": 0.1},
    "social": {"jobs": 0.1, "forum": 0.2, "microblog": 0.6, "code": 0.1},
    "code_docs": {"jobs": 0.05, "forum": 0.1, "microblog": 0.05, "code": 0.8},
    "microblog_only": {"microblog": 1.0},
}


def test_domain_generator_is_deterministic_and_mixture_controlled():
    assert sample_texts(PRIVATE, 50, 3) == sample_texts(PRIVATE, 50, 3)
    assert sample_texts(PRIVATE, 50, 3) != sample_texts(PRIVATE, 50, 4)
    only_code = sample_texts({"code": 1.0}, 30, 0)
    assert all(t.startswith("# ") for t in only_code)
    clients = federated_clients(PRIVATE, 5, 7, seed=1)
    assert [len(c) for c in clients] == [7] * 5
    assert check_mixture({"jobs": 2, "code": 2}) == {"jobs": 0.5, "forum": 0.0, "microblog": 0.0, "code": 0.5}
    assert total_variation(PRIVATE, CANDIDATES["near"]) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="unknown domain 'poetry'"):
        sample_texts({"poetry": 1.0}, 3, 0)


@pytest.fixture(scope="module")
def domain_pool():
    """50 real all-MiniLM-L6-v2 embeddings per domain; worlds are drawn from them by mixture."""
    from runner.privacy.embedders import MiniLMEmbedder

    emb = MiniLMEmbedder()
    return {d: emb.embed(sample_texts({d: 1.0}, 50, seed=11)) for d in DOMAINS}


def _world(pool, seed, num_clients=200, m=8, size=300):
    rng = np.random.default_rng(seed)
    names = list(DOMAINS)

    def draw(mix, n):
        p = check_mixture(mix)
        doms = rng.choice(names, size=n, p=[p[d] for d in names])
        return np.stack([pool[d][rng.integers(len(pool[d]))] for d in doms])

    alpha = np.array([check_mixture(PRIVATE)[d] for d in names]) * 5.0 + 1e-3
    clients = [draw(dict(zip(names, rng.dirichlet(alpha))), m) for _ in range(num_clients)]
    return clients, {k: draw(v, size) for k, v in CANDIDATES.items()}


def test_fred_at_eps1_picks_the_true_best_in_19_of_20_seeds(domain_pool):
    truth = ranks({k: total_variation(PRIVATE, v) for k, v in CANDIDATES.items()})
    noise = split_noise(calibrate_noise(1.0, 3e-6, accountant="rdp"), {r: 1.0 for r in RELEASES})
    picks, fd_orders = 0, 0
    for seed in range(20):
        clients, cands = _world(domain_pool, seed)
        kw = dict(clip_norm=1.0, max_samples=8, seed=seed, projection_dim=16, secure=seed == 0)
        fred = fred_scores(clients, cands, noise=noise, **kw).scores
        fd = fred_scores(clients, cands, noise=None, **kw).scores
        picks += min(fred, key=fred.get) == "near"
        fd_orders += ranks(fd) == truth
    assert fd_orders == 20, "non-private FD must rank the candidates in the true order"
    assert picks >= 19


@pytest.mark.parametrize("mode", ["clip", "normalize"])
def test_candidates_are_bounded_like_the_private_embeddings(mode):
    """Embeddings far outside the clip ball (the causal-LM case): a candidate drawn from the private distribution
    must be at FD ≈ 0 and rank first; the clipped fractions are the shares of norms above C on each side."""
    rng = np.random.default_rng(0)
    d = 6
    shift = np.r_[3.0, np.zeros(d - 1)]

    def draw(n, mean):
        return 5.0 * (mean + rng.standard_normal((n, d)))  # norms ~ 5·√(d + 9) ≫ C = 1

    clients = [draw(8, shift) for _ in range(300)]
    cands = {"same": draw(2000, shift), "other": draw(2000, -shift)}
    res = fred_scores(clients, cands, clip_norm=1.0, max_samples=8, noise=None, seed=0, secure=False,
                      embedding_norm=mode)
    assert res.scores["same"] < 0.01 < res.scores["other"]
    assert res.private_clipped_fraction == 1.0 and res.candidate_clipped_fraction == {"same": 1.0, "other": 1.0}
    # the reference: the Fréchet distance of the bounded embeddings, computed directly
    from runner.privacy.frechet import frechet_distance, gaussian_stats
    from runner.privacy.fred import bound_norms

    center = np.concatenate(list(cands.values())).mean(0)  # the public projection centres at the candidates' mean
    priv = bound_norms(np.concatenate(clients) - center, 1.0, mode)
    ref = frechet_distance(*gaussian_stats(priv), *gaussian_stats(bound_norms(cands["other"] - center, 1.0, mode)))
    assert res.scores["other"] == pytest.approx(ref, rel=1e-6)
    assert np.allclose(np.linalg.norm(priv, axis=1), 1.0)  # every norm was above C: clip and normalise agree


def test_causal_lm_embedder_mean_pools_without_padding_effects():
    import torch
    from omegaconf import OmegaConf

    from runner.core.config import HardwareConfig, ModelConfig
    from runner.privacy.embedders import CausalLMEmbedder

    torch.manual_seed(0)
    emb = CausalLMEmbedder.from_config(OmegaConf.structured(ModelConfig()), OmegaConf.structured(HardwareConfig()),
                                       batch_size=4)
    texts = ["short one", "a considerably longer sentence to force padding"]
    both = emb.embed(texts)
    assert both.shape == (2, emb.dim)
    np.testing.assert_allclose(both[0], emb.embed(texts[:1])[0], atol=1e-5)


def test_budget_overrun_fails_at_validation():
    from runner.core.cli import compose_recipe

    with pytest.raises(ConfigError, match=r"privacy.epsilon=1.0 .* would spend epsilon=2\.3"):
        compose_recipe("fred", ["algorithm.noise_multiplier=2"])
    assert compose_recipe("fred", ["privacy=none"]).privacy.epsilon is None  # non-private run is allowed
    cfg = compose_recipe("fred", ["privacy=eps7.58", "algorithm.noise_multiplier=2"])
    assert cfg.privacy.epsilon == 7.58
    with pytest.raises(ConfigError, match="privacy.delta"):
        compose_recipe("fred", ["privacy.delta=1.0"])
    with pytest.raises(ConfigError, match="candidates.bad: unknown domain"):
        compose_recipe("fred", ["+dataset.params.candidates.bad={poetry: 1.0}"])


def test_recipe_smoke(tmp_path):
    from runner.core.cli import run_recipe

    res = run_recipe("fred", ["run.smoke=true", "run.progress=false"], run_dir=tmp_path)
    assert set(res["candidates"]) == set(CANDIDATES)
    for c in res["candidates"].values():
        assert np.isfinite(c["fred"]) and c["fred"] >= 0 and c["true_rank"] in range(1, 6)
        assert np.isfinite(c["perplexity"])
    assert res["candidates"]["near"]["true_rank"] == 1
    assert res["spearman_fred_vs_true"] > 0.5  # FreD orders the candidates like their true distance
    assert res["spearman_fred_vs_downstream"] > 0  # lower FreD, lower private-test perplexity after FL
    assert res["privacy"]["fred"]["delta"] == 3e-6
    assert 0.97 <= res["privacy"]["fred"]["epsilon"] <= 1.0
    assert res["privacy"]["validation"]["epsilon"] is None  # FedAvg without DP: evaluation only
    assert any("fd_nonprivate" in item for item in res["privacy"]["not_private"])
    for c in res["candidates"].values():
        assert 0.0 <= c["clipped_fraction"] <= 1.0
    assert 0.0 <= res["data"]["private_clipped_fraction"] <= 1.0
    assert res["ranking"]["fd_nonprivate"] == res["ranking"]["true"]
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["privacy"]["fred"]["epsilon"] == pytest.approx(res["privacy"]["fred"]["epsilon"])
    # no private raw text on disk: the embedding cache holds the public candidates' texts only
    cached = set(np.load(tmp_path / "embeddings.npz")["texts"].tolist())
    from runner.core.cli import compose_recipe
    from runner.privacy.fred import build_world

    world = build_world(compose_recipe("fred", ["run.smoke=true"]).dataset.params, 0)
    private = {t for c in world["train_clients"] for t in c} - {t for v in world["candidates"].values() for t in v}
    assert private and not cached & private


def test_recipe_smoke_with_dp_validation(tmp_path):
    """The validation's FL fine-tuning under DP-FedAvg with its own budget, composed over every candidate's run;
    the noise multiplier against an independent calibration (q = C/N, rounds × candidates steps)."""
    from runner.core.cli import run_recipe
    from runner.privacy.accounting import calibrate_noise

    res = run_recipe("fred", ["run.smoke=true", "run.progress=false", "algorithm.validation.dp_epsilon=2.0"],
                     run_dir=tmp_path)
    val = res["privacy"]["validation"]
    n_clients, c, rounds = res["data"]["clients"], 3, 2  # smoke: clients_per_round 3, rounds 2
    assert val["sample_rate"] == pytest.approx(c / n_clients) and val["steps"] == rounds * len(CANDIDATES)
    z = calibrate_noise(2.0, 3e-6, steps=rounds * len(CANDIDATES), sample_rate=c / n_clients, accountant="rdp")
    assert val["noise_multiplier"] == pytest.approx(z) and 1.9 <= val["epsilon"] <= 2.0
    assert 0.97 <= res["privacy"]["fred"]["epsilon"] <= 1.0  # the FreD release keeps its own budget
    assert all(np.isfinite(c["perplexity"]) for c in res["candidates"].values())
    assert any("DP-FedAvg" in item for item in res["privacy"]["not_private"])
