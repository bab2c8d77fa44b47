"""llamaguard_1b_int4 learns: on a reduced embedded default, the trained guard beats the bag-of-words baseline
and chance on held-out phrasings, and the INT4 student stays close to it.

Reduced: two hazard categories, 320 items, the lexical part of the toy world only (compositional_fraction=0; the
word-order items need ~1,200 steps, far beyond a CI test's minute), 400 + 60 + 30 training steps. Even so, the
held-out openers and target words keep the bag of words below the guard. The reduced run supports a student
margin of 0.05 (measured gaps 0.03 and below); the full default's 0.02 is checked over seeds by REPRODUCTION.md.
"""

from __future__ import annotations

from runner.core.cli import run_recipe

REDUCED = ["run.progress=false", "dataset.num_examples=320", "dataset.params.categories=[S1,S2]",
           "algorithm.categories=[S1,S2]", "dataset.params.compositional_fraction=0", "algorithm.source_steps=400",
           "algorithm.distill_steps=60", "algorithm.qat_steps=30", "algorithm.checkpoint_every=100",
           "algorithm.calibration_batches=2", "algorithm.latency_repeats=1", "algorithm.latency_new_tokens=4"]


def test_guard_beats_bag_of_words_and_int4_student_stays_close(tmp_path):
    r = run_recipe("llamaguard_1b_int4", REDUCED, run_dir=tmp_path)
    teacher, student, base = r["teacher"]["f1"], r["student"]["f1"], r["baselines"]
    chance = base["majority"]["all_unsafe_f1"]  # the better of the two constant predictions
    assert teacher > base["bow"]["f1"] + 0.03, (teacher, base["bow"])
    assert teacher > chance + 0.1, (teacher, chance)
    assert abs(student - teacher) <= 0.05, (student, teacher)
    assert r["student"]["stage"] == "int4_output_pruned" and r["student"]["bytes"] < r["teacher"]["bytes"] / 4
