#!/usr/bin/env bash
# GPU checks that fail (run from anywhere; exits non-zero on any failed check):
#   scripts/gpu_check.sh         on a machine with an NVIDIA GPU: installs the gpu extra (vLLM) into .venv-gpu,
#                                runs scripts/gpu_check.py (copies of a prompt differ, weight sync reaches the
#                                engine, a bf16 step lowers the loss, hf throughput, vLLM >= 5x hf), then a bf16
#                                smoke run of the runner on cuda
#   scripts/gpu_check.sh --cpu   degraded local sanity check with .venv: the GPU-only checks are skipped, saying why
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [[ "${1:-}" == "--cpu" ]]; then
  exec "${PYTHON:-.venv/bin/python}" scripts/gpu_check.py --cpu
fi
PY=${PYTHON:-python3}
[[ -x .venv-gpu/bin/python ]] || "$PY" -m venv .venv-gpu
.venv-gpu/bin/python -m pip install -q -e ".[gpu,dev]"
.venv-gpu/bin/python scripts/gpu_check.py
.venv-gpu/bin/python -m runner +recipe=smoke hardware=gpu1 hardware.rollout_engine=hf run.smoke=true
echo "GPU checks passed"
