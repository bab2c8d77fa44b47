"""Generation engines behind one interface: ``hf`` (transformers.generate) and ``vllm``."""

from runner.rollout.base import Rollout, RolloutEngine, SamplingParams, build_engine

__all__ = ["Rollout", "RolloutEngine", "SamplingParams", "build_engine"]
