"""``vllm`` engine: vLLM's offline ``LLM`` for GPU rollouts (the ``gpu`` extra, vLLM 0.22–0.31).

The engine is colocated with training as in TRL's colocate mode: ``distributed_executor_backend=
"external_launcher"`` runs vLLM inside the training processes, one tensor-parallel shard per process, so
``tensor_parallel_size`` must divide the number of processes (one without a launcher; ``hardware.launcher``
starts one per GPU). The processes of one tensor-parallel group issue the same requests: each gathers its
group's requests, generates them all and keeps its own. ``update_weights`` hands the training model's
tensors to every shard with ``LLM.collective_rpc("load_trained_weights", ...)``, a method of
:class:`~runner.rollout.vllm_worker.WeightSyncExtension` called by name in the same process (no copy, no
pickling). With more GPUs than processes (TP > 1 in one process) vLLM runs its own worker processes: the
engine then serves a fixed model (judges, evaluation) and refuses weight updates.

Each request (prompt ``i``, copy ``j``) is one vLLM request with its own ``SamplingParams`` seed,
:func:`~runner.rollout.base.request_seed`; log-probabilities are the processed ones (temperature and
filters applied, ``logprobs_mode="processed_logprobs"``), matching the ``hf`` engine.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from runner.core.errors import require
from runner.rollout.base import Prompt, Rollout, SamplingParams, call_seed, request_seed, special_tokens_needed

WORKER_EXTENSION = "runner.rollout.vllm_worker.WeightSyncExtension"


class VLLMEngine:
    def __init__(self, model_path: str, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.85,
                 dtype: str = "bfloat16", max_model_len: int | None = None, seed: int = 0,
                 enforce_eager: bool = False, trust_remote_code: bool = False, lora_rank: int | None = None):
        self.vllm = require("vllm", "gpu", "rollout engine 'vllm'")
        self.tp = tensor_parallel_size
        world = int(os.environ.get("WORLD_SIZE", "1"))
        self.colocated = world % tensor_parallel_size == 0  # a shard per training process (TRL's colocate)
        kwargs: dict[str, Any] = {}
        if self.colocated:
            for var, default in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                                 ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29533")):
                os.environ.setdefault(var, default)
            kwargs["distributed_executor_backend"] = "external_launcher"
        if lora_rank:  # multi-LoRA: requests name their adapter with a LoRARequest (runner.models.lora)
            kwargs.update(enable_lora=True, max_loras=2, max_lora_rank=lora_rank)
        self.llm = self.vllm.LLM(
            model=model_path, tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization, dtype=dtype, max_model_len=max_model_len,
            seed=seed, enforce_eager=enforce_eager, trust_remote_code=trust_remote_code,
            logprobs_mode="processed_logprobs", worker_extension_cls=WORKER_EXTENSION, **kwargs,
        )
        self.tp_group = _tp_group(tensor_parallel_size) if self.colocated and tensor_parallel_size > 1 else None

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, hardware_cfg: Any = None, seed: int = 0,
                   lora_rank: int | None = None, **_: Any):
        """An engine serving ``model``'s checkpoint (its ``name_or_path``: an HF id or a saved directory)."""
        path = getattr(model, "name_or_path", None) or getattr(model.config, "_name_or_path", None)
        return cls.from_path(path, hardware_cfg, seed=seed, lora_rank=lora_rank)

    @classmethod
    def from_path(cls, path: str | None, hardware_cfg: Any = None, seed: int = 0, lora_rank: int | None = None):
        """An engine serving the checkpoint at ``path`` (a saved directory or an HF id), set up by ``hardware``."""
        if not path or not os.path.exists(path) and "/" not in path:
            raise ValueError("the vllm engine needs a model saved to disk or an HF id (model.name_or_path)")
        hw = hardware_cfg
        return cls(path, tensor_parallel_size=hw.tensor_parallel_size if hw else 1,
                   gpu_memory_utilization=hw.gpu_memory_utilization if hw else 0.85,
                   dtype=hw.dtype if hw else "bfloat16", max_model_len=hw.max_model_len if hw else None,
                   seed=seed, enforce_eager=hw.enforce_eager if hw else False, lora_rank=lora_rank)

    def sampling_params(self, params: SamplingParams, seed: int | None = None) -> Any:
        """One request's vLLM ``SamplingParams`` (a single completion, sampled with ``seed``)."""
        return self.vllm.SamplingParams(
            n=1, temperature=params.temperature, top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1, max_tokens=params.max_new_tokens,
            seed=seed, stop=list(params.stop) or None, stop_token_ids=list(params.stop_token_ids) or None,
            logprobs=0,
        )

    def generate(self, prompts: Sequence[Prompt], params: SamplingParams, lora_request: Any = None) -> list[Rollout]:
        seed = call_seed(params) if params.temperature > 0 else 0  # greedy: seeds unused, global RNG untouched
        keys = [(i, j) for i in range(len(prompts)) for j in range(params.n)]  # one request per copy
        requests = [(prompts[i], request_seed(seed, i, j)) for i, j in keys]
        mine = slice(0, len(requests))
        if self.tp_group is not None:  # every shard of a tensor-parallel group must run the same requests
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.tp
            dist.all_gather_object(gathered, requests, group=self.tp_group)
            start = sum(len(g) for g in gathered[:dist.get_rank(group=self.tp_group)])
            mine, requests = slice(start, start + len(requests)), [r for g in gathered for r in g]
        sps = [self.sampling_params(params, s) for _, s in requests]
        inputs = [p for p, _ in requests]
        if inputs and not isinstance(inputs[0], str):
            outputs = self.llm.chat(inputs, sps, use_tqdm=False, lora_request=lora_request)
        else:
            outputs = self.llm.generate(self._string_prompts(inputs), sps, use_tqdm=False,
                                        lora_request=lora_request)
        rollouts = []
        for (i, j), out in zip(keys, outputs[mine]):
            comp = out.outputs[0]
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
        """Load ``model``'s parameters into every shard (by reference: the engine runs in this process)."""
        if not self.colocated:
            raise RuntimeError(
                f"weight updates need the vllm engine colocated with training: tensor_parallel_size={self.tp} "
                f"must divide the number of training processes (hardware.launcher=torchrun, one per GPU)")
        weights = [(name, p.detach()) for name, p in model.named_parameters()]
        self.llm.collective_rpc("load_trained_weights", args=(weights,))
        self.llm.reset_prefix_cache()


def _tp_group(tp: int) -> Any:
    """This process's tensor-parallel group: consecutive ranks ``[k·tp, (k+1)·tp)`` (vLLM's and TRL's layout)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    group, _ = dist.new_subgroups_by_enumeration([list(range(k, k + tp)) for k in range(0, world, tp)])
    return group
