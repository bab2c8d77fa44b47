"""GPU checks that fail: every check asserts, and the script exits 1 if any failed.

    python scripts/gpu_check.py            # on a CUDA machine (scripts/gpu_check.sh installs the gpu extra)
    python scripts/gpu_check.py --cpu      # degraded local sanity check: GPU-only checks are skipped, saying why

Checks, on a small Llama-architecture model (head_dim 64, which every vLLM attention backend supports):

1. ``hf`` engine: the G copies of one prompt differ at temperature 1, and a rerun repeats them;
2. ``hf`` engine: a weight sync reaches the engine (its greedy output changes, and equals the trained model's);
3. a bf16 training step (AdamW) lowers the loss on its batch;
4. the ``hf`` engine's generation throughput (tokens/s), reported;
5. with vLLM installed (GPU only): copies differ, a weight sync reaches the engine (its sampled tokens'
   log-probabilities match the updated model's, teacher-forced, and no longer the old model's), and
   vLLM's throughput is at least ``--min-speedup`` (5) times the ``hf`` engine's on the same requests.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.core.config import HardwareConfig, ModelConfig  # noqa: E402
from runner.models.builder import build_model_and_tokenizer  # noqa: E402
from runner.rollout import SamplingParams  # noqa: E402
from runner.rollout.hf import HFEngine  # noqa: E402

PROMPTS = [f"the {w} of the" for w in ("cat", "dog", "sea", "sky", "map", "key", "box", "sun")]


def _model(device: str, dtype: str, seed: int = 0) -> tuple[Any, Any, Any]:
    torch.manual_seed(seed)
    hw = OmegaConf.merge(OmegaConf.structured(HardwareConfig), {
        "name": "check", "device": device, "num_gpus": int(device == "cuda"), "dtype": dtype,
        "rollout_engine": "hf", "gpu_memory_utilization": 0.3, "enforce_eager": False})
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), {
        "hidden_size": 256, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2, "intermediate_size": 768,
        "max_position_embeddings": 1024})
    model, tok = build_model_and_tokenizer(cfg, hw)
    return model, tok, hw


def _perturb(model: Any, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w in model.parameters():
            w.add_((torch.randn(w.shape, generator=g) * w.float().std().clamp(min=1e-3)).to(w))


@torch.no_grad()
def _teacher_forced(model: Any, prompt_ids: list[int], ids: list[int]) -> torch.Tensor:
    """log p(ids | prompt) under ``model``, token by token (the reference for an engine's log-probabilities)."""
    x = torch.tensor([prompt_ids + ids], device=model.device)
    logp = model(input_ids=x).logits[0].float().log_softmax(-1)
    return logp[len(prompt_ids) - 1:-1].gather(-1, torch.tensor(ids, device=model.device)[:, None]).squeeze(-1).cpu()


def check_copies_differ(engine: Any) -> str:
    p = SamplingParams(max_new_tokens=24, temperature=1.0, seed=7)
    a = engine.generate(["the cat"] * 4, p)
    copies = {tuple(r.token_ids) for r in a}
    assert len(copies) == 4, f"{len(copies)} distinct completions among 4 copies of one prompt"
    b = engine.generate(["the cat"] * 4, p)
    assert [r.token_ids for r in a] == [r.token_ids for r in b], "a rerun with the same seed gave other samples"
    return "4 copies, 4 distinct completions; a rerun repeats them"


def check_hf_sync(model: Any, tok: Any) -> str:
    engine = HFEngine(copy.deepcopy(model), tok)  # the engine's own copy of the weights, as vLLM holds one
    greedy = SamplingParams(max_new_tokens=16, temperature=0.0)
    before = [r.token_ids for r in engine.generate(PROMPTS, greedy)]
    trained = copy.deepcopy(model)
    _perturb(trained)
    engine.update_weights(trained)
    after = [r.token_ids for r in engine.generate(PROMPTS, greedy)]
    reference = [r.token_ids for r in HFEngine(trained, tok).generate(PROMPTS, greedy)]
    assert after != before, "greedy outputs are unchanged after the weight sync"
    assert after == reference, "after the sync the engine does not generate what the trained model generates"
    return f"{sum(a != b for a, b in zip(after, before))}/{len(PROMPTS)} greedy outputs changed, all = trained model's"


def check_bf16_step(device: str) -> str:
    model, tok, _ = _model(device, "bfloat16", seed=3)
    model.train()
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(3, 259, (8, 64), generator=g).to(model.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss0 = model(input_ids=batch, labels=batch).loss
    loss0.backward()
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        loss1 = model(input_ids=batch, labels=batch).loss
    assert next(model.parameters()).dtype == torch.bfloat16
    assert torch.isfinite(loss0) and loss1 < loss0, f"loss {loss0.item():.4f} -> {loss1.item():.4f}"
    return f"loss {loss0.item():.4f} -> {loss1.item():.4f} after one AdamW step (bf16, {device})"


def throughput(engine: Any, n_prompts: int, max_new_tokens: int) -> tuple[float, int]:
    """Generated tokens per second for ``n_prompts`` sampled completions (one warm-up call first)."""
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n_prompts)]
    p = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, seed=1)
    engine.generate(prompts[:2], p)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = engine.generate(prompts, p)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    tokens = sum(len(r.token_ids) for r in out)
    return tokens / (time.perf_counter() - t), tokens


def check_vllm(model: Any, tok: Any, hw: Any, hf_tps: float, n_prompts: int, max_new_tokens: int,
               min_speedup: float) -> list[tuple[str, Callable[[], str]]]:
    from runner.rollout.vllm import VLLMEngine

    path = "/tmp/runner_gpu_check_model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    model.name_or_path = path
    engine = VLLMEngine.from_model(model, tok, hw, seed=0)

    def sync() -> str:
        p = SamplingParams(max_new_tokens=16, temperature=1.0, seed=3)
        old = copy.deepcopy(model)
        _perturb(model)
        engine.update_weights(model)
        out = engine.generate(PROMPTS, p)
        err_new = torch.cat([(torch.tensor(r.logprobs) - _teacher_forced(model, r.prompt_token_ids, r.token_ids)).abs()
                             for r in out]).mean().item()
        err_old = torch.cat([(torch.tensor(r.logprobs) - _teacher_forced(old, r.prompt_token_ids, r.token_ids)).abs()
                             for r in out]).mean().item()
        assert err_new < 0.1, f"vLLM log-probs differ from the updated model's by {err_new:.3f} on average"
        assert err_old > 5 * err_new, f"vLLM log-probs still fit the old model ({err_old:.3f} vs {err_new:.3f})"
        return f"mean |Δ log p| vs updated model {err_new:.4f}, vs old model {err_old:.4f}"

    def speed() -> str:
        tps, tokens = throughput(engine, n_prompts, max_new_tokens)
        assert hf_tps > 0, "no hf engine throughput to compare with"
        ratio = tps / hf_tps
        assert ratio >= min_speedup, f"vLLM {tps:.0f} tok/s = {ratio:.1f}× hf's {hf_tps:.0f}: < {min_speedup}×"
        return f"vLLM {tps:.0f} tok/s ({tokens} tokens) = {ratio:.1f}× the hf engine"

    return [("vllm: copies of one prompt differ", lambda: check_copies_differ(engine)),
            ("vllm: weight sync reaches the engine", sync),
            (f"vllm: throughput >= {min_speedup}x hf", speed)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="degraded local mode: skip the GPU-only checks")
    ap.add_argument("--min-speedup", type=float, default=5.0)
    args = ap.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("FAIL no CUDA device (run with --cpu for the degraded local check)")
        return 1
    device = "cpu" if args.cpu else "cuda"
    n_prompts, max_new_tokens = (16, 32) if args.cpu else (256, 128)
    model, tok, hw = _model(device, "float32" if args.cpu else "bfloat16")
    failures = 0

    def run(name: str, fn: Callable[[], str]) -> None:
        nonlocal failures
        try:
            print(f"PASS {name}: {fn()}", flush=True)
        except Exception as e:  # an assertion or a crash: both fail the check
            failures += 1
            print(f"FAIL {name}: {e}", flush=True)
            traceback.print_exc()

    run("hf: copies of one prompt differ", lambda: check_copies_differ(HFEngine(model, tok)))
    run("hf: weight sync reaches the engine", lambda: check_hf_sync(model, tok))
    run("bf16 training step lowers the loss", lambda: check_bf16_step(device))
    hf_tps = 0.0

    def hf_speed() -> str:
        nonlocal hf_tps
        hf_tps, tokens = throughput(HFEngine(model, tok, batch_size=n_prompts), n_prompts, max_new_tokens)
        return f"{hf_tps:.0f} tok/s ({tokens} tokens, {n_prompts} prompts, {device})"

    run("hf: generation throughput", hf_speed)
    if args.cpu:
        print("SKIP vllm checks: --cpu (vLLM runs on CUDA only)")
    elif importlib.util.find_spec("vllm") is None:
        print("SKIP vllm checks: vllm is not installed (pip install -e '.[gpu]')")
    else:
        checks: list[tuple[str, Callable[[], str]]] = []
        run("vllm: engine builds", lambda: (checks.extend(
            check_vllm(model, tok, hw, hf_tps, n_prompts, max_new_tokens, args.min_speedup)) or "built"))
        for name, fn in checks:
            run(name, fn)
    print(f"{'FAILED' if failures else 'OK'}: {failures} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
