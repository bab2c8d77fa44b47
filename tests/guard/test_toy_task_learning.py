"""llamaguard_1b_int4 learns: on a reduced embedded default the trained guard ranks held-out items far above
chance, the INT4 student loses at most 0.02 F1 against it (the recipe's claim student_close_to_teacher), and its
ExecuTorch program, run from the file, scores within 0.01 F1 of it.

Reduced: two hazard categories, 960 items (720 train, 240 held out), the lexical part of the toy world only
(compositional_fraction=0; the word-order items need over 1,200 steps, far beyond a CI test's minute), 400 + 60 + 30
training steps. Measured at this commit, seed 0 (the test's): teacher F1 0.81 / AUPRC 0.89 against a prevalence of
0.38, student F1 0.81 / AUPRC 0.92. Not seed-proof: 400 steps are near the end of the tiny guard's all-'safe'
plateau, and seed 1 is still on it (teacher F1 0.54, student 0.50: this test fails there; at lr 2e-2 seed 1 passes
and seed 0 stays on the plateau). The claim over seeds is checked on the full default (REPRODUCTION.md), as is
"teacher F1 > bag-of-words F1", which lexical items alone do not support (seed 0: 0.81 vs 0.76, seed 1: 0.54 vs
0.82).
"""

from __future__ import annotations

from runner.core.cli import run_recipe

REDUCED = ["run.progress=false", "dataset.num_examples=960", "dataset.params.categories=[S1,S2]",
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
    # the recipe's claim student_close_to_teacher: pruning, distillation, INT4 and output pruning lose <= 0.02
    assert student["f1"] >= teacher["f1"] - 0.02, (student["f1"], teacher["f1"])
    assert student["auprc"] >= teacher["auprc"] - 0.05, (student["auprc"], teacher["auprc"])  # ranking: looser
    assert r["student"]["stage"] == "int4_output_pruned" and r["student"]["bytes"] < r["teacher"]["bytes"] / 4
    # the deployable artifact: the .pte run in the ExecuTorch runtime scores the test set like the in-memory model
    assert (tmp_path / "export" / "guard_int4.pte").stat().st_size == student["pte_bytes"]
    assert abs(student["f1_pte"] - student["f1"]) <= 0.01 and student["agreement"] >= 0.98, student
    assert abs(student["auprc_pte"] - student["auprc"]) <= 0.01, student
