"""Same seed, same machine, same thread settings → identical results.json (less provenance and timing)."""

from __future__ import annotations

import json

import pytest

from runner.core.cli import run_recipe
from runner.core.report import comparable_results, is_provenance_key
from tests.conftest import run_cli

SMALL = ["run.smoke=true", "algorithm.steps=24", "algorithm.warmup_steps=2", "algorithm.eval_every=12",
         "algorithm.checkpoint_every=12", "algorithm.eval_batches=2", "run.progress=false"]


@pytest.mark.parametrize(("key", "provenance"), [
    ("run.wall_seconds", True), ("run.dir", True), ("run.resumed", True), ("timing.total_s", True),
    ("waltzrl.timing.stage1_s", True), ("models.latent_logit.seconds", True), ("solvers.cvxpy.solve_seconds", True),
    ("solvers.cvxpy.seconds_with_compile", True), ("stages.int4.ttft_s", True),
    ("stages.int4.decode_tokens_per_s", True), ("solvers.speedup_fista_vs_cvxpy", True),
    # computed quantities, simulated time included, are compared
    ("by_concurrency.10.speedup", False), ("fedbuff.time_to_target", False), ("trained.asr", False),
    ("eval_loss", False), ("claims.asr_down", False), ("steps", False),
])
def test_provenance_keys(key, provenance):
    assert is_provenance_key(key) is provenance


def test_same_seed_gives_identical_results_and_another_seed_does_not(tmp_path):
    proc = run_cli("+recipe=smoke", f"run.dir={tmp_path / 'a'}", *SMALL)  # a fresh process
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_recipe("smoke", SMALL, run_dir=tmp_path / "b")  # and this one
    run_recipe("smoke", [*SMALL, "seed=1"], run_dir=tmp_path / "c")
    a, b, c = (json.loads((tmp_path / d / "results.json").read_text()) for d in "abc")
    assert a["run"]["dir"] != b["run"]["dir"]  # provenance differs ...
    assert comparable_results(a) == comparable_results(b)  # ... what was computed does not, to the last bit
    assert "eval_loss" in comparable_results(a) and "run.dir" not in comparable_results(a)
    differ = {k for k, v in comparable_results(a).items() if comparable_results(c).get(k) != v}
    assert {"eval_loss", "train_loss_first", "train_loss_last"} <= differ
