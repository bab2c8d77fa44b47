"""REINFORCE++ with PPO clipping for one agent: the policy-gradient update WaltzRL applies to each agent.

A batch is a list of single-agent samples (prompt tokens, completion tokens, scalar reward), the unit the
WaltzRL trajectories are split into. One :meth:`PolicyTrainer.step`:

1. scores the completions under the current policy (``old`` log-probs, the behaviour policy of the
   rollout, since weights only change inside this step) and under the frozen reference policy;
2. builds token-level rewards the REINFORCE++ way: ``-β·(log π_old − log π_ref)`` at every completion
   token plus the sample's reward at its last token, and returns-to-go (γ = 1) as the per-token return;
3. normalises the returns over every completion token of the batch (no critic: the "global batch
   normalisation" of REINFORCE++) to get advantages. With ``group_size > 1`` (several episodes per prompt),
   each sample's reward first has its group's mean subtracted (OpenRLHF's ``reinforce_baseline``,
   "REINFORCE++-baseline"), which removes per-prompt reward offsets that otherwise dominate small batches;
4. runs ``ppo_epochs`` passes of minibatch updates of the clipped surrogate
   ``-min(ρ·A, clip(ρ, 1−ε, 1+ε)·A)``, averaged over completion tokens, with gradient clipping.

Log-probs are computed at the sampling temperature, so the ratio compares the distributions actually
sampled from. The trainer owns its AdamW optimiser and reference model, and round-trips through
``state_dict`` for resumable stages.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from runner.core import distributed
from runner.models.lora import frozen_reference, reference_policy


@dataclass
class RLConfig:
    """``algorithm.rl``: optimisation settings shared by both agents (and the single-model RL baseline)."""

    learning_rate: float = 5.0e-4
    beta: float = 0.01  # KL coefficient to the reference policy (token-level, in the reward)
    clip_eps: float = 0.2  # PPO clip range ε
    ppo_epochs: int = 2
    minibatch_size: int = 32
    max_grad_norm: float = 1.0
    temperature: float = 1.0  # rollout temperature; log-probs are taken at the same temperature
    weight_decay: float = 0.0
    group_size: int = 1  # episodes per prompt; > 1 subtracts each prompt's mean reward (REINFORCE++-baseline)


@dataclass
class Sample:
    """One single-agent training sample: the agent saw ``prompt_ids`` and produced ``completion_ids``."""

    prompt_ids: list[int]
    completion_ids: list[int]
    reward: float
    kind: str = ""  # feedback | conversation_first | conversation_revision (for logging)
    group: Any = None  # samples sharing a group (same prompt and kind) get a shared mean-reward baseline


def _batch(samples: Sequence[Sample], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and a mask over the *targets* that are completion tokens."""
    seqs = [s.prompt_ids + s.completion_ids for s in samples]
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    target_mask = torch.zeros((len(seqs), width - 1), dtype=torch.float32)
    for i, (s, seq) in enumerate(zip(samples, seqs)):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attn[i, : len(seq)] = 1
        # target position j predicts token j+1; completion tokens sit at len(prompt) .. len(seq)-1
        target_mask[i, len(s.prompt_ids) - 1: len(seq) - 1] = 1.0
    return ids.to(device), attn.to(device), target_mask.to(device)


def token_logprobs(model: Any, ids: torch.Tensor, attn: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log π(x_{j+1} | x_{≤j})`` for every position (shape ``[B, L-1]``), at ``temperature``."""
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    if temperature != 1.0:
        logits = logits / temperature
    return logits.log_softmax(-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def group_baseline(rewards: Sequence[float], groups: Sequence[Any]) -> list[float]:
    """Each reward minus the mean reward of its group (a sample with group None keeps its reward)."""
    sums: dict[Any, list[float]] = {}
    for r, g in zip(rewards, groups):
        if g is not None:
            sums.setdefault(g, []).append(r)
    return [r if g is None else r - sum(sums[g]) / len(sums[g]) for r, g in zip(rewards, groups)]


def reinforce_pp_advantages(rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float,
                            eps: float = 1e-8) -> torch.Tensor:
    """REINFORCE++ advantages: returns-to-go of ``-β·kl`` per token plus the reward at the last token,
    normalised over all completion tokens of the batch.

    ``rewards``: ``[B]``; ``kl``, ``mask``: ``[B, T]`` (mask marks completion tokens).
    """
    token_r = -beta * kl * mask
    last = (mask.cumsum(-1) == mask.sum(-1, keepdim=True)) & (mask > 0)  # the last completion token
    token_r = token_r + last.float() * rewards.unsqueeze(-1)
    returns = token_r.flip(-1).cumsum(-1).flip(-1) * mask
    # the batch is global: in a data-parallel run the sums run over every rank's completion tokens
    n = distributed.all_reduce_sum(mask.sum()).clamp_min(1.0)
    mean = distributed.all_reduce_sum(returns.sum()) / n
    var = distributed.all_reduce_sum((((returns - mean) * mask) ** 2).sum()) / n
    return (returns - mean) / (var.sqrt() + eps) * mask


def clipped_surrogate(new_logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
                      clip_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective as a loss (token mean over ``mask``), and the fraction of clipped tokens."""
    ratio = (new_logp - old_logp).exp()
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    n = mask.sum().clamp_min(1.0)
    loss = -(torch.minimum(unclipped, clipped) * mask).sum() / n
    frac = ((clipped < unclipped).float() * mask).sum() / n
    return loss, frac


class PolicyTrainer:
    """One agent's learner: current policy, frozen reference, AdamW, REINFORCE++/PPO step.

    With a LoRA adapter view (:class:`runner.models.lora.AdapterModel`) only the adapter is trained and the
    reference is the shared base with the adapter off (no copy); a full model keeps a frozen deep copy. In a
    data-parallel run each rank steps on its share of the batch and gradients are summed over ranks.
    """

    def __init__(self, model: Any, pad_id: int, cfg: RLConfig, seed: int = 0):
        self.model = model
        self.ref = frozen_reference(model)
        self.pad_id = pad_id
        self.cfg = cfg
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.rng = random.Random(seed)

    def step(self, samples: Sequence[Sample]) -> dict[str, float]:
        """One REINFORCE++ update on ``samples``; returns loss, KL, clip fraction and reward statistics."""
        samples = [s for s in samples if s.completion_ids]
        if not distributed.active():
            if not samples:
                return {}
        elif not distributed.all_reduce_max(len(samples)):
            return {}
        elif not samples:
            return self._idle_step()
        c = self.cfg
        device = next(self.model.parameters()).device
        ids, attn, mask = _batch(samples, self.pad_id, device)
        raw = [s.reward for s in samples]
        shaped = group_baseline(raw, [s.group for s in samples]) if c.group_size > 1 else raw
        rewards = torch.tensor(shaped, dtype=torch.float32, device=device)
        self.model.eval()  # no dropout in scoring; tiny Llama has none, HF models may
        with torch.no_grad():
            old = token_logprobs(self.model, ids, attn, c.temperature)
            with reference_policy(self.model, self.ref) as ref_model:
                ref = token_logprobs(ref_model, ids, attn, c.temperature)
        kl = (old - ref) * mask
        adv = reinforce_pp_advantages(rewards, kl, mask, c.beta)
        self.model.train()
        losses, fracs = [], []
        order = list(range(len(samples)))
        n_minibatches = distributed.all_reduce_max(-(-len(order) // c.minibatch_size))  # equal on every rank
        for _ in range(c.ppo_epochs):
            self.rng.shuffle(order)
            for k in range(n_minibatches):
                idx = torch.tensor(order[k * c.minibatch_size:(k + 1) * c.minibatch_size], device=device,
                                   dtype=torch.long)
                self.opt.zero_grad(set_to_none=True)
                if len(idx):
                    new = token_logprobs(self.model, ids[idx], attn[idx], c.temperature)
                    loss, frac = clipped_surrogate(new, old[idx], adv[idx], mask[idx], c.clip_eps)
                    losses.append(loss.item())
                    fracs.append(frac.item())
                    if distributed.active():  # token mean over the global minibatch, summed over ranks below
                        n_local = mask[idx].sum()
                        loss = loss * n_local.clamp_min(1.0) / distributed.all_reduce_sum(n_local).clamp_min(1.0)
                    loss.backward()
                elif distributed.active():
                    distributed.all_reduce_sum(torch.zeros(()))  # this rank has no tokens in the minibatch
                self._apply_gradients()
        self.model.eval()
        n_tok = mask.sum().clamp_min(1.0)
        out = {"loss": sum(losses) / max(1, len(losses)), "clip_frac": sum(fracs) / max(1, len(fracs)),
               "kl": (kl.sum() / n_tok).item(), "reward": sum(raw) / len(raw), "samples": float(len(samples))}
        if distributed.active():
            out["param_digest"] = distributed.parameter_digest(self.model.parameters())
        return out

    def _apply_gradients(self) -> None:
        """Sum gradients over ranks (a no-op in one process), clip, and step the optimiser."""
        distributed.all_reduce_grads(self.model.parameters())
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.max_grad_norm)
        self.opt.step()

    def _idle_step(self) -> dict[str, float]:
        """A rank without samples in a data-parallel step: join every collective of :meth:`step` with zeros."""
        c = self.cfg
        for _ in range(3):  # the advantage normaliser's three sums
            distributed.all_reduce_sum(torch.zeros(()))
        n_minibatches = distributed.all_reduce_max(0)
        self.model.train()
        for _ in range(c.ppo_epochs * n_minibatches):
            self.opt.zero_grad(set_to_none=True)
            distributed.all_reduce_sum(torch.zeros(()))
            self._apply_gradients()
        self.model.eval()
        return {"samples": 0.0, "param_digest": distributed.parameter_digest(self.model.parameters())}

    def state_dict(self) -> dict[str, Any]:
        """Weights (the adapter alone for a LoRA view), AdamW state and the shuffling RNG."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.rng.setstate(state["rng"])
