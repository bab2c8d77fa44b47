"""llamaguard_1b_int4 learns: on a reduced embedded default the trained guard ranks held-out items far above
chance, and the INT4 student stays close to it.

Reduced: two hazard categories, 320 items, the lexical part of the toy world only (compositional_fraction=0; the
word-order items need over 1,200 steps, far beyond a CI test's minute), 400 + 60 + 30 training steps. What this
run supports (measured on seeds 0 and 1): teacher AUPRC 0.79-0.83 against a prevalence of 0.40-0.47, student
F1 within 0.03 and AUPRC within 0.01 of the teacher. It does not support "teacher F1 > bag-of-words F1" (seed 0:
0.75 vs 0.65, seed 1: 0.65 vs 0.73); that claim, and the full default's 0.02 student margin, are checked over
seeds on the full default (REPRODUCTION.md).
"""

from __future__ import annotations

from runner.core.cli import run_recipe

REDUCED = ["run.progress=false", "dataset.num_examples=320", "dataset.params.categories=[S1,S2]",
           "algorithm.categories=[S1,S2]", "dataset.params.compositional_fraction=0", "algorithm.source_steps=400",
           "algorithm.distill_steps=60", "algorithm.qat_steps=30", "algorithm.checkpoint_every=100",
           "algorithm.calibration_batches=2", "algorithm.latency_repeats=1", "algorithm.latency_new_tokens=4"]


def test_guard_learns_and_int4_student_stays_close(tmp_path):
    r = run_recipe("llamaguard_1b_int4", REDUCED, run_dir=tmp_path)
    stages = r["stages"]
    teacher, student = stages["source"], stages[r["student"]["stage"]]
    prevalence = r["baselines"]["majority"]["all_unsafe_f1"]  # 2p / (1 + p) for prevalence p
    prevalence = prevalence / (2 - prevalence)
    assert teacher["auprc"] > prevalence + 0.25, (teacher["auprc"], prevalence)  # chance AUPRC = prevalence
    assert teacher["f1"] > r["baselines"]["majority"]["f1"]
    assert abs(student["f1"] - teacher["f1"]) <= 0.05, (student["f1"], teacher["f1"])
    assert abs(student["auprc"] - teacher["auprc"]) <= 0.03, (student["auprc"], teacher["auprc"])
    assert r["student"]["stage"] == "int4_output_pruned" and r["student"]["bytes"] < r["teacher"]["bytes"] / 4
