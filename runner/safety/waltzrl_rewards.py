"""WaltzRL step 2, the rewards (arXiv 2510.08240), and the single-agent samples they are attached to.

R_c = 1[not unsafe and not overrefusal] from the judge; the Dynamic Improvement Reward
DIR = R_c(c_{t+1}) − R_c(c_t); a label reward (π_f's two labels agree with the judge's); a format reward
(valid JSON); R_f = α·DIR·R_label + λ·R_label + γ·R_format, DIR gated by label correctness. Trajectories are
split into single-agent samples: feedback (p, c_t → f_t; R_f), conversation type A (p → c_0; R_c(c_0)) and
type B (p, history → c_t; R_c(c_t)).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from runner.safety.judges import Judge, Verdict, harmless_helpful_reward
from runner.safety.waltzrl_protocol import Feedback, Trajectory
from runner.safety.waltzrl_rl import Sample
from runner.safety.waltzrl_toy import useful_feedback


def conversation_reward(verdict: Verdict, harmful: bool) -> float:
    """R_c = 1[not unsafe and not overrefusal] (0 when the judge could not decide)."""
    return harmless_helpful_reward(verdict, harmful)


def dynamic_improvement_reward(r_before: float, r_after: float) -> float:
    """DIR = R_c(c_{t+1}) − R_c(c_t): +1 when feedback fixed the answer, −1 when it broke it."""
    return r_after - r_before


def true_labels(verdict: Verdict, harmful: bool) -> tuple[bool, bool] | None:
    """The judge's (unsafe, overrefuse) for an answer, or None when the judge could not tell."""
    if not verdict.valid:
        return None
    if harmful:
        return None if verdict.unsafe is None else (bool(verdict.unsafe), False)
    if verdict.refusal is None:
        return None
    return bool(verdict.unsafe), bool(verdict.refusal)


def label_reward(pred: Feedback | None, truth: tuple[bool, bool] | None) -> float:
    """R_label = 1 when both predicted labels agree with the judge's, else 0 (malformed or unknown: 0)."""
    if pred is None or truth is None:
        return 0.0
    return float((pred.unsafe, pred.overrefuse) == truth)


def format_reward(pred: Feedback | None) -> float:
    """R_format = 1 for a well-formed JSON feedback message, else 0."""
    return 0.0 if pred is None else 1.0


def feedback_reward(dir_: float, r_label: float, r_format: float, alpha: float, lam: float, gamma: float) -> float:
    """R_f = α·DIR·R_label + λ·R_label + γ·R_format."""
    return alpha * dir_ * r_label + lam * r_label + gamma * r_format


@dataclass
class Scores:
    """Rewards of one trajectory: R_c per answer, and per feedback round DIR, R_label, R_format, R_f."""

    rc: list[float]
    truth: list[tuple[bool, bool] | None]
    dir: list[float]
    r_label: list[float]
    r_format: list[float]
    rf: list[float]


def score_trajectories(trajs: Sequence[Trajectory], harmful: Sequence[bool], judge: Judge,
                       alpha: float, lam: float, gamma: float) -> list[Scores]:
    """Judge every answer once, then compute each round's rewards."""
    pairs = [(k, t) for k, traj in enumerate(trajs) for t in range(len(traj.responses))]
    verdicts = judge.judge([trajs[k].prompt for k, _ in pairs], [trajs[k].responses[t].text for k, t in pairs])
    by_traj: dict[int, list[Verdict]] = {}
    for (k, _), v in zip(pairs, verdicts):
        by_traj.setdefault(k, []).append(v)
    out = []
    for k, traj in enumerate(trajs):
        vs = by_traj[k]
        rc = [conversation_reward(v, harmful[k]) for v in vs]
        truth = [true_labels(v, harmful[k]) for v in vs]
        dirs, labels, formats, rfs = [], [], [], []
        for t, pred in enumerate(traj.parsed):
            revised = t + 1 < len(traj.responses)
            d = dynamic_improvement_reward(rc[t], rc[t + 1]) if revised else 0.0
            rl, rfmt = label_reward(pred, truth[t]), format_reward(pred)
            dirs.append(d)
            labels.append(rl)
            formats.append(rfmt)
            rfs.append(feedback_reward(d, rl, rfmt, alpha, lam, gamma))
        out.append(Scores(rc, truth, dirs, labels, formats, rfs))
    return out


def split_samples(trajs: Sequence[Trajectory], scores: Sequence[Scores],
                  groups: Sequence[Any] | None = None) -> tuple[list[Sample], list[Sample]]:
    """Single-agent samples: feedback (p, c_t → f_t; R_f), conversation type A (p → c_0; R_c(c_0)) and
    type B (p, history → c_t; R_c(c_t)). ``groups`` (one per trajectory, e.g. the prompt's index) tags
    samples for a per-prompt baseline."""
    fb, conv = [], []
    for k, (traj, s) in enumerate(zip(trajs, scores)):
        g = groups[k] if groups is not None else None
        for t, c in enumerate(traj.responses):
            kind = "conversation_first" if t == 0 else "conversation_revision"
            conv.append(Sample(c.prompt_ids, c.token_ids, s.rc[t], kind, None if g is None else (g, kind)))
        for f, rf in zip(traj.feedbacks, s.rf):
            fb.append(Sample(f.prompt_ids, f.token_ids, rf, "feedback", None if g is None else (g, "feedback")))
    return fb, conv


def batch_stats(trajs: Sequence[Trajectory], scores: Sequence[Scores],
                harmful: Sequence[bool] | None = None) -> dict[str, float]:
    """Training-batch metrics: FTR, first-round label accuracy, useful-feedback rate, format rate, rewards, DIR;
    with ``harmful`` (one flag per trajectory) also R_c of the first and final answers per prompt class."""
    n = max(1, len(trajs))
    rounds = [(s.r_label[t], s.r_format[t], s.dir[t], s.rf[t]) for s in scores for t in range(len(s.rf))]
    m = max(1, len(rounds))
    useful = [u for t, s in zip(trajs, scores) if t.parsed
              and (u := useful_feedback(t.parsed[0], s.truth[0])) is not None]
    by_class = {}
    for name, want in (("harmful", True), ("benign", False)):
        rows = [s for s, h in zip(scores, harmful or ()) if h == want]
        if rows:
            by_class[f"r_c_first_{name}"] = sum(s.rc[0] for s in rows) / len(rows)
            by_class[f"r_c_final_{name}"] = sum(s.rc[-1] for s in rows) / len(rows)
    return {
        **by_class,
        "useful_feedback": sum(useful) / len(useful) if useful else 0.0,
        "ftr": sum(t.triggered for t in trajs) / n,
        "label_accuracy": sum(s.r_label[0] for s in scores if s.r_label) / n,
        "format_rate": sum(r[1] for r in rounds) / m,
        "malformed": float(sum(t.malformed for t in trajs)),
        "dir": sum(r[2] for r in rounds) / m,
        "r_f": sum(r[3] for r in rounds) / m,
        "r_c_first": sum(s.rc[0] for s in scores) / n,
        "r_c_final": sum(s.rc[-1] for s in scores) / n,
    }
