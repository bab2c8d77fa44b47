"""llamaguard_1b_int4 on a reduced run: two runs of one seed give identical results, and a run killed with
SIGKILL in the middle of a training stage and resumed in its run dir ends with the uninterrupted results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.core.cli import run_recipe
from runner.core.report import comparable_results
from tests.conftest import kill_runner_when, logged_records, run_cli

REDUCED = ["run.smoke=true", "run.progress=false", "algorithm.source_steps=24", "algorithm.distill_steps=12",
           "algorithm.qat_steps=12", "algorithm.checkpoint_every=4", "algorithm.export_pte=false"]


def _stage_steps(path: Path, stage: str) -> list[int]:
    """Steps of ``stage`` logged so far by a running process."""
    return [r["step"] for r in logged_records(path) if r.get("stage") == stage]


def _training_records(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r.get("stage") in ("source", "distill", "qat")]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("uninterrupted")
    run_recipe("llamaguard_1b_int4", REDUCED, run_dir=d)
    return d


def test_same_seed_gives_identical_results(uninterrupted, tmp_path):
    # a fresh process with another hash seed: nothing may depend on python's str hash or on process state
    proc = run_cli("+recipe=llamaguard_1b_int4", f"run.dir={tmp_path}", *REDUCED, env={"PYTHONHASHSEED": "123"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((d / "results.json").read_text()) for d in (uninterrupted, tmp_path))
    assert comparable_results(a) == comparable_results(b)
    assert "stages.int4_output_pruned.f1" in comparable_results(a)
    assert "stages.int4.ttft_s" not in comparable_results(a)


@pytest.mark.parametrize("stage,kill_after,row", [("source", 10, "source"), ("distill", 6, "distilled"),
                                                  ("qat", 6, "int4")])
def test_sigkilled_run_resumes_to_the_uninterrupted_results(uninterrupted, tmp_path, stage, kill_after, row):
    # kill it after step `kill_after` of the stage is logged: its newest checkpoint is an earlier step
    kill_runner_when(["+recipe=llamaguard_1b_int4", f"run.dir={tmp_path}", *REDUCED],
                     lambda: any(s >= kill_after for s in _stage_steps(tmp_path / "metrics.jsonl", stage)))
    assert not (tmp_path / "results.json").exists()
    assert not (tmp_path / "checkpoints" / row / "done.json").exists()  # killed inside the stage

    resumed = run_recipe("llamaguard_1b_int4", REDUCED, run_dir=tmp_path)
    assert resumed["run"]["resumed"] is True
    base = json.loads((uninterrupted / "results.json").read_text())
    assert comparable_results(resumed) == comparable_results(base)  # every stage's F1, AUPRC, bytes, baselines
    # the training losses after the resume are the uninterrupted ones, each step logged once
    assert _training_records(tmp_path / "metrics.jsonl") == _training_records(uninterrupted / "metrics.jsonl")
