"""The methods the ``vllm`` engine calls on vLLM's workers by name, through ``LLM.collective_rpc``.

vLLM mixes this class into its worker class when the engine is built with
``worker_extension_cls="runner.rollout.vllm_worker.WeightSyncExtension"``, so ``collective_rpc`` sends a
method name (a string), never a pickled function (which vLLM refuses unless insecure serialisation is
enabled). This module imports nothing from vLLM: workers import it by its qualified name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class WeightSyncExtension:
    """Worker-side weight sync: ``self`` is the vLLM worker that holds ``model_runner``."""

    model_runner: Any

    def load_trained_weights(self, weights: Sequence[tuple[str, Any]]) -> int:
        """Copy a training model's ``(name, tensor)`` pairs (HF parameter names, full tensors) into this
        worker's model; each weight loader keeps this worker's tensor-parallel shard. Returns the count."""
        self.model_runner.model.load_weights(weights)
        return len(weights)
