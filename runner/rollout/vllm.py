"""``vllm`` engine: vLLM's offline ``LLM`` for GPU rollouts (the ``gpu`` extra).

Tensor parallelism and memory come from the ``hardware`` group. With one GPU the engine runs in this
process (``distributed_executor_backend="external_launcher"``, as TRL's colocate mode does), so
``update_weights`` streams the training model's parameters straight into vLLM's model; otherwise it
ships them to every worker with ``LLM.collective_rpc``. Log-probabilities are the processed ones
(temperature and filters applied), matching the ``hf`` engine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from runner.core.errors import require
from runner.rollout.base import Prompt, Rollout, SamplingParams, special_tokens_needed


def _load_weights_on_worker(worker: Any, weights: list[tuple[str, Any]]) -> None:
    worker.model_runner.model.load_weights(weights)


class VLLMEngine:
    def __init__(self, model_path: str, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85,
                 dtype: str = "bfloat16", max_model_len: int | None = None, seed: int = 0,
                 enforce_eager: bool = False, trust_remote_code: bool = False):
        self.vllm = require("vllm", "gpu", "rollout engine 'vllm'")
        self.in_process = tensor_parallel_size == 1
        kwargs: dict[str, Any] = {}
        if self.in_process:
            for var, default in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                                 ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29533")):
                os.environ.setdefault(var, default)
            kwargs["distributed_executor_backend"] = "external_launcher"
        self.llm = self.vllm.LLM(
            model=model_path, tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, max_model_len=max_model_len,
            seed=seed, enforce_eager=enforce_eager, trust_remote_code=trust_remote_code,
            logprobs_mode="processed_logprobs", **kwargs,
        )

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, hardware_cfg: Any = None, seed: int = 0, **_: Any):
        """An engine serving ``model``'s checkpoint (its ``name_or_path``: an HF id or a saved directory)."""
        path = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
        if not path or not os.path.exists(path) and "/" not in path:
            raise ValueError("the vllm engine needs a model saved to disk or an HF id (model.name_or_path)")
        hw = hardware_cfg
        return cls(path, tensor_parallel_size=hw.tensor_parallel_size if hw else 1,
                   gpu_memory_utilization=hw.gpu_memory_utilization if hw else 0.85,
                   dtype=hw.dtype if hw else "bfloat16", max_model_len=hw.max_model_len if hw else None,
                   seed=seed, enforce_eager=hw.enforce_eager if hw else False)

    def sampling_params(self, params: SamplingParams) -> Any:
        return self.vllm.SamplingParams(
            n=params.n, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_new_tokens,
            seed=params.seed, stop=list(params.stop) or None, stop_token_ids=list(params.stop_token_ids) or None,
            logprobs=0,
        )

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams) -> list[Rollout]:
        sp = self.sampling_params(params)
        if prompts and not isinstance(prompts[0], str):
            outputs = self.llm.chat(list(prompts), sp, use_tqdm=False)
        else:
            outputs = self.llm.generate(self._string_prompts(list(prompts)), sp, use_tqdm=False)
        rollouts = []
        for i, out in enumerate(outputs):
            for j, comp in enumerate(out.outputs):
                ids = list(comp.token_ids)
                logprobs = [step[t].logprob for step, t in zip(comp.logprobs or [], ids)]
                rollouts.append(Rollout(
                    prompt_index=i, sample_index=j, text=comp.text, token_ids=ids, logprobs=logprobs,
                    finish_reason="stop" if comp.finish_reason == "stop" else "length",
                    prompt_token_ids=list(out.prompt_token_ids or []),
                ))
        return rollouts

    def _string_prompts(self, texts: list[str]) -> list[Any]:
        """Plain strings, or token ids where a text already holds the BOS (vLLM would add a second one)."""
        tok = self.llm.get_tokenizer()
        if special_tokens_needed(tok, texts):
            return texts
        return [{"prompt_token_ids": tok(t, add_special_tokens=False)["input_ids"]} for t in texts]

    def update_weights(self, model: Any) -> None:
        weights = [(name, p.detach()) for name, p in model.named_parameters()]
        if self.in_process:
            self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
        else:
            cpu = [(n, w.cpu()) for n, w in weights]
            self.llm.collective_rpc(_load_weights_on_worker, args=(cpu,))
        self.llm.reset_prefix_cache()
