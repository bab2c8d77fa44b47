"""WaltzRL step 3, training (arXiv 2510.08240): stage 1 trains π_f alone, stage 2 trains both agents.

Each step samples prompts (``group_size`` episodes each; harmful and benign in a fixed proportion,
:func:`_batch_records`), runs the protocol with both agents sampling, scores
the trajectories, splits them into single-agent samples and applies one REINFORCE++ update per trained agent
(:mod:`runner.safety.waltzrl_rl`). Stage 1 uses all three reward terms; stage 2 drops the label term
(λ → ``reward.stage2_label_weight``, 0 in the paper) while DIR stays gated by label correctness. The
single-model RL baseline trains π_c alone with the same trainer, prompts and budget on R_c.

Stages are resumable and exact: a checkpoint holds both trainers (weights, AdamW, shuffling RNG) and the
global RNGs; batches and rollouts are seeded by (stage, step), so a killed run resumed in its run directory
replays the same steps and ends with the same numbers.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig

from runner.core import distributed
from runner.core.context import RunContext
from runner.core.seeding import derive_seed
from runner.data.safety import SafetyRecord
from runner.rollout.base import SamplingParams
from runner.safety.judges import Judge
from runner.safety.waltzrl_protocol import Agent, conversation_messages, engine_agent, run_protocol
from runner.safety.waltzrl_rewards import batch_stats, conversation_reward, score_trajectories, split_samples
from runner.safety.waltzrl_rl import PolicyTrainer, Sample


@dataclass
class Agents:
    """Both agents' models and engines, and how they sample during training and evaluation."""

    conv_model: Any
    fb_model: Any
    conv_engine: Any
    fb_engine: Any
    protocol: Any
    tokenizer: Any

    def agents(self, temperature: float, top_p: float, seed: int) -> tuple[Agent, Agent]:
        """(π_c, π_f) sampling at ``temperature``/``top_p`` with seeds derived from ``seed``."""
        f = SamplingParams(max_new_tokens=self.protocol.feedback_max_new_tokens, temperature=temperature,
                           top_p=top_p, seed=(seed + 7919) % 2**31)
        return self.conversation(temperature, top_p, seed), engine_agent(self.fb_engine, f, self.tokenizer)

    def conversation(self, temperature: float, top_p: float, seed: int, engine: Any = None) -> Agent:
        """π_c (or another conversation policy behind ``engine``) as an agent."""
        c = SamplingParams(max_new_tokens=self.protocol.response_max_new_tokens, temperature=temperature,
                           top_p=top_p, seed=seed % 2**31)
        return engine_agent(engine or self.conv_engine, c, self.tokenizer)


def _batch_records(train: Sequence[SafetyRecord], n: int, seed: int, group_size: int = 1) -> list[SafetyRecord]:
    """``n`` episodes: ``n / group_size`` random prompts, each repeated ``group_size`` times (consecutively).

    Stratified: harmful and benign prompts come in ``train``'s proportion (rounded) in every batch, so the
    step-to-step swing in the mix does not push a policy that cannot yet tell them apart towards always
    complying or always refusing."""
    rng = random.Random(seed)
    k = max(1, n // group_size)
    harmful = [r for r in train if r.harmful]
    benign = [r for r in train if not r.harmful]
    k_h = round(k * len(harmful) / len(train)) if harmful and benign else None
    if k_h is None:
        picks = [rng.choice(train) for _ in range(k)]
    else:
        picks = [rng.choice(harmful) for _ in range(k_h)] + [rng.choice(benign) for _ in range(k - k_h)]
    return [rec for rec in picks for _ in range(group_size)]


def _run_stage(ctx: RunContext, stage: str, steps: int, checkpoint_every: int,
               trainers: dict[str, PolicyTrainer], step_fn: Callable[[int], None],
               on_start: Callable[[int], None] | None = None) -> None:
    """Resumable loop: skip a finished stage (loading its final state), resume a partial one, checkpoint.
    ``on_start(step)`` runs before the first step this call takes (e.g. to rewind logs kept outside the stage)."""
    if steps <= 0:
        return
    if ctx.checkpoints.done(stage):
        state = ctx.checkpoints.load(stage)["state"]
        for k, tr in trainers.items():
            tr.load_state_dict(state[k])
        return
    from runner.core.checkpoint import rng_state, set_rng_state

    state = ctx.restore(stage)
    start = 0
    if state is None:  # killed before the stage's first checkpoint: drop what it had logged
        _drop_records(ctx, stage)
    else:
        for k, tr in trainers.items():
            tr.load_state_dict(state[k])
        set_rng_state(state["rng"])
        start = state["step"]
    if on_start is not None:
        on_start(start)
    bar = ctx.progress(total=steps, initial=start, desc=stage)
    for step in range(start + 1, steps + 1):
        step_fn(step)
        bar.update(1)
        if step % checkpoint_every == 0 or step == steps:
            ctx.save(stage, step, {**{k: tr.state_dict() for k, tr in trainers.items()}, "rng": rng_state(),
                                   "step": step})
    bar.close()
    ctx.checkpoints.mark_done(stage)


def _drop_records(ctx: RunContext, stage: str, after_step: int = 0) -> None:
    """Remove ``stage``'s logged records with a step above ``after_step`` (they are logged again on replay)."""
    from runner.core.logging import JsonlLogger

    records = ctx.metrics()
    first = next((i for i, r in enumerate(records) if r.get("stage") == stage and r["step"] > after_step), None)
    if first is not None:
        JsonlLogger.truncate(ctx.metrics_path, first, stage)


def train_waltzrl(cfg: DictConfig, ctx: RunContext, ag: Agents, train: Sequence[SafetyRecord], judge: Judge,
                  curve: Callable[[int], None], pad_id: int) -> None:
    """Stage 1 (π_f only, α/λ/γ) then stage 2 (both agents, λ = ``stage2_label_weight``), with held-out
    curve points."""
    a = cfg.algorithm
    t, r, rl = a.train, a.reward, a.rl
    fb_trainer = PolicyTrainer(ag.fb_model, pad_id, rl, seed=derive_seed(ctx.seed, "fb_trainer"))
    conv_trainer = PolicyTrainer(ag.conv_model, pad_id, rl, seed=derive_seed(ctx.seed, "conv_trainer"))

    def make_step(stage: str, offset: int, lam: float, train_conv: bool) -> Callable[[int], None]:
        def step_fn(step: int) -> None:
            recs = distributed.shard(_batch_records(train, t.prompts_per_step,
                                                    derive_seed(ctx.seed, stage, "batch", step), rl.group_size),
                                     rl.group_size)  # data-parallel: this rank's prompt groups
            conv, fb = ag.agents(rl.temperature, 1.0,
                                 distributed.rank_seed(derive_seed(ctx.seed, stage, "rollout", step)))
            trajs = run_protocol([x.prompt for x in recs], conv, fb, ag.protocol)
            scores = score_trajectories(trajs, [x.harmful for x in recs], judge, r.alpha, lam, r.gamma)
            fb_samples, conv_samples = split_samples(trajs, scores, [k // rl.group_size for k in range(len(recs))])
            metrics = batch_stats(trajs, scores, [x.harmful for x in recs])
            metrics.update({f"fb_{k}": v for k, v in fb_trainer.step(fb_samples).items()})
            ag.fb_engine.update_weights(ag.fb_model)
            if train_conv:
                metrics.update({f"conv_{k}": v for k, v in conv_trainer.step(conv_samples).items()})
                ag.conv_engine.update_weights(ag.conv_model)
            ctx.log(metrics, offset + step, stage)
            if t.eval_every and (step % t.eval_every == 0 or step == (t.stage1_steps if stage == "stage1"
                                                                       else t.stage2_steps)):
                curve(offset + step)

        return step_fn

    def rewind_curve(offset: int) -> Callable[[int], None]:
        """On (re)start at ``start``: drop curve points logged after the checkpoint, and make sure the point
        due at the checkpoint's step is there (it is deterministic, so recomputing it gives the same values)."""
        def on_start(start: int) -> None:
            _drop_records(ctx, "curve", offset + start)
            last = t.stage1_steps if offset == 0 else t.stage2_steps
            due = t.eval_every and start > 0 and (start % t.eval_every == 0 or start == last)
            if due and all(p["step"] != offset + start for p in ctx.metrics("curve")):
                curve(offset + start)

        return on_start

    _run_stage(ctx, "stage1", t.stage1_steps, t.checkpoint_every, {"feedback": fb_trainer},
               make_step("stage1", 0, r.lam, train_conv=False), rewind_curve(0))
    ag.fb_engine.update_weights(ag.fb_model)
    _run_stage(ctx, "stage2", t.stage2_steps, t.checkpoint_every,
               {"feedback": fb_trainer, "conversation": conv_trainer},
               make_step("stage2", t.stage1_steps, r.stage2_label_weight, train_conv=True),
               rewind_curve(t.stage1_steps))
    ag.fb_engine.update_weights(ag.fb_model)
    ag.conv_engine.update_weights(ag.conv_model)


def train_single_model_rl(cfg: DictConfig, ctx: RunContext, ag: Agents, model: Any, engine: Any,
                          train: Sequence[SafetyRecord], judge: Judge, steps: int, pad_id: int) -> None:
    """The single-model RL baseline: π_c alone, same REINFORCE++ trainer and prompts, reward R_c."""
    a = cfg.algorithm
    trainer = PolicyTrainer(model, pad_id, a.rl, seed=derive_seed(ctx.seed, "single_trainer"))

    def step_fn(step: int) -> None:
        recs = distributed.shard(_batch_records(train, a.train.prompts_per_step,
                                                derive_seed(ctx.seed, "single", "batch", step), a.rl.group_size),
                                 a.rl.group_size)
        agent = ag.conversation(a.rl.temperature, 1.0,
                                distributed.rank_seed(derive_seed(ctx.seed, "single", "rollout", step)), engine)
        turns = agent([conversation_messages(x.prompt, [], [], a.protocol) for x in recs])
        verdicts = judge.judge([x.prompt for x in recs], [c.text for c in turns])
        samples = [Sample(c.prompt_ids, c.token_ids, conversation_reward(v, x.harmful), "conversation_first",
                          k // a.rl.group_size) for k, (c, v, x) in enumerate(zip(turns, verdicts, recs))]
        metrics = trainer.step(samples)
        for name, want in (("harmful", True), ("benign", False)):
            rs = [s.reward for s, x in zip(samples, recs) if x.harmful == want]
            if rs:
                metrics[f"r_c_{name}"] = sum(rs) / len(rs)
        ctx.log(metrics, step, "single_model_rl")
        engine.update_weights(model)

    _run_stage(ctx, "single_model_rl", steps, a.train.checkpoint_every, {"conversation": trainer}, step_fn)
    engine.update_weights(model)
