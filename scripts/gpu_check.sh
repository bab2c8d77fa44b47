#!/usr/bin/env bash
# GPU checks in one go, for a machine with an NVIDIA GPU (run from the repository root):
# installs the gpu extra into a fresh venv if needed, then exercises the GPU-only paths:
# the vllm rollout engine (generate + weight update) and a bf16 smoke run on cuda.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[[ -x .venv-gpu/bin/python ]] || "$PY" -m venv .venv-gpu
.venv-gpu/bin/python -m pip install -q -e ".[gpu,dev]"
export PYTHONUNBUFFERED=1
.venv-gpu/bin/python - <<'PY'
import torch
from runner.core.cli import compose_recipe
from runner.models.builder import build_model_and_tokenizer
from runner.rollout import SamplingParams, build_engine

assert torch.cuda.is_available(), "no CUDA device"
# head_dim 64: a size every vLLM attention backend supports
cfg = compose_recipe("smoke", ["hardware=gpu1", "model.hidden_size=128", "model.num_heads=2", "model.num_kv_heads=1"])
model, tok = build_model_and_tokenizer(cfg.model, cfg.hardware)
out = "/tmp/runner_gpu_check_model"
model.save_pretrained(out)
tok.save_pretrained(out)
model.name_or_path = out
engine = build_engine("vllm", model, tok, cfg.hardware, seed=0)
p = SamplingParams(max_new_tokens=16, temperature=0.0)
before = engine.generate(["the cat"], p)[0].token_ids
with torch.no_grad():
    for w in model.parameters():
        w.mul_(0.5)
engine.update_weights(model)
after = engine.generate(["the cat"], p)[0].token_ids
print("vllm generate ok:", before, "| after weight update:", after)
PY
.venv-gpu/bin/python -m runner +recipe=smoke hardware=gpu1 hardware.rollout_engine=hf run.smoke=true
echo "GPU checks passed"
