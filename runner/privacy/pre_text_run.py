"""The ``pre_text`` recipe: one run compares PrE-Text, DP-FedAvg and the public-only LM at each ε.

Stages (each resumable): the LM pre-trained on public text (= the public-only model and everyone's start),
the tiny masked LM pre-trained on public text, a non-private central reference, then per ε: Private
Evolution (the DP release), expansion, downstream training, and DP-FedAvg (each tuning entry). The private
clients' raw text and embeddings are never written.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from runner.core.context import RunContext
from runner.core.seeding import derive_seed
from runner.federated.recipes import epsilon_key
from runner.models.finetune import LMTrainConfig, finetune, token_stream
from runner.privacy.accounting import epsilon_spent, gdp_mu
from runner.privacy.pre_text import METHODS, PERound, PrivateEvolution, _dotted, build_world, noise_for, release_plan
from runner.privacy.pre_text_fl import run_dp_fedavg
from runner.privacy.pre_text_models import build_mlm, expand, list_documents, next_token_metrics, pretrain_mlm, vary


def client_nearest(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """What a client computes: the nearest of the N synthetic embeddings ``y`` (L2) for each of its samples ``x``."""
    d = (x * x).sum(1, keepdim=True) - 2 * x @ y.T + (y * y).sum(1)[None]
    return d.argmin(1)


class Comparison:
    def __init__(self, cfg: DictConfig, ctx: RunContext):
        self.cfg, self.ctx, self.a = cfg, ctx, cfg.algorithm
        self.world = build_world(cfg.dataset, ctx.seed)
        m = self.a.samples_per_client
        self.clients = [c[:m] for c in self.world.train_clients if c]
        self._table: dict[str, np.ndarray] = {}
        self._embedder: Any = None

    # ------------------------------------------------------------------ embeddings
    def embedder(self) -> Any:
        if self._embedder is None:
            from runner.privacy.embedders import build_embedder

            self._embedder = build_embedder(self.a.embedder, self.cfg, self.a.embed_batch_size)
        return self._embedder

    def embed_synthetic(self, texts: Sequence[str]) -> np.ndarray:
        """Server-side embeddings of synthetic (public-derived) text, each distinct text embedded once."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._table]
        if missing:
            self._table.update(zip(missing, self.embedder().embed(missing)))
        return np.stack([self._table[t] for t in texts])

    def embed_private(self) -> tuple[list[np.ndarray], dict[str, float]]:
        """Every client's samples embedded (on device in a deployment); FLOPs and seconds measured."""
        texts = [t for c in self.clients for t in c]
        counter = FlopCounterMode(display=False)
        start = time.perf_counter()
        with counter:
            emb = self.embedder().embed(texts)
        seconds = time.perf_counter() - start
        bounds = np.cumsum([0] + [len(c) for c in self.clients])
        per_client = [emb[bounds[i]:bounds[i + 1]] for i in range(len(self.clients))]
        n = len(self.clients)
        return per_client, {"flops": counter.get_total_flops() / n, "seconds": seconds / n}

    # ------------------------------------------------------------------ language models
    def public_lm(self) -> tuple[Any, Any]:
        """The downstream LM pre-trained on the public text (cached stage); also the public-only baseline."""
        from runner.models.builder import build_model_and_tokenizer

        torch.manual_seed(derive_seed(self.ctx.seed, "lm-init") % 2**63)
        lm, tok = build_model_and_tokenizer(self.cfg.model, self.cfg.hardware, corpus=self.world.public_texts)
        finetune(lm, token_stream(self.world.public_texts, tok), self.a.public_pretrain, self.ctx, stage="public_lm")
        return lm.eval(), tok

    def train_on(self, start: Any, tok: Any, texts: Sequence[str], stage: str, train_cfg: Any = None) -> Any:
        model = copy.deepcopy(start)
        finetune(model, token_stream(list(texts), tok), train_cfg or self.a.downstream, self.ctx, stage=stage)
        return model.eval()

    def evaluate(self, model: Any) -> dict[str, float]:
        return next_token_metrics(model, self.test, self.a.downstream.seq_len, self.a.eval_batch_size)

    # ------------------------------------------------------------------ per ε
    def private_evolution(self, eps: float, sigma: float, private: list[np.ndarray], mlm: Any, mlm_tok: Any,
                          costs: dict[str, float]) -> dict[str, Any]:
        a, v = self.a, self.a.variation
        stage = f"pe_{epsilon_key(eps)}"
        done = self.ctx.checkpoints.done(stage)
        if done is not None:
            return done

        def vary_fn(texts: Sequence[str], seed: int) -> list[str]:
            return vary(texts, mlm, mlm_tok, v.mask_fraction, seed, v.temperature, v.mlm.max_length)

        down_bytes, search = [], {"flops": 0.0, "seconds": 0.0}
        pe = PrivateEvolution(self.embed_synthetic, vary_fn, private, a)

        def log(t: int, r: PERound, emb: np.ndarray) -> None:
            down_bytes.append(emb.astype(a.download_dtype).nbytes)
            x, y = torch.as_tensor(private[0], dtype=torch.float32), torch.as_tensor(emb, dtype=torch.float32)
            counter = FlopCounterMode(display=False)
            start = time.perf_counter()
            with counter:
                client_nearest(x, y)
            search["seconds"] += time.perf_counter() - start
            search["flops"] += counter.get_total_flops()
            self.ctx.log({"survivors": len(r.survivors), "released_mass": float(r.histogram.sum()),
                          "nonzero": int((r.histogram > 0).sum()), "fallback": float(r.fallback)}, t, stage)

        seed_set, rounds = pe.run(self.initial(),
                                  sigma, derive_seed(self.ctx.seed, "pe", epsilon_key(eps)), log)
        T = a.rounds
        upload = 4 * a.population_size  # the dense float32 vote vector (secure-aggregation ready)
        result = {
            "seed_set": seed_set,
            "histograms": [r.histogram.tolist() for r in rounds],
            "survivors_per_round": [len(r.survivors) for r in rounds],
            "fallback_rounds": int(sum(r.fallback for r in rounds)),
            "client_bytes_per_round": float(np.mean(down_bytes)) + upload,
            # a client embeds its samples once (first round) and searches the new population every round
            "client_flops_per_round": costs["flops"] / T + search["flops"] / T,
            "client_seconds_per_round": costs["seconds"] / T + search["seconds"] / T,
            "rounds": T,
        }
        self.ctx.checkpoints.mark_done(stage, result)
        return result

    def initial(self) -> list[str]:
        """S_0: N samples drawn from the public text (with replacement only if it has fewer than N)."""
        pub, n = self.world.public_texts, self.a.population_size
        rng = np.random.default_rng(derive_seed(self.ctx.seed, "initial-population"))
        return [pub[i] for i in rng.choice(len(pub), size=n, replace=len(pub) < n)]

    def expansion(self, eps: float, lm: Any, tok: Any, seed_set: list[str]) -> list[str]:
        e = self.a.expansion
        stage = f"expand_{epsilon_key(eps)}"
        done = self.ctx.checkpoints.done(stage)
        if done is not None:
            return done["texts"]
        texts: list[str] = []
        if e.enabled and len(seed_set) >= 2:
            seed = derive_seed(self.ctx.seed, "expansion", epsilon_key(eps))
            engine = self.expansion_engine(eps, lm, tok, seed_set, seed)
            texts = expand(engine, seed_set, e.num_samples, e.shots, e.max_new_tokens, e.temperature, seed, e.top_p)
        self.ctx.checkpoints.mark_done(stage, {"texts": texts})
        return texts

    def expansion_engine(self, eps: float, lm: Any, tok: Any, seed_set: list[str], seed: int) -> Any:
        from runner.core import registry
        from runner.rollout import build_engine

        e, hw = self.a.expansion, self.cfg.hardware
        name = e.engine or hw.rollout_engine
        if e.model is not None:
            if name == "vllm":
                return registry.get("rollout", "vllm").from_path(e.model.get("path") or e.model.hf_id, hw, seed=seed)
            from runner.core.config import ModelConfig
            from runner.models.builder import build_model_and_tokenizer

            model_cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), e.model)
            model, mtok = build_model_and_tokenizer(model_cfg, hw)
            return build_engine(name, model, mtok, hw, seed=seed)
        model = lm
        if e.finetune_steps:
            docs = list_documents(seed_set, e.shots, max(64, 4 * len(seed_set)), np.random.default_rng(seed))
            d = self.a.downstream
            ft = LMTrainConfig(steps=e.finetune_steps, batch_size=e.batch_size, seq_len=e.seq_len, lr=d.lr,
                               warmup_steps=min(d.warmup_steps, e.finetune_steps - 1), eval_every=e.finetune_steps,
                               checkpoint_every=e.finetune_steps)
            model = self.train_on(lm, tok, docs, f"expander_{epsilon_key(eps)}", ft)
        return build_engine(name, model, tok, hw, seed=seed)

    def dp_fedavg(self, eps: float, lm: Any, tok: Any) -> dict[str, Any]:
        f = self.a.dp_fedavg
        streams = [token_stream(c, tok) for c in self.world.train_clients]
        grid = []
        for i, entry in enumerate(f.tune):
            stage = f"dp_fedavg_{epsilon_key(eps)}_{i}"
            res = self.ctx.checkpoints.done(stage)
            if res is None:
                run_cfg = OmegaConf.merge(f, _dotted(entry))
                res, x = run_dp_fedavg(lm, streams, run_cfg, self.cfg.privacy, eps, self.evaluate, self.ctx, stage)
                model = copy.deepcopy(lm)
                torch.nn.utils.vector_to_parameters(x.clone(), model.parameters())
                res.update(self.evaluate(model), tune=dict(entry))
                self.ctx.checkpoints.mark_done(stage, res)
            grid.append(res)
        best = max(range(len(grid)), key=lambda i: grid[i]["next_token_accuracy"])
        return {**grid[best], "tuned_index": best,
                "tuning": [{"tune": g["tune"], "next_token_accuracy": g["next_token_accuracy"],
                            "perplexity": g["perplexity"]} for g in grid]}

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        a, privacy, ctx = self.a, self.cfg.privacy, self.ctx
        lm, tok = self.public_lm()
        self.test = token_stream(self.world.test_texts, tok)
        public_only = {**self.evaluate(lm), "client_bytes_per_round": 0.0, "client_flops_per_round": 0.0,
                       "client_seconds_per_round": 0.0, "rounds": 0}
        central = self.evaluate(self.train_on(lm, tok, [t for c in self.clients for t in c], "central_nonprivate"))

        mlm, mlm_tok = build_mlm(a.variation.mlm, self.world.public_texts)
        if a.variation.mlm.kind == "tiny":
            pretrain_mlm(mlm, mlm_tok, self.world.public_texts, a.variation.mlm, a.variation.mask_fraction, ctx)
        private, costs = self.embed_private()

        by_eps: dict[str, Any] = {}
        spends: dict[str, Any] = {}
        for eps in a.epsilons:
            key = epsilon_key(eps)
            sigma = noise_for(a, privacy, eps)
            plan = release_plan(sigma, a.rounds)
            spends[key] = {"epsilon": epsilon_spent(plan, privacy.delta, privacy.accountant), "budget_epsilon": eps,
                           "delta": privacy.delta, "accountant": privacy.accountant, "noise_multiplier": sigma,
                           "threshold": a.threshold * sigma, "rounds": a.rounds, "gdp_mu": gdp_mu(plan)}
            pe = self.private_evolution(eps, sigma, private, mlm, mlm_tok, costs)
            expanded = self.expansion(eps, lm, tok, pe["seed_set"])
            train_texts = pe["seed_set"] + expanded
            stage = f"downstream_{key}"
            metrics = ctx.checkpoints.done(stage)
            if metrics is None:
                metrics = self.evaluate(self.train_on(lm, tok, train_texts, stage))
                ctx.checkpoints.mark_done(stage, metrics)
            stage = f"downstream_seed_only_{key}"  # ablation: the DP seed set without the LLM expansion
            seed_only = ctx.checkpoints.done(stage)
            if seed_only is None:
                seed_only = self.evaluate(self.train_on(lm, tok, pe["seed_set"], stage))
                ctx.checkpoints.mark_done(stage, seed_only)
            costs_keys = ("client_bytes_per_round", "client_flops_per_round", "client_seconds_per_round", "rounds")
            pre_text = {**metrics, "seed_only": seed_only, **{k: pe[k] for k in costs_keys},
                        "seed_set_size": len(pe["seed_set"]), "expanded": len(expanded),
                        "survivors_per_round": pe["survivors_per_round"], "fallback_rounds": pe["fallback_rounds"],
                        "seed_samples": pe["seed_set"][:5], "expanded_samples": expanded[:5]}
            fed = self.dp_fedavg(eps, lm, tok)
            by_eps[key] = {"pre_text": pre_text, "dp_fedavg": fed, "public_only": public_only,
                           "privacy": spends[key],
                           "communication_ratio": fed["client_bytes_per_round"] / pre_text["client_bytes_per_round"]}
            ctx.plot(f"vote_histogram_eps{key}",
                     {f"round {t + 1}": (list(range(1, len(h) + 1)), sorted(h, reverse=True))
                      for t, h in enumerate(pe["histograms"])},
                     "synthetic sample (sorted by released count)", "released vote count (after threshold)",
                     title=f"PrE-Text released histograms, ε={key}")

        xs = [float(e) for e in a.epsilons]
        ctx.plot("accuracy_vs_epsilon",
                 {m: (xs, [by_eps[epsilon_key(e)][m]["next_token_accuracy"] for e in a.epsilons]) for m in METHODS}
                 | {"central (non-private)": (xs, [central["next_token_accuracy"]] * len(xs))},
                 "ε", "next-token accuracy (private test)", title="PrE-Text vs DP-FedAvg vs public-only")
        head = epsilon_key(privacy.epsilon) if privacy.epsilon is not None and epsilon_key(privacy.epsilon) in spends \
            else epsilon_key(a.epsilons[0])
        return {
            "by_epsilon": by_eps,
            "privacy": {**spends[head], "by_epsilon": spends,
                        "max_epsilon_over_budget": max(s["epsilon"] - s["budget_epsilon"] for s in spends.values()),
                        "not_private": ["reference.central_nonprivate (trained on private text without DP)",
                                        "every next_token_accuracy / perplexity (scored on private test clients)",
                                        "dp_fedavg.tuning (the grid is chosen on the private test set: favours "
                                        "DP-FedAvg)"]},
            "reference": {"central_nonprivate": central,
                          "public_only_gap": central["next_token_accuracy"] - public_only["next_token_accuracy"]},
            "data": {"clients": len(self.clients), "private_samples": int(sum(len(c) for c in self.clients)),
                     "test_samples": len(self.world.test_texts), "public_samples": len(self.world.public_texts),
                     "population_size": a.population_size},
        }
