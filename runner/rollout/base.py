"""The rollout-engine interface shared by RL methods and evaluators.

An engine turns a batch of prompts (plain strings, or chat message lists rendered with the tokenizer's
chat template) into completions with their token ids and per-token log-probabilities under the
sampling distribution (temperature and top-k/top-p applied, as vLLM's ``processed_logprobs``), and
takes new weights from a training model after each update.

Every request (prompt ``i``, copy ``j`` of a call) samples with its own seed, :func:`request_seed` of the
call's seed and ``(i, j)``: the copies of one prompt (a GRPO group, repeated evaluation samples) differ, and
a rerun with the same seed gives the same samples whatever the batching. Callers fold the training step into
``SamplingParams.seed`` (e.g. ``derive_seed(run_seed, stage, step)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Prompt = str | list[dict[str, str]]


@dataclass
class SamplingParams:
    """Sampling settings; ``temperature=0`` is greedy, ``top_k=0`` and ``top_p=1`` disable those filters."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    seed: int | None = None  # the call's seed; each request samples with request_seed(seed, i, j)
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)  # besides EOS, e.g. a chat template's end-of-turn

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.n < 1:
            raise ValueError("top_k must be >= 0 and n >= 1")


@dataclass
class Rollout:
    """One completion: ``prompt_index`` into the batch, ``sample_index`` among its ``n`` samples."""

    prompt_index: int
    sample_index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_token_ids: list[int] = field(default_factory=list)


class RolloutEngine(Protocol):
    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Rollout]:
        """Completions for every prompt, prompt-major: ``n`` consecutive rollouts per prompt."""
        ...

    def update_weights(self, model: Any) -> None:
        """Load the current weights of a training model into the engine."""
        ...


def call_seed(params: SamplingParams) -> int:
    """The call's seed: ``params.seed``, or one drawn from the global torch RNG (seeded by the run) if unset."""
    if params.seed is not None:
        return int(params.seed)
    import torch

    return int(torch.randint(0, 2**62, ()).item())


def request_seed(seed: int, prompt_index: int, copy_index: int) -> int:
    """The sampling seed of copy ``copy_index`` of prompt ``prompt_index`` in a call seeded with ``seed``."""
    from runner.core.seeding import derive_seed

    return derive_seed(seed, "request", prompt_index, copy_index)


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; say whether one was found."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def special_tokens_needed(tokenizer: Any, texts: Sequence[str]) -> bool:
    """Whether tokenizing ``texts`` should add the tokenizer's special tokens: not when every text already
    begins with its BOS (a rendered chat template such as Llama 3's), which would otherwise be doubled."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and texts and all(t.startswith(bos) for t in texts))


def build_engine(name: str, model: Any, tokenizer: Any, hardware_cfg: Any = None, **kwargs: Any) -> RolloutEngine:
    """The engine registered as ``name`` (``hf`` or ``vllm``), built for ``model``."""
    from runner.core import registry

    cls = registry.get("rollout", name)
    return cls.from_model(model, tokenizer, hardware_cfg, **kwargs)
