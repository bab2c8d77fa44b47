"""Kill -9 a fedbuff run mid-stage, resume it in the same run.dir: same results and metric log as a clean run.

The simulator checkpoints its whole state (clock, heap, in-flight clients, RNG, server) every
``checkpoint_every`` server steps, and finished stages are skipped, so the resumed run is exact.
"""

from __future__ import annotations

from tests.conftest import kill_runner_when, resume_and_compare

ARGS = ("+recipe=fedbuff", "run.smoke=true", "run.progress=false", "algorithm.checkpoint_every=5",
        "algorithm.max_client_updates=300")


def test_fedbuff_killed_mid_stage_resumes_to_the_same_results(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    stage = killed / "checkpoints" / "fedavgm"  # the second of three stages: one done, one mid-way
    kill_runner_when([*ARGS, f"run.dir={killed}"], (stage / "step_10.pt").exists)
    assert (killed / "checkpoints" / "fedbuff" / "done.json").exists()
    assert not (stage / "done.json").exists() and not (killed / "results.json").exists(), "killed mid-stage"

    a, b = resume_and_compare(ARGS, killed, clean)
    assert a["algorithms"] == b["algorithms"]
    assert (killed / "curves.json").read_text() == (clean / "curves.json").read_text()


def test_fedsynth_killed_mid_stage_resumes_to_the_same_results(tmp_path):
    """The update codecs draw their randomness from (seed, client, draw), so a FedSynth stage resumed from an
    in-simulation checkpoint learns the same synthetic sets and residual sketches as an uninterrupted one."""
    args = ("+recipe=fedsynth", "run.smoke=true", "run.progress=false", "algorithm.checkpoint_every=3",
            "algorithm.max_client_updates=160")
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    stage = killed / "checkpoints" / "fedsynth_m1"
    kill_runner_when([*args, f"run.dir={killed}"], (stage / "step_6.pt").exists)
    assert (killed / "checkpoints" / "full" / "done.json").exists() and not (stage / "done.json").exists()

    a, b = resume_and_compare(args, killed, clean)
    assert a["by_budget"] == b["by_budget"] and a["by_budget"]["75"]["fedsynth"]["server_steps"] > 6
