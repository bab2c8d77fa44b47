"""Kill -9 a fedbuff run mid-stage, resume it in the same run.dir: same results and metric log as a clean run.

The simulator checkpoints its whole state (clock, heap, in-flight clients, RNG, server) every
``checkpoint_every`` uploads, and finished stages are skipped, so the resumed run is exact.
"""

from __future__ import annotations

import json

from runner.core.report import comparable_results
from tests.conftest import kill_runner_when, run_cli

ARGS = ("+recipe=fedbuff", "run.smoke=true", "run.progress=false", "algorithm.checkpoint_every=25",
        "algorithm.max_client_updates=300")


def test_fedbuff_killed_mid_stage_resumes_to_the_same_results(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    stage = killed / "checkpoints" / "fedavgm"  # the second of three stages: one done, one mid-way
    kill_runner_when([*ARGS, f"run.dir={killed}"], (stage / "step_50.pt").exists)
    assert (killed / "checkpoints" / "fedbuff" / "done.json").exists()
    assert not (stage / "done.json").exists() and not (killed / "results.json").exists(), "killed mid-stage"

    resumed = run_cli(*ARGS, f"run.dir={killed}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    uninterrupted = run_cli(*ARGS, f"run.dir={clean}")
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    a = json.loads((killed / "results.json").read_text())
    b = json.loads((clean / "results.json").read_text())
    assert a["run"]["resumed"] is True and b["run"]["resumed"] is False
    assert comparable_results(a) == comparable_results(b) and a["algorithms"] == b["algorithms"]
    assert (killed / "metrics.jsonl").read_text() == (clean / "metrics.jsonl").read_text()
    assert (killed / "curves.json").read_text() == (clean / "curves.json").read_text()
