"""Compression steps of Llama Guard 3-1B-INT4 (arXiv 2411.17713), for any ``LlamaForCausalLM``.

1. Calibration: forward passes over guard prompts, recording per decoder block the cosine similarity of its
   input and output hidden states, and per MLP neuron the activation entering ``down_proj``.
2. Block pruning by block importance BI_l = 1 − mean_t cos(x_l,t, x_{l+1},t): drop the least important blocks.
3. MLP neuron pruning by mean activation L2 norm: keep the strongest neurons of each block.
4. (distillation: ``runner.guard.train``)
5. Quantisation-aware training with torchao: INT4 symmetric group-wise weights, INT8 asymmetric per-token
   dynamic activations ("8da4w"); embeddings INT4 group-wise weight-only; then convert.
6. Output-layer pruning: keep the rows of the guard's output tokens; scatter their logits into a −inf vector of
   the full vocabulary so generation and scoring are unchanged.
7. Size: quantised weights packed two INT4 values per byte with their scales and zero points (safetensors), the
   same measure for every stage of the table (fp32 stages included). The deployable artifact is the ExecuTorch
   program of :mod:`runner.guard.export`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

# --------------------------------------------------------------------------- 1. calibration


@torch.no_grad()
def calibrate(model: Any, batches: Iterable[dict[str, torch.Tensor]]) -> dict[str, list]:
    """Block importance per decoder block and mean activation L2 norm per MLP neuron over ``batches``.

    Only real tokens (``attention_mask`` = 1) count. The neuron score is sqrt(mean_t a_j,t²), the L2 norm of the
    neuron's activations over the calibration tokens divided by sqrt(token count)."""
    layers = model.model.layers
    cos_sum = torch.zeros(len(layers), dtype=torch.float64)
    sq_sum = [torch.zeros(layer.mlp.down_proj.in_features, dtype=torch.float64) for layer in layers]
    tokens = 0
    mask: dict[str, torch.Tensor] = {}
    hooks = []

    def block_hook(i: int):
        def hook(module, args, kwargs, output):
            x_in = args[0] if args else kwargs["hidden_states"]
            x_out = output[0] if isinstance(output, tuple) else output
            cos = torch.nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)
            cos_sum[i] += cos[mask["m"]].double().sum().cpu()
        return hook

    def mlp_hook(i: int):
        def hook(module, args):
            a = args[0].float()[mask["m"]]
            sq_sum[i] += (a.double() ** 2).sum(0).cpu()
        return hook

    for i, layer in enumerate(layers):
        hooks.append(layer.register_forward_hook(block_hook(i), with_kwargs=True))
        hooks.append(layer.mlp.down_proj.register_forward_pre_hook(mlp_hook(i)))
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            mask["m"] = batch["attention_mask"].bool().to(model.device)
            model(input_ids=batch["input_ids"].to(model.device), attention_mask=mask["m"].long())
            tokens += int(mask["m"].sum())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if tokens == 0:
        raise ValueError("calibration saw no tokens")
    return {"block_importance": (1.0 - cos_sum / tokens).tolist(),
            "neuron_importance": [(s / tokens).sqrt().tolist() for s in sq_sum], "tokens": tokens}


# --------------------------------------------------------------------------- 2.–3. pruning
def blocks_to_keep(block_importance: Sequence[float], keep: int) -> list[int]:
    """Indices (in order) of the ``keep`` blocks with the highest importance; ties keep the earlier block."""
    order = sorted(range(len(block_importance)), key=lambda i: (-block_importance[i], i))
    return sorted(order[:keep])


def prune_blocks(model: Any, keep_idx: Sequence[int]) -> Any:
    """Keep only the decoder blocks ``keep_idx`` (in place); re-number attention layers for the KV cache."""
    layers = model.model.layers
    model.model.layers = nn.ModuleList([layers[i] for i in keep_idx])
    for new_i, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_i
    model.config.num_hidden_layers = len(keep_idx)
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = [model.config.layer_types[i] for i in keep_idx]
    return model


def _slice_linear(lin: nn.Linear, idx: torch.Tensor, dim: int) -> nn.Linear:
    w = lin.weight.data.index_select(dim, idx.to(lin.weight.device))
    out = nn.Linear(w.shape[1], w.shape[0], bias=lin.bias is not None, device=w.device, dtype=w.dtype)
    out.weight.data.copy_(w)
    if lin.bias is not None:
        out.bias.data.copy_(lin.bias.data if dim == 1 else lin.bias.data.index_select(0, idx))
    return out


def neurons_to_keep(neuron_importance: Sequence[float], size: int) -> torch.Tensor:
    """Sorted indices of the ``size`` neurons with the largest importance."""
    scores = torch.as_tensor(neuron_importance, dtype=torch.float64)
    return torch.sort(torch.topk(scores, size, sorted=False).indices).values


def prune_mlp(model: Any, neuron_importance: Sequence[Sequence[float]], size: int) -> Any:
    """Shrink every block's MLP to ``size`` neurons (rows of gate/up, columns of down), in place."""
    for layer, scores in zip(model.model.layers, neuron_importance):
        idx = neurons_to_keep(scores, size)
        mlp = layer.mlp
        mlp.gate_proj = _slice_linear(mlp.gate_proj, idx, 0)
        mlp.up_proj = _slice_linear(mlp.up_proj, idx, 0)
        mlp.down_proj = _slice_linear(mlp.down_proj, idx, 1)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = size
    model.config.intermediate_size = size
    return model


# --------------------------------------------------------------------------- 5. QAT
def untie_output(model: Any) -> Any:
    """Give ``lm_head`` its own copy of a tied embedding so each can be quantised (and the head pruned) alone."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    plain = not (_is_quantized(head.weight) or _is_quantized(emb.weight))
    if head.weight is emb.weight or (plain and head.weight.data_ptr() == emb.weight.data_ptr()):
        head.weight = nn.Parameter(emb.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False
    return model


def linear_config(group_size: int):
    """8da4w: INT8 asymmetric per-token dynamic activations, INT4 symmetric weights per group of ``group_size``."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerGroup
    from torchao.quantization.quant_primitives import MappingType

    return Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(group_size),
                                                 weight_mapping_type=MappingType.SYMMETRIC)


def embedding_config(group_size: int):
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    return IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(group_size))


def _is_embedding(module: nn.Module, fqn: str) -> bool:
    return isinstance(module, nn.Embedding)


def qat(model: Any, group_size: int, step: str, quantize_embedding: bool = True) -> Any:
    """torchao QAT ``step="prepare"`` (fake-quantised modules to train) or ``"convert"`` (quantised weights)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    untie_output(model)
    quantize_(model, QATConfig(linear_config(group_size), step=step))
    if quantize_embedding:
        quantize_(model, QATConfig(embedding_config(group_size), step=step), filter_fn=_is_embedding)
    return model


# --------------------------------------------------------------------------- 6. output-layer pruning
class PrunedOutputHead(nn.Module):
    """The output layer restricted to ``kept_ids``; logits of every other token are −inf."""

    def __init__(self, head: nn.Linear, kept_ids: Sequence[int], vocab_size: int):
        super().__init__()
        ids = torch.as_tensor(sorted(kept_ids), dtype=torch.long)
        self.register_buffer("kept_ids", ids)
        self.vocab_size = vocab_size
        self.linear = nn.Linear(head.in_features, len(ids), bias=head.bias is not None)
        self.linear.weight = nn.Parameter(_select_rows(head.weight, ids), requires_grad=False)
        if head.bias is not None:
            self.linear.bias = nn.Parameter(head.bias.detach()[ids], requires_grad=False)

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        kept = self.linear(hidden)
        full = kept.new_full((*kept.shape[:-1], self.vocab_size), float("-inf"))
        return full.index_copy(-1, self.kept_ids, kept)


def _select_rows(w: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Rows ``ids`` of a weight; a torchao INT4 weight keeps its exact integers, scales and zero points."""
    from torchao.quantization import IntxUnpackedToInt8Tensor

    if isinstance(w, IntxUnpackedToInt8Tensor):
        return IntxUnpackedToInt8Tensor(w.qdata[ids], w.scale[ids], w.zero_point[ids], w.target_dtype,
                                        w.block_size, w.dtype, w.activation_quantization)
    return w.detach()[ids].clone()


def prune_output_layer(model: Any, kept_ids: Sequence[int]) -> Any:
    """Replace ``lm_head`` by :class:`PrunedOutputHead` over ``kept_ids`` (untying it first), in place."""
    untie_output(model)
    head = model.get_output_embeddings()
    model.lm_head = PrunedOutputHead(head, kept_ids, head.out_features)
    return model


# --------------------------------------------------------------------------- 7. size and latency measurement
def count_parameters(model: Any) -> int:
    """Parameters stored (shared tensors once)."""
    seen, n = set(), 0
    for t in model.state_dict().values():
        if not torch.is_floating_point(t) and not _is_quantized(t):
            continue
        key = id(t) if _is_quantized(t) else t.data_ptr()
        if key not in seen:
            seen.add(key)
            n += t.numel()
    return n


def _is_quantized(t: torch.Tensor) -> bool:
    return hasattr(t, "qdata") and hasattr(t, "scale")


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two signed INT4 values (−8..7) per byte, low nibble first; odd lengths are padded with 0."""
    flat = (q.reshape(-1).to(torch.int16) + 8).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return flat[0::2] | (flat[1::2] << 4)


def unpack_int4(packed: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    n = 1
    for s in shape:
        n *= s
    lo, hi = (packed & 0x0F).to(torch.int16) - 8, (packed >> 4).to(torch.int16) - 8
    return torch.stack([lo, hi], -1).reshape(-1)[:n].to(torch.int8).reshape(*shape)


def export_model(model: Any, path: Path | str) -> int:
    """Write the model's weights to ``path`` (safetensors): INT4 weights packed with their scales and zero points,
    other tensors as they are, shared tensors once. Returns the file size in bytes."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, str] = {}
    seen: dict[Any, str] = {}
    for name, t in model.state_dict().items():
        key = id(t) if _is_quantized(t) else (t.data_ptr(), tuple(t.shape), t.dtype)
        if key in seen:
            meta[name] = json.dumps({"alias": seen[key]})
            continue
        seen[key] = name
        if _is_quantized(t) and getattr(t, "target_dtype", None) == torch.int4:
            tensors[f"{name}.qdata_int4"] = pack_int4(t.qdata)
            tensors[f"{name}.scale"] = t.scale.contiguous()
            tensors[f"{name}.zero_point"] = t.zero_point.contiguous()
            meta[name] = json.dumps({"shape": list(t.qdata.shape), "block_size": list(t.block_size),
                                     "dtype": str(t.dtype)})
        elif _is_quantized(t):
            raise TypeError(f"{name}: only INT4 torchao weights are exported, got {getattr(t, 'target_dtype', '?')}")
        else:
            tensors[name] = t.detach().contiguous().cpu()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt", "int4": json.dumps(meta)})
    return path.stat().st_size


def load_exported_int4(path: Path | str) -> dict[str, dict[str, torch.Tensor]]:
    """The INT4 weights of an exported file: ``{name: {"qdata", "scale", "zero_point"}}`` (unpacked)."""
    from safetensors import safe_open

    out = {}
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["int4"])
        for name, info in meta.items():
            info = json.loads(info)
            if "shape" in info:
                out[name] = {"qdata": unpack_int4(f.get_tensor(f"{name}.qdata_int4"), info["shape"]),
                             "scale": f.get_tensor(f"{name}.scale"), "zero_point": f.get_tensor(f"{name}.zero_point")}
    return out


@torch.no_grad()
def cpu_latency(model: Any, input_ids: torch.Tensor, new_tokens: int = 16, repeats: int = 3) -> dict[str, float]:
    """Time to first token (prefill + first greedy token) and decode tokens/s with a KV cache, batch 1; the
    median over ``repeats`` runs. Decoding runs ``new_tokens`` steps regardless of EOS."""
    model.eval()
    ttft, tps = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = model(input_ids=input_ids, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t1 = time.perf_counter()
        past = out.past_key_values
        for _ in range(new_tokens - 1):
            out = model(input_ids=nxt, past_key_values=past, use_cache=True)
            past = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        t2 = time.perf_counter()
        ttft.append(t1 - t0)
        tps.append((new_tokens - 1) / max(t2 - t1, 1e-9))
    return {"ttft_s": sorted(ttft)[len(ttft) // 2], "decode_tokens_per_s": sorted(tps)[len(tps) // 2]}
