"""Step 7 of Llama Guard 3-1B-INT4 (arXiv 2411.17713): the deployable ExecuTorch program, run from the file.

Export follows ExecuTorch's LLM path: the model is wrapped with a static KV cache (transformers' ExecuTorch
integration, ``TorchExportableModuleWithStaticCache``) so one program serves prefill (any prompt length) and
single-token decoding, traced with ``torch.export``, lowered with the XNNPACK partitioner for dynamically
quantised linears (torchao 8da4w: INT8 per-token activations, INT4 symmetric group-wise weights; XNNPACK stores
the group scales as bf16) and written as a ``.pte``. A torchao INT4 embedding becomes ExecuTorch's
``quantized_decomposed.embedding_4bit`` (two values per byte, fp16 scales, no zero points: the weights are
symmetric). The pruned output layer keeps its scatter into a −inf vector of the full vocabulary. The program
returns the logits of the last position only.

:class:`PteGuard` runs such a file in the ExecuTorch runtime (``executorch.runtime``): prefill, then greedy
decoding one token at a time from its KV cache; :func:`classify_pte` scores a test set from the file alone and
:func:`pte_latency` times it.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runner.core.errors import ConfigError, MissingExtraError, require
from runner.data.moderation import ModerationExample
from runner.guard.evaluate import GuardOutputs
from runner.guard.format import unsafe_probability, verdict_token_ids
from runner.guard.train import GuardPrompter


def require_executorch() -> None:
    """Import ExecuTorch (compiler, XNNPACK backend, runtime, quantized kernels), or a one-line ConfigError that
    names the ``deploy`` extra."""
    try:
        for mod in ("executorch.exir", "executorch.backends.xnnpack.partition.xnnpack_partitioner",
                    "executorch.runtime", "executorch.kernels.quantized",
                    "executorch.exir.passes._quant_patterns_and_replacements"):
            require(mod, "deploy", "the ExecuTorch export (algorithm.export_pte=true)")
    except MissingExtraError as e:
        raise ConfigError(str(e)) from None


class Int4Embedding(nn.Module):
    """A torchao INT4 symmetric group-wise embedding as ExecuTorch's ``embedding_4bit`` (packed nibbles, fp16
    scales, no zero points); eager calls run the op's reference implementation."""

    def __init__(self, weight: Any):
        super().__init__()
        require_executorch()  # registers the quantized_decomposed and quant_fusion ops
        if getattr(weight, "target_dtype", None) != torch.int4 or weight.block_size[0] != 1:
            raise TypeError("Int4Embedding needs a torchao INT4 weight quantised in groups along each row")
        if weight.zero_point is not None and bool(weight.zero_point.any()):
            raise TypeError("Int4Embedding needs symmetric weights (zero points 0)")
        rows = weight.qdata.shape[0]
        self.register_buffer("packed", torch.ops.quant_fusion._pack_embedding_weight(weight.qdata, 4))
        self.register_buffer("scales", weight.scale.to(torch.float16).reshape(rows, -1))
        self.dtype = weight.dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized_decomposed.embedding_4bit.dtype(self.packed, self.scales, None, -8, 7, ids,
                                                                   dtype=self.dtype)


def _last_logits_module(model: Any, max_len: int) -> nn.Module:
    from transformers.integrations.executorch import TorchExportableModuleWithStaticCache

    class LastLogits(TorchExportableModuleWithStaticCache):
        """``forward(input_ids [1, T], cache_position [T]) -> logits [1, vocab]`` of the last position, writing
        the T positions into the cache."""

        def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
            for i, layer in enumerate(self.static_cache.layers):
                # read the cache through the module's buffers, which torch.export tracks (and lifts as state)
                layer.keys, layer.values = getattr(self, f"key_cache_{i}"), getattr(self, f"value_cache_{i}")
                layer.cumulative_length = getattr(self, f"cumulative_length_{i}")
                layer.cumulative_length.copy_(cache_position[0])
            out = self.model(input_ids=input_ids, attention_mask=None, cache=self.static_cache, use_cache=True,
                             logits_to_keep=1)
            return out.logits[:, -1]

    model.generation_config.cache_implementation = "static"
    return LastLogits(model, batch_size=1, max_cache_len=max_len).eval()


@torch.no_grad()
def export_pte(model: Any, path: Path | str, max_len: int, copy_model: bool = True) -> int:
    """Write ``model`` (a converted torchao 8da4w ``LlamaForCausalLM``) as an ExecuTorch program with a KV cache
    of ``max_len`` positions (prompt and answer together); returns the file size in bytes. The program runs on
    CPU. ``copy_model=False`` transforms ``model`` in place (for models too large to copy)."""
    require_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackDynamicallyQuantizedPartitioner
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower
    from torchao.utils import unwrap_tensor_subclass

    model = (copy.deepcopy(model) if copy_model else model).cpu().eval()
    emb = model.get_input_embeddings()
    if getattr(emb.weight, "target_dtype", None) == torch.int4:
        model.set_input_embeddings(Int4Embedding(emb.weight))
    wrapped = _last_logits_module(model, max_len)
    unwrap_tensor_subclass(wrapped)
    seq = torch.export.Dim("seq", min=1, max=max_len - 1)
    example = (torch.zeros(1, 2, dtype=torch.long), torch.arange(2))
    program = torch.export.export(wrapped, example, dynamic_shapes=({1: seq}, {0: seq}), strict=False)
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackDynamicallyQuantizedPartitioner()],
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    et = edge.to_executorch(ExecutorchBackendConfig(extract_delegate_segments=True,
                                                    do_quant_fusion_and_const_prop=True))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(et.buffer)
    return path.stat().st_size


class PteGuard:
    """An exported guard program in the ExecuTorch runtime, batch 1, greedy."""

    def __init__(self, path: Path | str):
        require_executorch()
        from executorch.runtime import Runtime

        self.path = Path(path)
        self.method = Runtime.get().load_program(str(self.path)).load_method("forward")

    def step(self, ids: Sequence[int], start: int) -> torch.Tensor:
        """Logits [vocab] after feeding ``ids`` at cache positions ``start, start+1, ...``."""
        x = torch.tensor([list(ids)], dtype=torch.long)
        return self.method.execute([x, torch.arange(start, start + len(ids))])[0][0]

    def generate(self, prompt: Sequence[int], max_new_tokens: int, eos: Sequence[int] = ()
                 ) -> tuple[list[int], torch.Tensor]:
        """(generated ids up to and including the first of ``eos``, logits at the first generated position)."""
        first = logits = self.step(prompt, 0)
        out: list[int] = []
        while True:
            nxt = int(logits.argmax())
            out.append(nxt)
            if nxt in eos or len(out) == max_new_tokens:
                return out, first
            logits = self.step([nxt], len(prompt) + len(out) - 1)


def classify_pte(pte: PteGuard, prompter: GuardPrompter, examples: Sequence[ModerationExample],
                 max_new_tokens: int = 10) -> GuardOutputs:
    """The guard outputs of :func:`runner.guard.evaluate.classify`, computed by the ExecuTorch program."""
    tok = prompter.tokenizer
    _, unsafe_id = verdict_token_ids(tok)
    eos = [tok.eos_token_id]
    if "<|eot_id|>" in tok.get_vocab():
        eos.append(tok.convert_tokens_to_ids("<|eot_id|>"))
    prompts, truncated = prompter.prompts(examples, max_new_tokens)
    texts, probs = [], []
    for text in prompts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        out, first = pte.generate(ids, max_new_tokens, eos)
        probs.append(float(unsafe_probability(first[None], unsafe_id)[0]))
        cut = next((i for i, t in enumerate(out) if t in eos), len(out))
        texts.append(tok.decode(out[:cut], skip_special_tokens=True))
    return GuardOutputs(texts, probs, truncated)


def pte_latency(pte: PteGuard, input_ids: Sequence[int], new_tokens: int = 16, repeats: int = 3
                ) -> dict[str, float]:
    """Time to first token (prefill + the first greedy token) and decode tokens/s from the KV cache, batch 1; the
    median over ``repeats`` runs (as :func:`runner.guard.compress.cpu_latency` for eager models)."""
    ttft, tps = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        nxt = int(pte.step(input_ids, 0).argmax())
        t1 = time.perf_counter()
        for i in range(new_tokens - 1):
            nxt = int(pte.step([nxt], len(input_ids) + i).argmax())
        t2 = time.perf_counter()
        ttft.append(t1 - t0)
        tps.append((new_tokens - 1) / max(t2 - t1, 1e-9))
    return {"ttft_s": sorted(ttft)[len(ttft) // 2], "decode_tokens_per_s": sorted(tps)[len(tps) // 2]}
