#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv. Idempotent: does nothing when
# .venv already matches pyproject.toml. torch==2.13.0 (CPU wheel) is installed first so that pip never
# pulls a multi-GB CUDA build; GPU users install their own torch and then `pip install -e '.[gpu]'`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.runner-env-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ -x .venv/bin/python && -f $stamp && "$(cat $stamp)" == "$want" ]]; then
  exit 0
fi
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
.venv/bin/python -c "import torch" 2>/dev/null || quiet .venv/bin/python -m pip install -q "torch==2.13.0"
quiet .venv/bin/python -m pip install -q -e ".[dev,deploy,dist]"
quiet .venv/bin/python -m pip install -q --no-deps "nanogcg==0.3.0"  # GCG; its pins predate transformers 5
echo "$want" > "$stamp"
