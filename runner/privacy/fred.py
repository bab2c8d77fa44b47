"""FreD: rank public prefinetuning datasets by a private federated Fréchet distance (arXiv 2302.09042).

Algorithm box:
1. Embed every sample with a language model: the private clients' samples on device, each public
   candidate's samples on the server.
2. (Optional, public) project embeddings onto the top ``projection_dim`` principal directions of the
   union of the public candidates, centred at their mean: a public, data-independent-of-clients map that
   shrinks the covariance release from d² to k² entries. Unverified against the paper; null disables it.
3. Clients cap their samples, bound each embedding's norm by C (``embedding_norm``: ``clip`` scales norms
   above C down to C; ``normalize`` scales every embedding to norm C) and send count, Σx and Σxxᵀ through
   secure aggregation; the server adds Gaussian noise calibrated to the run's (ε, δ) and estimates the
   private mean and PSD covariance (:mod:`runner.privacy.estimators`).
4. The server bounds the candidates' (projected) embeddings exactly as the clients bound theirs, so both
   sides live in the same ball; FreD(candidate) = Fréchet distance between the private estimate and the
   candidate's (mean, covariance). The lowest FreD is the recommended prefinetuning dataset.
5. Validation (not a private release; an oracle check of the ranking, evaluation only): prefinetune a small
   LM on each candidate, FL-finetune it with FedAvg on the private clients (DP-FedAvg under its own budget
   with ``validation.dp_epsilon``), and correlate FreD with the final private-test perplexity (Spearman).

Privacy bookkeeping: ``privacy.fred`` is the (ε, δ) of the FreD release (the only output meant for a real
deployment); ``privacy.not_private`` lists everything else the run writes that depends on private data
without DP (evaluation only). Private raw text is never written unless ``save_private_text=true``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from omegaconf import DictConfig

from runner.core.context import RunContext
from runner.core.errors import ConfigError
from runner.core.seeding import derive_seed
from runner.privacy.accounting import GaussianRelease, calibrate_noise, epsilon_spent, gdp_mu, split_noise
from runner.privacy.estimators import RELEASES, clip_rows, dp_mean_and_covariance
from runner.privacy.frechet import frechet_distance, gaussian_stats
from runner.privacy.user_dp import SamplingModel, epsilon_for_noise, noise_for_budget


# --------------------------------------------------------------------------- config
@dataclass
class FredValidationConfig:
    """Prefinetune → FedAvg-finetune → private-test perplexity, per candidate (tiny LM on CPU)."""

    enabled: bool = True
    prefinetune_steps: int = 150
    batch_size: int = 16
    seq_len: int = 64
    lr: float = 3e-3
    warmup_steps: int = 10
    rounds: int = 5
    clients_per_round: int = 8
    local_steps: int = 4
    client_lr: float = 1e-3
    server_lr: float = 1.0
    eval_batches: int | None = None  # test batches scored; null: every window of every held-out private client
    # DP-FedAvg for the FL fine-tuning, with its own budget over all candidates' runs; null: plain FedAvg
    dp_epsilon: float | None = None
    dp_delta: float = 3e-6
    dp_clip_norm: float = 0.5  # S: per-client update clip


@dataclass
class FredConfig:
    """The ``fred`` algorithm (keys of ``conf/algorithm/fred.yaml``)."""

    name: str = "fred"
    embedder: str = "minilm"  # registry kind `embedder`: minilm | causal_lm
    embed_batch_size: int = 64
    projection_dim: int | None = 32  # PCA on public candidates; null keeps the embedder's dimension
    clip_norm: float = 1.0  # C: per-sample L2 clip
    embedding_norm: str = "clip"  # clip (norm > C scaled to C) | normalize (every norm = C); both sides alike
    save_private_text: bool = False  # write the private clients' texts (and their embeddings) to embeddings.npz
    max_samples_per_client: int = 8  # m: cap on samples per client (user-level sensitivity m·C)
    noise_multiplier: float | None = None  # σ of the combined release; null calibrates it to the privacy budget
    noise_split: dict[str, float] = field(default_factory=lambda: {r: 1.0 for r in RELEASES})  # 1/σ_i² ∝ w_i
    secure_aggregation: bool = True
    validation: FredValidationConfig = field(default_factory=FredValidationConfig)

    @staticmethod
    def validate(cfg: DictConfig) -> None:
        a, p = cfg.algorithm, cfg.privacy
        from runner.core import registry

        if a.embedder not in registry.names("embedder"):
            raise ConfigError(f"algorithm.embedder='{a.embedder}' (allowed: {', '.join(registry.names('embedder'))})")
        for key in ("embed_batch_size", "max_samples_per_client"):
            if a[key] < 1:
                raise ConfigError(f"algorithm.{key}={a[key]} must be >= 1")
        if a.projection_dim is not None and a.projection_dim < 1:
            raise ConfigError(f"algorithm.projection_dim={a.projection_dim} must be >= 1 or null")
        if a.clip_norm <= 0:
            raise ConfigError(f"algorithm.clip_norm={a.clip_norm} must be > 0")
        if a.embedding_norm not in EMBEDDING_NORMS:
            raise ConfigError(f"algorithm.embedding_norm={a.embedding_norm} must be one of: "
                              f"{', '.join(EMBEDDING_NORMS)}")
        if set(a.noise_split) != set(RELEASES) or any(w <= 0 for w in a.noise_split.values()):
            raise ConfigError(f"algorithm.noise_split={dict(a.noise_split)} must give a weight > 0 to each of "
                              f"{', '.join(RELEASES)}")
        if a.noise_multiplier is not None and a.noise_multiplier <= 0:
            raise ConfigError(f"algorithm.noise_multiplier={a.noise_multiplier} must be > 0 or null")
        if a.noise_multiplier is not None and p.delta is None:
            raise ConfigError("algorithm.noise_multiplier is set but privacy.delta is null: choose a privacy "
                              "budget (e.g. privacy=eps1) to account the releases")
        if a.noise_multiplier is not None and p.epsilon is not None:
            plan = release_plan(a, p)
            spent = epsilon_spent(plan, p.delta, p.accountant)
            if spent > p.epsilon * (1 + 1e-9):
                sig = ", ".join(f"{r.name} σ={r.noise_multiplier:.3g}" for r in plan)
                raise ConfigError(
                    f"privacy budget exceeded: privacy.epsilon={p.epsilon} (delta={p.delta}, "
                    f"accountant={p.accountant}) but the planned releases ({sig}) would spend epsilon={spent:.4g}; "
                    "raise algorithm.noise_multiplier or set it to null to calibrate")
        v = a.validation
        for key in ("prefinetune_steps", "batch_size", "seq_len", "rounds", "clients_per_round", "local_steps",
                    "eval_batches"):
            if v[key] is not None and v[key] < 1:
                raise ConfigError(f"algorithm.validation.{key}={v[key]} must be >= 1")
        if v.dp_epsilon is not None and (v.dp_epsilon <= 0 or v.dp_clip_norm <= 0 or not 0 < v.dp_delta < 1):
            raise ConfigError(f"algorithm.validation.dp_epsilon={v.dp_epsilon}, dp_clip_norm={v.dp_clip_norm} must "
                              f"be > 0 and dp_delta={v.dp_delta} in (0, 1)")
        if v.warmup_steps >= v.prefinetune_steps:
            raise ConfigError(f"algorithm.validation.warmup_steps={v.warmup_steps} must be < "
                              f"algorithm.validation.prefinetune_steps={v.prefinetune_steps}")
        try:
            check_data_params(cfg.dataset.params)
        except ValueError as e:
            raise ConfigError(f"dataset.params: {e}") from None


def check_data_params(params: Mapping[str, Any]) -> None:
    """The builtin FreD world's parameters: a private mixture, client sizes, ≥ 2 candidate mixtures."""
    from runner.data.domains import check_mixture

    for key in ("private_mixture", "candidates", "num_clients", "samples_per_client", "test_clients",
                "candidate_size"):
        if key not in params:
            raise ValueError(f"missing key '{key}'")
    check_mixture(params["private_mixture"], "private_mixture")
    if len(params["candidates"]) < 2:
        raise ValueError("candidates must name at least 2 candidate mixtures")
    for name, mix in params["candidates"].items():
        check_mixture(mix, f"candidates.{name}")
    for key in ("num_clients", "samples_per_client", "test_clients", "candidate_size"):
        if int(params[key]) < 1:
            raise ValueError(f"{key}={params[key]} must be >= 1")


def release_plan(a: Any, privacy: Any) -> list[GaussianRelease]:
    """The three Gaussian releases (count, sum, second moment) with their noise multipliers."""
    sigma = a.noise_multiplier
    if sigma is None:
        sigma = calibrate_noise(privacy.epsilon, privacy.delta, steps=1, sample_rate=1.0,
                                accountant=privacy.accountant)
    return [GaussianRelease(k, s) for k, s in split_noise(float(sigma), dict(a.noise_split)).items()]


# --------------------------------------------------------------------------- FreD on embeddings
def fit_projection(public: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Centre and top-``k`` principal directions of public embeddings (identity when k is None)."""
    center = public.mean(0)
    if k is None or k >= public.shape[1]:
        return center, np.eye(public.shape[1])
    xc = public - center
    _, v = np.linalg.eigh(xc.T @ xc)  # ascending eigenvalues: the last k columns are the top directions
    return center, v[:, ::-1][:, :k].copy()


EMBEDDING_NORMS = ("clip", "normalize")


def bound_norms(x: np.ndarray, clip_norm: float, mode: str = "clip") -> np.ndarray:
    """Rows with L2 norm ≤ C: ``clip`` scales rows above C down to C, ``normalize`` scales every row to C."""
    if mode == "normalize":
        return np.asarray(x, dtype=np.float64) * (clip_norm / np.maximum(np.linalg.norm(x, axis=1, keepdims=True),
                                                                         1e-12))
    if mode != "clip":
        raise ValueError(f"embedding_norm={mode!r} must be one of {EMBEDDING_NORMS}")
    return clip_rows(np.asarray(x, dtype=np.float64), clip_norm)


def clipped_fraction(x: np.ndarray, clip_norm: float) -> float:
    """Share of rows whose L2 norm exceeds C (the rows that clipping changes)."""
    return float(np.mean(np.linalg.norm(x, axis=1) > clip_norm)) if len(x) else 0.0


@dataclass
class FredScores:
    """FreD of each candidate and the shares of embeddings whose norm exceeded C on each side."""

    scores: dict[str, float]
    candidate_clipped_fraction: dict[str, float]
    private_clipped_fraction: float  # a statistic of private data without DP: evaluation only


def fred_scores(private_clients: Sequence[np.ndarray], candidates: Mapping[str, np.ndarray], clip_norm: float,
                max_samples: int, noise: Mapping[str, float] | None, seed: int,
                projection_dim: int | None = None, secure: bool = True, embedding_norm: str = "clip") -> FredScores:
    """FreD of each candidate to the clients' (DP) embedding distribution; ``noise`` None = non-private FD.
    Both sides are projected by the same public map and bounded to norm C the same way."""
    center, basis = fit_projection(np.concatenate(list(candidates.values())), projection_dim)
    clients = [(np.asarray(x) - center) @ basis for x in private_clients]
    private_frac = clipped_fraction(np.concatenate(clients), clip_norm)
    bounded = [bound_norms(x, clip_norm, embedding_norm) for x in clients]  # estimators clip again: a no-op
    mu_p, cov_p, _ = dp_mean_and_covariance(bounded, clip_norm, max_samples, None if noise is None else dict(noise),
                                            seed, secure=secure)
    out, fracs = {}, {}
    for name, x in candidates.items():
        proj = (np.asarray(x) - center) @ basis
        fracs[name] = clipped_fraction(proj, clip_norm)
        mu_c, cov_c = gaussian_stats(bound_norms(proj, clip_norm, embedding_norm))
        out[name] = frechet_distance(mu_p, cov_p, mu_c, cov_c)
    return FredScores(out, fracs, private_frac)


def ranks(scores: Mapping[str, float]) -> dict[str, int]:
    """1 = smallest score."""
    order = sorted(scores, key=lambda k: scores[k])
    return {k: i + 1 for i, k in enumerate(order)}


# --------------------------------------------------------------------------- validation stage
def validation_sampling(v: Any, num_clients: int, n_candidates: int) -> SamplingModel:
    """The validation's DP releases: clients_per_round of num_clients per round, rounds × candidates rounds (every
    candidate's FL run trains on the same private clients, so their spends compose)."""
    return SamplingModel(min(v.clients_per_round, num_clients), num_clients, v.rounds * n_candidates)


def fedavg_finetune(model: Any, client_streams: Sequence[Any], v: Any, seed: int,
                    noise_multiplier: float | None = None) -> None:
    """FedAvg: each round, sampled clients run ``local_steps`` AdamW steps from the global weights; the server
    adds ``server_lr`` × the token-weighted mean update. With ``noise_multiplier`` it is DP-FedAvg
    (:class:`runner.privacy.user_dp.DPFedAvg`): updates clipped to ``v.dp_clip_norm``, uniform weights, noise
    z·S on the sum, fixed denominator clients_per_round; accounted as a subsampled Gaussian with q = C/N (the
    sample is fixed-size, treated as Poisson, as in ``runner.federated.private``). (A compact stand-in for
    ``runner.federated``'s simulator, which trains its own models, not this stage's LM.)"""
    import torch

    from runner.models.finetune import sample_windows
    from runner.privacy.user_dp import DPFedAvg

    rng = np.random.default_rng(derive_seed(seed, "fedavg"))
    gen = torch.Generator().manual_seed(derive_seed(seed, "fedavg", "windows") % 2**63)
    global_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
    model.train()
    for _ in range(v.rounds):
        chosen = rng.choice(len(client_streams), size=min(v.clients_per_round, len(client_streams)), replace=False)
        total_w, agg = 0.0, {k: torch.zeros_like(t, dtype=torch.float32) for k, t in global_state.items()}
        floats = [k for k, t in global_state.items() if t.is_floating_point()]
        dp = None if noise_multiplier is None else DPFedAvg(
            sum(global_state[k].numel() for k in floats), v.dp_clip_norm, noise_multiplier,
            float(min(v.clients_per_round, len(client_streams))), rng)
        for c in chosen.tolist():
            stream = client_streams[c]
            model.load_state_dict(global_state)
            opt = torch.optim.AdamW(model.parameters(), lr=v.client_lr, weight_decay=0.0)
            seq_len = min(v.seq_len, stream.numel() - 1)
            for _ in range(v.local_steps):
                batch = sample_windows(stream, v.batch_size, seq_len, gen).to(model.device)
                loss = model(input_ids=batch, labels=batch).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            state = model.state_dict()
            if dp is not None:
                dp.add(torch.cat([(state[k].double() - global_state[k].double()).ravel() for k in floats]).numpy())
                continue
            w = float(stream.numel())
            for k, t in state.items():
                agg[k] += w * (t.float() - global_state[k].float())
            total_w += w
        if dp is not None:  # the noised fixed-denominator mean, unflattened into the float tensors
            flat, offset = torch.as_tensor(dp.release()), 0
            for k in floats:
                n = global_state[k].numel()
                agg[k] = flat[offset:offset + n].reshape(global_state[k].shape).float()
                offset += n
            total_w = 1.0
        for k in global_state:
            if global_state[k].is_floating_point():
                global_state[k] = global_state[k] + (v.server_lr * agg[k] / total_w).to(global_state[k].dtype)
    model.load_state_dict(global_state)
    model.eval()


def validate_candidate(name: str, texts: Sequence[str], client_texts: Sequence[Sequence[str]],
                       test_texts: Sequence[str], cfg: DictConfig, ctx: RunContext,
                       noise_multiplier: float | None = None) -> dict[str, float]:
    """Prefinetune a fresh small LM on ``texts``, FedAvg-finetune on the clients, return test perplexities."""
    import torch

    from runner.models.builder import build_model_and_tokenizer
    from runner.models.finetune import LMTrainConfig, evaluate_loss, finetune, token_stream

    v = cfg.algorithm.validation
    torch.manual_seed(derive_seed(ctx.seed, "validation", "init") % 2**63)  # same initial weights per candidate
    model, tok = build_model_and_tokenizer(cfg.model, cfg.hardware)
    test = token_stream(list(test_texts), tok)
    # a prefix of the test stream holds only the first few clients, whose own mixtures can be far from the
    # private one: by default score all of it
    eval_batches = v.eval_batches or math.ceil(max(1, (test.numel() - 1) // v.seq_len) / v.batch_size)
    train_cfg = LMTrainConfig(steps=v.prefinetune_steps, batch_size=v.batch_size, seq_len=v.seq_len, lr=v.lr,
                              warmup_steps=v.warmup_steps, eval_every=v.prefinetune_steps,
                              checkpoint_every=v.prefinetune_steps)
    finetune(model, token_stream(list(texts), tok), train_cfg, ctx, stage=f"prefinetune_{name}")
    pre = evaluate_loss(model, test, v.seq_len, v.batch_size, eval_batches)
    streams = [token_stream(list(t), tok) for t in client_texts]
    fedavg_finetune(model, streams, v, derive_seed(ctx.seed, "fedavg", name), noise_multiplier)
    post = evaluate_loss(model, test, v.seq_len, v.batch_size, eval_batches)
    return {"perplexity_after_prefinetune": math.exp(pre), "perplexity": math.exp(post)}


# --------------------------------------------------------------------------- the recipe
def build_world(params: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """Private train/test clients and public candidates from the builtin domain generator."""
    from runner.data.domains import federated_clients, sample_texts, total_variation

    p = dict(params)
    conc = float(p.get("client_concentration", 5.0))
    n_train, n_test, m = int(p["num_clients"]), int(p["test_clients"]), int(p["samples_per_client"])
    clients = federated_clients(p["private_mixture"], n_train + n_test, m, derive_seed(seed, "private"), conc)
    candidates = {name: sample_texts(mix, int(p["candidate_size"]), derive_seed(seed, "candidate", name))
                  for name, mix in p["candidates"].items()}
    tv = {name: total_variation(p["private_mixture"], mix) for name, mix in p["candidates"].items()}
    return {"train_clients": clients[:n_train], "test_texts": [t for c in clients[n_train:] for t in c],
            "candidates": candidates, "tv": tv}


def embed_unique(embedder: Any, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """Embed each distinct text once (templated worlds repeat texts)."""
    uniq = list(dict.fromkeys(texts))
    return dict(zip(uniq, embedder.embed(uniq)))


def run_fred(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """Private FreD of each candidate, its ranking and privacy spend; optional downstream validation."""
    from scipy.stats import spearmanr

    from runner.privacy.embedders import build_embedder

    a, privacy = cfg.algorithm, cfg.privacy
    world = build_world(cfg.dataset.params, ctx.seed)
    names = list(world["candidates"])

    # 1. embed (the cache holds the candidates; the private clients' texts and embeddings only if asked)
    emb = ctx.path("embeddings.npz")
    private_texts = [t for c in world["train_clients"] for t in c]
    public_texts = [t for n in names for t in world["candidates"][n]]
    cache_texts = public_texts + (private_texts if a.save_private_text else [])
    table: dict[str, np.ndarray] = {}
    if emb.exists():
        cache = dict(np.load(emb, allow_pickle=False))
        table = dict(zip(cache["texts"].tolist(), cache["vectors"]))
    missing = [t for t in dict.fromkeys(private_texts + public_texts) if t not in table]
    embedder = build_embedder(a.embedder, cfg, a.embed_batch_size) if missing else None
    if missing:
        table.update(embed_unique(embedder, missing))
    if not emb.exists():
        keep = list(dict.fromkeys(cache_texts))
        np.savez(emb, texts=np.array(keep), vectors=np.stack([table[t] for t in keep]))
    clients = [np.stack([table[t] for t in c]) for c in world["train_clients"]]
    cands = {n: np.stack([table[t] for t in world["candidates"][n]]) for n in names}

    # 2-4. private statistics and FreD
    private = privacy.epsilon is not None or a.noise_multiplier is not None
    plan = release_plan(a, privacy) if private else []
    noise = {r.name: r.noise_multiplier for r in plan} if private else None
    kw = dict(clip_norm=a.clip_norm, max_samples=a.max_samples_per_client, projection_dim=a.projection_dim,
              secure=a.secure_aggregation, seed=derive_seed(ctx.seed, "fred"), embedding_norm=a.embedding_norm)
    released = fred_scores(clients, cands, noise=noise, **kw)
    fred = released.scores
    fd = fred_scores(clients, cands, noise=None, **kw).scores
    true_rank, fred_rank, fd_rank = ranks(world["tv"]), ranks(fred), ranks(fd)
    for i, n in enumerate(names):
        ctx.log({"fred": fred[n], "fd_nonprivate": fd[n], "tv_distance": world["tv"][n]}, i, "fred")

    spent: dict[str, Any] = {"epsilon": None, "delta": privacy.delta, "accountant": privacy.accountant,
                             "budget_epsilon": privacy.epsilon}
    if private:
        spent.update(epsilon=epsilon_spent(plan, privacy.delta, privacy.accountant), gdp_mu=gdp_mu(plan),
                     noise_multipliers=noise)

    # 5. validation
    validation: dict[str, dict[str, float]] = {}
    v = a.validation
    val_privacy: dict[str, Any] = {"epsilon": None, "delta": None,
                                   "note": "FedAvg without DP: an evaluation of the ranking only"}
    z_val = None
    if v.enabled and v.dp_epsilon is not None:
        sampling = validation_sampling(v, len(world["train_clients"]), len(names))
        z_val = noise_for_budget(v.dp_epsilon, v.dp_delta, sampling, privacy.accountant)
        val_privacy = {"epsilon": epsilon_for_noise(z_val, v.dp_delta, sampling, accountant=privacy.accountant),
                       "delta": v.dp_delta, "accountant": privacy.accountant, "budget_epsilon": v.dp_epsilon,
                       "noise_multiplier": z_val, "clip_norm": v.dp_clip_norm, "sample_rate": sampling.sample_rate,
                       "steps": sampling.steps, "note": "DP-FedAvg over all candidates' FL runs (their spends "
                       "compose); the test perplexities are still scored on private clients without DP"}
    if v.enabled:
        for n in names:
            stage = f"validation_{n}"
            if not ctx.checkpoints.done(stage):
                ctx.checkpoints.mark_done(stage, validate_candidate(
                    n, world["candidates"][n], world["train_clients"], world["test_texts"], cfg, ctx, z_val))
            validation[n] = _done_result(ctx, stage)
            ctx.log(validation[n], names.index(n), "validation")

    candidates = {n: {"fred": fred[n], "fd_nonprivate": fd[n], "tv_distance": world["tv"][n],
                      "true_rank": true_rank[n], "fred_rank": fred_rank[n], "fd_rank": fd_rank[n],
                      "clipped_fraction": released.candidate_clipped_fraction[n],
                      **validation.get(n, {})} for n in names}
    best_true = min(names, key=lambda n: world["tv"][n])
    best_fred = min(names, key=lambda n: fred[n])
    results: dict[str, Any] = {
        "candidates": candidates,
        "ranking": {"true": sorted(names, key=true_rank.get), "fred": sorted(names, key=fred_rank.get),
                    "fd_nonprivate": sorted(names, key=fd_rank.get)},
        "best": {"true": best_true, "fred": best_fred, "fred_picks_true_best": best_fred == best_true},
        "spearman_fred_vs_true": float(spearmanr([fred[n] for n in names], [world["tv"][n] for n in names])[0]),
        "spearman_fd_vs_true": float(spearmanr([fd[n] for n in names], [world["tv"][n] for n in names])[0]),
        "spearman_fred_vs_downstream": None,
        "privacy": {"fred": spent, "validation": val_privacy,
                    "not_private": not_private(bool(validation), a.save_private_text, z_val is not None)},
        "data": {"clients": len(clients), "private_samples": int(sum(len(c) for c in clients)),
                 "embedding_dim": int(clients[0].shape[1]), "projection_dim": a.projection_dim,
                 "embedding_norm": a.embedding_norm, "clip_norm": a.clip_norm,
                 "private_clipped_fraction": released.private_clipped_fraction},
    }
    if validation:
        ppl = [validation[n]["perplexity"] for n in names]
        results["spearman_fred_vs_downstream"] = float(spearmanr([fred[n] for n in names], ppl)[0])
        results["spearman_true_vs_downstream"] = float(spearmanr([world["tv"][n] for n in names], ppl)[0])
        pre = [validation[n]["perplexity_after_prefinetune"] for n in names]
        results["spearman_fred_vs_prefinetune_perplexity"] = float(spearmanr([fred[n] for n in names], pre)[0])
        ctx.plot("fred_vs_perplexity", {n: ([fred[n]], [validation[n]["perplexity"]]) for n in names},
                 "FreD (private)", "private-test perplexity after FL", title="FreD vs downstream", kind="scatter")
    ctx.plot("fred_vs_tv", {"FreD": ([world["tv"][n] for n in names], [fred[n] for n in names]),
                            "FD (non-private)": ([world["tv"][n] for n in names], [fd[n] for n in names])},
             "TV distance of candidate mixture to private mixture", "Fréchet distance", kind="scatter")
    return results


def not_private(validation: bool, saved_text: bool, dp_validation: bool = False) -> list[str]:
    """What the run writes that depends on private data without DP (evaluation only, not for release)."""
    out = ["candidates.*.fd_nonprivate, candidates.*.fd_rank, ranking.fd_nonprivate, spearman_fd_vs_true "
           "(exact statistics of the private embeddings; also in metrics.jsonl)",
           "data.private_clipped_fraction (share of private embeddings with norm > C)",
           "candidates.*.tv_distance, candidates.*.true_rank, ranking.true, best.true, best.fred_picks_true_best, "
           "spearman_fred_vs_true (the builtin world's private mixture)"]
    if validation:
        trained = "DP-FedAvg (privacy.validation)" if dp_validation else "FedAvg without DP"
        out.append("candidates.*.perplexity, candidates.*.perplexity_after_prefinetune, spearman_*_downstream, "
                   f"spearman_fred_vs_prefinetune_perplexity (models trained on the private clients by {trained}, "
                   "scored on held-out private clients without DP)")
    if saved_text:
        out.append("embeddings.npz: the private clients' texts and embeddings (save_private_text=true)")
    return out


def _done_result(ctx: RunContext, stage: str) -> dict[str, float]:
    res = ctx.checkpoints.done(stage)
    if not isinstance(res, dict):
        raise RuntimeError(f"stage {stage} is marked done without a result")
    return res
