"""PrE-Text: differentially private synthetic text from federated clients by Private Evolution (arXiv 2406.02958).

Algorithm box (T rounds; N synthetic samples; clients each hold ≤ m private samples):
1. Start from N samples of the public population S_0.
2. Round t: the server embeds every synthetic sample (all-MiniLM-L6-v2; with ``lookahead`` k > 0 the embedding
   of a sample is the mean embedding of k of its variations) and sends the embeddings to the clients.
3. Each client embeds its samples; every private sample votes for its nearest synthetic sample (L2, faiss).
   The client's vote vector (counts over the N samples) is scaled to unit L2 norm, so adding or removing one
   client moves the summed histogram by at most 1 in L2: the sensitivity is 1 per client.
4. The server releases H̃ = Σ_clients votes + N(0, σ² I) (σ = the noise multiplier), subtracts the threshold
   H = ``threshold`` · σ and clips negatives to 0. The samples with positive mass are this round's survivors.
5. The next population: N draws from S_t with probability ∝ the clipped histogram, each varied by a masked LM
   (``mask_fraction`` = 30% of its tokens masked and refilled).
6. The union of the survivors of all rounds is the DP seed set. An LLM expands it with few-shot
   "List of diverse text samples" prompts (post-processing), and a small LM trains on seed ∪ expansion.

Privacy: T non-subsampled Gaussian releases of sensitivity 1 and noise multiplier σ, accounted through the
``privacy`` group (rdp / prv / gdp, :mod:`runner.privacy.accounting`); σ is calibrated to (ε, δ, T) or fixed
and checked in preflight. Everything after the releases (resampling, variation, expansion, training) is
post-processing. The comparison in one run, at each ε of ``epsilons``: PrE-Text, DP-FedAvg of the same LM on
the same clients through the federated simulator (:mod:`runner.privacy.pre_text_fl`) and the public-only LM;
each method's client bytes, FLOPs and seconds per round and its rounds are measured.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from runner.core.context import RunContext
from runner.core.errors import ConfigError
from runner.core.seeding import derive_seed
from runner.models.finetune import LMTrainConfig
from runner.privacy.accounting import GaussianRelease, calibrate_noise, epsilon_spent
from runner.privacy.pre_text_fl import DPFedAvgConfig
from runner.privacy.pre_text_models import MLMConfig

METHODS = ("pre_text", "dp_fedavg", "public_only")


# --------------------------------------------------------------------------- config
@dataclass
class VariationConfig:
    mask_fraction: float = 0.3  # share of a sample's tokens masked and refilled by the MLM
    temperature: float = 1.0
    mlm: MLMConfig = field(default_factory=MLMConfig)


@dataclass
class ExpansionConfig:
    """The LLM that expands the DP seed set: ``model`` null = the downstream LM (first fine-tuned on list-formatted
    seed samples for ``finetune_steps``); else a model config (``kind=hf``) served by ``engine``."""

    enabled: bool = True
    model: dict[str, Any] | None = None
    engine: str | None = None  # null: hardware.rollout_engine
    finetune_steps: int = 150
    num_samples: int = 300
    shots: int = 3
    seq_len: int = 256  # windows of the list-formatted fine-tuning corpus (cover a prompt and its completion)
    batch_size: int = 8
    max_new_tokens: int = 96
    temperature: float = 1.0
    top_p: float = 1.0


@dataclass
class PreTextConfig:
    """The ``pre_text`` algorithm (keys of ``conf/algorithm/pre_text.yaml``)."""

    name: str = "pre_text"
    epsilons: list[float] = field(default_factory=lambda: [1.29, 7.58])  # δ and accountant: the privacy group
    embedder: str = "minilm"
    embed_batch_size: int = 64
    population_size: int = 200  # N
    rounds: int = 5  # T
    lookahead: int = 0  # k variations averaged into a sample's embedding (0: its own embedding)
    samples_per_client: int = 8  # m: a client votes with at most m samples
    noise_multiplier: float | None = None  # σ; null: calibrated to each ε over T rounds
    threshold: float = 2.0  # H in units of σ
    download_dtype: str = "float16"  # embeddings sent to clients: float16 | float32
    variation: VariationConfig = field(default_factory=VariationConfig)
    expansion: ExpansionConfig = field(default_factory=ExpansionConfig)
    public_pretrain: LMTrainConfig = field(default_factory=lambda: LMTrainConfig(steps=400, eval_every=400,
                                                                                 checkpoint_every=400))
    downstream: LMTrainConfig = field(default_factory=lambda: LMTrainConfig(steps=300, eval_every=300,
                                                                            checkpoint_every=300))
    dp_fedavg: DPFedAvgConfig = field(default_factory=DPFedAvgConfig)
    eval_batch_size: int = 32

    @staticmethod
    def validate(cfg: DictConfig) -> None:
        from runner.core import registry
        from runner.federated.aggregators import round_goal
        from runner.federated.config import check_server
        from runner.federated.private import preflight
        from runner.models.finetune import check_train_config

        a, p = cfg.algorithm, cfg.privacy
        if a.embedder not in registry.names("embedder"):
            raise ConfigError(f"algorithm.embedder='{a.embedder}' (allowed: {', '.join(registry.names('embedder'))})")
        if not a.epsilons or any(not (e > 0 and math.isfinite(e)) for e in a.epsilons):
            raise ConfigError(f"algorithm.epsilons={list(a.epsilons)} must be finite values > 0")
        if p.delta is None:
            raise ConfigError("pre_text needs privacy.delta (and its accountant): choose a budget, "
                              "e.g. privacy=eps1.29")
        for key in ("population_size", "rounds", "samples_per_client", "embed_batch_size", "eval_batch_size"):
            if a[key] < 1:
                raise ConfigError(f"algorithm.{key}={a[key]} must be >= 1")
        if a.lookahead < 0 or a.threshold < 0:
            raise ConfigError(f"algorithm.lookahead={a.lookahead} and threshold={a.threshold} must be >= 0")
        if a.download_dtype not in ("float16", "float32"):
            raise ConfigError(f"algorithm.download_dtype={a.download_dtype} must be float16 or float32")
        v = a.variation
        if not 0 < v.mask_fraction <= 1 or v.temperature <= 0:
            raise ConfigError(f"algorithm.variation.mask_fraction={v.mask_fraction} must be in (0, 1] and "
                              f"temperature={v.temperature} > 0")
        if v.mlm.kind not in ("tiny", "hf") or (v.mlm.kind == "hf" and not (v.mlm.hf_id or v.mlm.path)):
            raise ConfigError("algorithm.variation.mlm.kind must be tiny, or hf with hf_id or path")
        if v.mlm.kind == "tiny" and (v.mlm.pretrain_steps < 1 or v.mlm.batch_size < 1):
            raise ConfigError("algorithm.variation.mlm.pretrain_steps and batch_size must be >= 1")
        e = a.expansion
        if e.enabled and (e.num_samples < 1 or e.shots < 1 or e.max_new_tokens < 1 or e.finetune_steps < 0):
            raise ConfigError("algorithm.expansion: num_samples, shots, max_new_tokens must be >= 1 and "
                              "finetune_steps >= 0")
        if e.engine is not None and e.engine not in registry.names("rollout"):
            allowed = ", ".join(registry.names("rollout"))
            raise ConfigError(f"algorithm.expansion.engine='{e.engine}' (allowed: {allowed})")
        if e.model is not None and (e.model.get("kind") != "hf" or not (e.model.get("hf_id") or e.model.get("path"))):
            raise ConfigError("algorithm.expansion.model must be null (the downstream LM) or kind=hf with hf_id/path")
        for key in ("public_pretrain", "downstream"):
            check_train_config(a[key], f"algorithm.{key}")
        if a.noise_multiplier is not None:
            if a.noise_multiplier <= 0:
                raise ConfigError(f"algorithm.noise_multiplier={a.noise_multiplier} must be > 0 or null")
            spent = epsilon_spent(release_plan(a.noise_multiplier, a.rounds), p.delta, p.accountant)
            if spent > min(a.epsilons) * (1 + 1e-9):
                raise ConfigError(f"privacy budget exceeded: {a.rounds} vote releases at σ={a.noise_multiplier} spend "
                                  f"epsilon={spent:.4g} (delta={p.delta}, accountant={p.accountant}) > "
                                  f"min(algorithm.epsilons)={min(a.epsilons)}; raise noise_multiplier or set it null")
        f = a.dp_fedavg
        if f.rounds < 1 or f.seq_len < 2 or not f.tune:
            raise ConfigError("algorithm.dp_fedavg: rounds must be >= 1, seq_len >= 2 and tune non-empty")
        check_server(f.server, "algorithm.dp_fedavg.server")
        if f.server.mode != "fedavg":
            raise ConfigError("algorithm.dp_fedavg.server.mode must be fedavg (DP-FedAvg)")
        if f.client.local_steps < 1 or f.client.batch_size < 1 or f.client.lr <= 0:
            raise ConfigError("algorithm.dp_fedavg.client: local_steps, batch_size must be >= 1 and lr > 0")
        try:
            params = check_data_params(cfg.dataset)
        except ValueError as err:
            raise ConfigError(f"dataset.params: {err}") from None
        for i, entry in enumerate(f.tune):
            try:
                run_cfg = OmegaConf.merge(f, _dotted(entry))
            except Exception as err:  # noqa: BLE001 - OmegaConf raises several types; report the entry
                raise ConfigError(f"algorithm.dp_fedavg.tune[{i}]={dict(entry)}: {str(err).splitlines()[0]}") from None
            if params.get("num_clients"):
                shim = OmegaConf.create({"algorithm": OmegaConf.to_container(run_cfg),
                                         "dataset": {"num_clients": int(params["num_clients"])},
                                         "privacy": OmegaConf.to_container(p)})
                shim.algorithm.max_client_updates = run_cfg.rounds * round_goal(run_cfg.concurrency,
                                                                                run_cfg.server.over_selection)
                preflight(shim, [(f"algorithm.dp_fedavg.tune[{i}]", run_cfg.server, run_cfg.concurrency)],
                          [float(x) for x in a.epsilons])


def _dotted(entry: Mapping[str, Any]) -> DictConfig:
    """``{"client.lr": 0.1, "server.lr": 1.0}`` → a nested config to merge."""
    out = OmegaConf.create({})
    for k, v in entry.items():
        OmegaConf.update(out, str(k), v, force_add=True)
    return out


def check_data_params(dataset: Any) -> dict[str, Any]:
    """The builtin world's mixtures and sizes, or the local files of a paper-scale run."""
    from runner.data.domains import check_mixture

    params = dict(dataset.params)
    if dataset.source == "builtin":
        for key in ("private_mixture", "public_mixture", "num_clients", "samples_per_client", "test_clients",
                    "public_size"):
            if key not in params:
                raise ValueError(f"missing key '{key}'")
        check_mixture(params["private_mixture"], "private_mixture")
        check_mixture(params["public_mixture"], "public_mixture")
        for key in ("num_clients", "samples_per_client", "test_clients", "public_size"):
            if int(params[key]) < 1:
                raise ValueError(f"{key}={params[key]} must be >= 1")
    elif dataset.source == "file":
        for key in ("clients_path", "test_path", "public_path"):
            if not params.get(key):
                raise ValueError(f"missing key '{key}' (a local JSONL file)")
    else:
        raise ValueError(f"dataset.source={dataset.source}: pre_text reads builtin or file data")
    return params


def release_plan(noise_multiplier: float, rounds: int) -> list[GaussianRelease]:
    """T non-subsampled Gaussian releases of the sensitivity-1 vote histogram."""
    return [GaussianRelease("votes", float(noise_multiplier), 1.0, int(rounds))]


def noise_for(a: Any, privacy: Any, epsilon: float) -> float:
    """σ of each round: the fixed ``noise_multiplier`` or the one whose T releases spend ``epsilon``."""
    if a.noise_multiplier is not None:
        return float(a.noise_multiplier)
    return calibrate_noise(epsilon, privacy.delta, steps=a.rounds, sample_rate=1.0, accountant=privacy.accountant)


# --------------------------------------------------------------------------- Private Evolution
def nearest_synthetic(private: np.ndarray, synthetic: np.ndarray) -> np.ndarray:
    """Index of the nearest synthetic embedding (L2) of each private embedding: exhaustive faiss search."""
    import faiss

    index = faiss.IndexFlatL2(synthetic.shape[1])
    index.add(np.ascontiguousarray(synthetic, dtype=np.float32))
    _, idx = index.search(np.ascontiguousarray(private, dtype=np.float32), 1)
    return idx[:, 0].astype(np.int64)


def client_vote_vectors(nearest: Sequence[np.ndarray], n_synthetic: int) -> np.ndarray:
    """One row per client: its votes (counts over the synthetic samples) scaled to unit L2 norm (sensitivity 1)."""
    votes = np.zeros((len(nearest), n_synthetic))
    for i, idx in enumerate(nearest):
        np.add.at(votes[i], np.asarray(idx, dtype=np.int64), 1.0)
    norms = np.linalg.norm(votes, axis=1, keepdims=True)
    return votes / np.maximum(norms, 1e-12)


def dp_histogram(votes: np.ndarray, sigma: float, threshold: float, rng: np.random.Generator) -> np.ndarray:
    """The released histogram: Σ_clients votes + N(0, σ²), minus H = threshold · σ, negatives clipped to 0."""
    noisy = votes.sum(0) + rng.normal(0.0, sigma, size=votes.shape[1])
    return np.maximum(noisy - threshold * sigma, 0.0)


@dataclass
class PERound:
    """One round's public outcome (everything here is a function of the DP release)."""

    histogram: np.ndarray
    survivors: list[str]
    fallback: bool  # nothing above the threshold: the next population is drawn uniformly


def resample(population: Sequence[str], histogram: np.ndarray, n: int, rng: np.random.Generator) -> list[str]:
    """N draws from the population in proportion to the released histogram (uniform when it is all zero)."""
    total = histogram.sum()
    p = histogram / total if total > 0 else np.full(len(population), 1.0 / len(population))
    return [population[i] for i in rng.choice(len(population), size=n, replace=True, p=p)]


class PrivateEvolution:
    """The PE loop over a public initial population, with the embedder, the MLM variation and the clients."""

    def __init__(self, embed: Any, vary: Any, clients: Sequence[np.ndarray], a: Any):
        self.embed, self.vary, self.clients, self.a = embed, vary, list(clients), a

    def synthetic_embeddings(self, population: Sequence[str], seed: int) -> np.ndarray:
        """Each sample's embedding, or with lookahead k the mean embedding of k of its variations."""
        if self.a.lookahead == 0:
            return self.embed(population)
        looks = [self.embed(self.vary(population, derive_seed(seed, "lookahead", j))) for j in range(self.a.lookahead)]
        return np.mean(looks, axis=0)

    def round(self, population: Sequence[str], sigma: float, seed: int) -> tuple[PERound, np.ndarray]:
        """Votes of every client for the current population, and their DP release."""
        # the clients search the embeddings as downloaded (e.g. rounded to float16)
        emb = self.synthetic_embeddings(population, seed).astype(self.a.download_dtype).astype(np.float64)
        nearest_all = nearest_synthetic(np.concatenate(self.clients), emb)
        bounds = np.cumsum([0] + [len(c) for c in self.clients])
        nearest = [nearest_all[bounds[i]:bounds[i + 1]] for i in range(len(self.clients))]
        votes = client_vote_vectors(nearest, len(population))
        hist = dp_histogram(votes, sigma, self.a.threshold, np.random.default_rng(derive_seed(seed, "noise")))
        survivors = list(dict.fromkeys(population[i] for i in np.flatnonzero(hist > 0)))
        return PERound(hist, survivors, not hist.any()), emb

    def run(self, initial: Sequence[str], sigma: float, seed: int, log: Any = None) -> tuple[list[str], list[PERound]]:
        """T rounds from ``initial``; returns the DP seed set (union of survivors) and each round's release."""
        population, rounds, seed_set = list(initial), [], {}
        for t in range(self.a.rounds):
            r, emb = self.round(population, sigma, derive_seed(seed, "round", t))
            rounds.append(r)
            seed_set.update(dict.fromkeys(r.survivors))
            if log is not None:
                log(t, r, emb)
            if t + 1 < self.a.rounds:
                chosen = resample(population, r.histogram, self.a.population_size,
                                  np.random.default_rng(derive_seed(seed, "resample", t)))
                population = self.vary(chosen, derive_seed(seed, "variation", t))
        return list(seed_set), rounds


# --------------------------------------------------------------------------- data
@dataclass
class World:
    train_clients: list[list[str]]
    test_texts: list[str]
    public_texts: list[str]


def build_world(dataset: Any, seed: int) -> World:
    """Private train/test clients and the public text: the builtin domain world or local JSONL files."""
    params = check_data_params(dataset)
    if dataset.source == "file":
        return World(_read_clients(params["clients_path"]), [t for c in _read_clients(params["test_path"]) for t in c],
                     _read_texts(params["public_path"]))
    from runner.data.domains import federated_clients, sample_texts

    n_train, n_test, m = int(params["num_clients"]), int(params["test_clients"]), int(params["samples_per_client"])
    clients = federated_clients(params["private_mixture"], n_train + n_test, m, derive_seed(seed, "private"),
                                float(params.get("client_concentration", 5.0)))
    public = sample_texts(params["public_mixture"], int(params["public_size"]), derive_seed(seed, "public"))
    return World(clients[:n_train], [t for c in clients[n_train:] for t in c], public)


def _read_clients(path: str) -> list[list[str]]:
    """JSONL rows ``{"client": id, "text": ...}`` grouped by client (first-seen order)."""
    groups: dict[str, list[str]] = {}
    for row in _jsonl(path):
        if "client" not in row or "text" not in row:
            raise ConfigError(f"{path}: every row needs 'client' and 'text'")
        groups.setdefault(str(row["client"]), []).append(str(row["text"]))
    return list(groups.values())


def _read_texts(path: str) -> list[str]:
    return [str(r["text"]) for r in _jsonl(path)]


def _jsonl(path: str) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"data file {path} does not exist (dataset.params)")
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------- the recipe
def run_pre_text(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """PrE-Text vs DP-FedAvg vs public-only at each ε; privacy from the accountant; client costs measured."""
    from runner.privacy.pre_text_run import Comparison

    return Comparison(cfg, ctx).run()


__all__ = ["PreTextConfig", "PrivateEvolution", "client_vote_vectors", "dp_histogram", "nearest_synthetic",
           "release_plan", "resample", "run_pre_text", "METHODS"]
