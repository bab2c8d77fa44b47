#!/usr/bin/env bash
# Run every recipe that declares claims over seeds 0-4 and write REPRODUCTION.md (hours on 2 cores; run it
# before a release, not in CI). Arguments pass through: --recipes a,b --seeds 0,1 --extra run.smoke=true ...
# Rebuild the report without rerunning: scripts/reproduce.sh --from-sweeps outputs/reproduce/<stamp>/*/
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
exec .venv/bin/python -m runner.reproduce "$@"
