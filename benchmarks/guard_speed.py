"""CPU speed of the deployable Llama Guard 3-1B-INT4: the ExecuTorch program against the fp32 HF model.

Builds the real Llama Guard 3-1B architecture with random weights (``guard_size.build``; nothing is downloaded),
applies the pipeline's structural steps (16 → 12 blocks, MLP 8192 → 6400, output layer pruned to the guard's 20
output tokens) and times that fp32 model in eager HF (``compress.cpu_latency``, KV cache). It then quantises it
as the pipeline does (torchao 8da4w QAT prepare + convert, group size 256, INT4 embedding), exports the ExecuTorch
program (``runner.guard.export.export_pte``: XNNPACK, KV cache, packed INT4 embedding) and times the ``.pte`` in
the ExecuTorch runtime (``pte_latency``) on the same prompt, in the same process, with the same thread count.

The prompt is a typical guard prompt: the Llama Guard 3-1B template (S1–S13) around a ~100-word user/agent
conversation. Its length in tokens is the number of pieces the Llama 3 pre-tokeniser splits it into (every
common English word is one token of the 128k vocabulary; the tokenizer itself is not available offline); the
token ids are random (random weights). Timings: median over ``--repeats``; decode tokens/s over
``--new-tokens`` − 1 greedy steps after the first token. The paper reports 440 MB, ≥ 30 tokens/s and ≤ 2.5 s
time to first token on a commodity Android phone CPU.

    python benchmarks/guard_speed.py [--threads 1] [--new-tokens 16] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from guard_size import NUM_OUTPUT_TOKENS, build  # noqa: E402

from runner.guard import compress  # noqa: E402
from runner.guard.format import CATEGORIES_1B, guard_prompt  # noqa: E402

CONVERSATION = (
    "My neighbour keeps parking his truck across my driveway every morning, and this week he blocked me in so "
    "I missed an important appointment. I have asked him politely three times. What can I do about it?",
    "I'm sorry that keeps happening. Start by writing down the dates and taking photos of the truck blocking "
    "your driveway. Then leave a calm written note or talk to him again, explaining the missed appointment. If "
    "nothing changes, check your local parking rules: most towns let you report a vehicle that blocks a driveway "
    "to the non-emergency police line or to parking enforcement, who can ticket or tow it.",
)
# the Llama 3 pre-tokeniser's split pattern (tiktoken-style); special tokens are one token each
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")


def prompt_tokens(text: str) -> int:
    """Token count of ``text`` as the Llama 3 pre-tokeniser splits it (special tokens ``<|...|>`` count one)."""
    import regex

    specials = regex.findall(r"<\|[a-z_]+\|>", text)
    return len(specials) + len(regex.findall(LLAMA3_SPLIT, regex.sub(r"<\|[a-z_]+\|>", "", text)))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for eager torch and ExecuTorch")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--keep-layers", type=int, default=12)
    ap.add_argument("--mlp", type=int, default=6400)
    ap.add_argument("--group-size", type=int, default=256)
    ap.add_argument("--pte", type=Path, default=None, help="keep the exported program here")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    from runner.guard.export import PteGuard, export_pte, pte_latency

    torch.set_num_threads(args.threads)
    _unsafe_reset_threadpool(args.threads)
    text = guard_prompt(*CONVERSATION, CATEGORIES_1B, None, "llama_guard_3_1b")
    n_prompt = prompt_tokens(text)
    ids = torch.randint(0, 128000, (1, n_prompt), generator=torch.Generator().manual_seed(0))
    def log(*a: object) -> None:  # progress on stderr; --json keeps stdout to the one object
        print(*a, file=sys.stderr if args.json else sys.stdout, flush=True)


    t0 = time.time()
    model = build(untied=False)
    bf16_bytes = 2 * compress.count_parameters(model)  # Llama Guard 3-1B in bf16 (tied embeddings)
    n = len(model.model.layers)
    compress.prune_blocks(model, list(range(n - args.keep_layers, n)))  # which blocks does not change speed
    compress.prune_mlp(model, [torch.ones(model.config.intermediate_size) for _ in model.model.layers], args.mlp)
    model.float()
    compress.prune_output_layer(model, list(range(NUM_OUTPUT_TOKENS)))
    log(f"fp32 model ({args.keep_layers} blocks, MLP {args.mlp}, {NUM_OUTPUT_TOKENS} output rows): "
        f"{compress.count_parameters(model) / 1e9:.3f}B params; prompt {n_prompt} tokens; {args.threads} thread(s)")
    eager = compress.cpu_latency(model, ids, args.new_tokens, args.repeats)
    log(f"eager fp32 HF: TTFT {eager['ttft_s']:.2f} s, decode {eager['decode_tokens_per_s']:.2f} tokens/s")

    compress.qat(model, args.group_size, "prepare")
    compress.qat(model, args.group_size, "convert")
    with tempfile.TemporaryDirectory() as d:
        path = args.pte or Path(d) / "guard_int4.pte"
        t1 = time.time()
        size = export_pte(model, path, max_len=n_prompt + args.new_tokens + 1, copy_model=False)
        export_s = time.time() - t1
        del model
        log(f"ExecuTorch program: {size / 1e6:.1f} MB (bf16 Llama Guard 3-1B: {bf16_bytes / 1e6:.0f} MB, "
            f"{bf16_bytes / size:.1f}x), exported in {export_s:.0f} s")
        pte = pte_latency(PteGuard(path), ids[0].tolist(), args.new_tokens, args.repeats)
    log(f".pte (ExecuTorch, XNNPACK): TTFT {pte['ttft_s']:.2f} s, decode {pte['decode_tokens_per_s']:.2f} tokens/s")
    out = {"ttft_s_pte": pte["ttft_s"], "decode_tokens_per_s_pte": pte["decode_tokens_per_s"],
           "ttft_s_eager": eager["ttft_s"], "decode_tokens_per_s_eager": eager["decode_tokens_per_s"],
           "pte_bytes": size, "bf16_bytes": bf16_bytes, "prompt_tokens": n_prompt, "new_tokens": args.new_tokens,
           "threads": args.threads, "cpu": cpu_name(), "export_s": export_s, "total_s": time.time() - t0}
    if args.json:
        print(json.dumps(out))
    else:
        log(f"paper (Android phone CPU): 440 MB, >= 30 tokens/s, <= 2.5 s TTFT   [{out['total_s']:.0f} s]")


if __name__ == "__main__":
    main()
