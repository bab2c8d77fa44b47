"""Size of the Llama Guard 3-1B-INT4 artifact against the bf16 model, on the real architecture (random weights).

Builds Llama Guard 3-1B from a ``LlamaConfig`` with the published dimensions (16 blocks, hidden 2048, MLP 8192,
32 heads / 8 KV heads, vocab 128,256, tied embeddings); nothing is downloaded. It exports the bf16 model, then
applies the pipeline's structural steps (16 → 12 blocks, MLP 8192 → 6400), torchao 8da4w QAT prepare + convert
(group size 256, INT4 embeddings), output-layer pruning to the guard's ~20 output tokens, and exports again with
INT4 weights packed two per byte (fp32 scales and int8 zero points kept: the pipeline's per-stage size measure).
Sizes are the files' sizes. The paper reports 440 MB, about 7× smaller than Llama Guard 3-1B; its bf16 baseline
stores the output layer apart from the embedding (``--untied``). The deployable ExecuTorch program (bf16/fp16
scales, no zero points) is measured, and timed, by ``benchmarks/guard_speed.py``.

    python benchmarks/guard_size.py [--untied] [--keep-layers 12] [--mlp 6400] [--group-size 256]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from runner.guard import compress

# Token ids a Llama Guard 3 answer uses (Llama 3 tokenizer): safe/unsafe, "S", digits, ",", newline, eos/eot.
# Their exact ids do not change the size; 20 rows are kept as in the paper.
NUM_OUTPUT_TOKENS = 20


def build(untied: bool) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                      rope_theta=500000.0, tie_word_embeddings=not untied)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    for p in model.parameters():  # random weights, cheaply
        p.data.normal_(0.0, 0.02)
    if not untied:
        model.tie_weights()
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--untied", action="store_true", help="separate output layer (the paper's bf16 baseline)")
    ap.add_argument("--keep-layers", type=int, default=12)
    ap.add_argument("--mlp", type=int, default=6400)
    ap.add_argument("--group-size", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        model = build(args.untied)
        base_params = compress.count_parameters(model)
        base = compress.export_model(model, Path(d) / "bf16.safetensors")
        print(f"Llama Guard 3-1B bf16 ({'untied' if args.untied else 'tied'}): {base_params / 1e9:.3f}B params, "
              f"{base / 1e6:.1f} MB")
        (Path(d) / "bf16.safetensors").unlink()
        n = len(model.model.layers)
        compress.prune_blocks(model, list(range(n - args.keep_layers, n)))  # which blocks does not change size
        ones = [torch.ones(model.config.intermediate_size) for _ in model.model.layers]
        compress.prune_mlp(model, ones, args.mlp)
        model.float()
        compress.qat(model, args.group_size, "prepare")
        compress.qat(model, args.group_size, "convert")
        compress.prune_output_layer(model, list(range(NUM_OUTPUT_TOKENS)))
        size = compress.export_model(model, Path(d) / "int4.safetensors")
        params = compress.count_parameters(model)
        print(f"compressed ({args.keep_layers} blocks, MLP {args.mlp}, 8da4w g{args.group_size}, INT4 embedding, "
              f"{NUM_OUTPUT_TOKENS} output rows): {params / 1e9:.3f}B params, {size / 1e6:.1f} MB")
        print(f"ratio bf16 / compressed: {base / size:.2f}x   (paper: 440 MB, ~7x)   [{time.time() - t0:.0f} s]")


if __name__ == "__main__":
    main()
