"""Benchmarks as dataset options: `dataset=NAME dataset.path=FILE` loads the published file through the recipes'
data path with the hand-counted rows and labels (tests/fixtures/benchmarks/README.md), for the safety recipes and
guard_eval; two recipe runs end to end report `data.<dataset>.rows` and per-dataset ASR / ORR."""

import json
from pathlib import Path

import pytest

from runner.core.cli import compose_recipe, run_recipe
from runner.data.moderation import load_moderation
from runner.safety.common import prompt_sets
from tests.fixtures.benchmarks import FIX, FIXTURES

CONF = Path(__file__).resolve().parents[2] / "conf" / "dataset"
SAFETY = ["algorithm.warm_start.steps=0", "algorithm.judge.name=refusal_string"]
BENCHMARKS = [n for n in FIXTURES if not n.startswith("moderation_")]


@pytest.mark.parametrize("option", BENCHMARKS)
def test_safety_recipe_loads_the_published_file(option):
    fixture, rows, records, harmful = FIXTURES[option]
    cfg = compose_recipe("safety_eval", [f"dataset={option}", f"dataset.path={FIX / fixture}", *SAFETY])
    sets = prompt_sets(cfg.dataset, cfg.seed)
    (name, recs), = sets.eval.items()
    info = sets.extra["data"][name]
    assert (info["rows"], info["records"], info["harmful"], info["benign"]) == (rows, records, harmful,
                                                                              records - harmful)
    assert len(recs) == info["used"] == records and sum(r.harmful for r in recs) == harmful
    assert info["path"] == str(FIX / fixture)


@pytest.mark.parametrize("option", [n for n in FIXTURES if not n.startswith("or_bench")])  # one-sided: no guard task
def test_guard_recipe_loads_the_published_file(option):
    fixture, rows, records, harmful = FIXTURES[option]
    cfg = compose_recipe("guard_eval", [f"dataset={option}", f"dataset.path={FIX / fixture}", "run.smoke=true"])
    info: dict = {}
    examples = load_moderation(cfg.dataset, cfg.seed, info)
    assert len(examples) == records and sum(e.unsafe for e in examples) == harmful  # smoke keeps 100 ≥ records
    (entry,) = info.values()
    assert (entry["rows"], entry["harmful"]) == (rows, harmful)


def test_num_examples_is_a_seeded_subset_and_rows_stay_the_file_count():
    path = FIX / "xstest_prompts.csv"
    sets = [prompt_sets(compose_recipe("safety_eval", ["dataset=xstest", f"dataset.path={path}",
                                                       "dataset.num_examples=6", f"seed={s}", *SAFETY]).dataset, s)
            for s in (0, 0, 1)]
    assert [len(s.eval["xstest"]) for s in sets] == [6, 6, 6]
    assert sets[0].eval["xstest"] == sets[1].eval["xstest"] != sets[2].eval["xstest"]
    assert sets[0].extra["data"]["xstest"]["rows"] == 16 and sets[0].extra["data"]["xstest"]["used"] == 6


def test_dataset_path_overrides_every_file_option_without_plus():
    for yaml in sorted(CONF.glob("*.yaml")):
        text = yaml.read_text()
        if "\nsource: builtin" in text or "\neval:" in text and "${dataset.path}" not in text:
            continue  # generated data; the paper options take a path per benchmark: dataset.eval.N.path=FILE
        assert "\npath:" in text, f"{yaml.name} has no `path` key: dataset.path=FILE would need a '+'"


def test_paper_option_takes_a_path_per_benchmark():
    cfg = compose_recipe("safety_eval", ["dataset=safety_eval_paper", *SAFETY,
                                         f"dataset.eval.4.path={FIX / 'xstest_v2_prompts.csv'}",
                                         f"dataset.eval.2.path={FIX / 'strongreject_dataset.csv'}"])
    assert cfg.dataset.eval[4].loader == "xstest" and cfg.dataset.eval[2].loader == "strongreject"
    from runner.data.preflight import data_files

    assert [p for _, p in data_files(cfg.dataset)] == [str(FIX / "strongreject_dataset.csv"),
                                                        str(FIX / "xstest_v2_prompts.csv")]


def test_safety_eval_on_xstest_reports_rows_and_refusal_rates(tmp_path):
    results = run_recipe("safety_eval", ["dataset=xstest", f"dataset.path={FIX / 'xstest_v2_prompts.csv'}",
                                         "run.smoke=true", "run.progress=false", *SAFETY], run_dir=tmp_path)
    assert results["data"]["xstest"]["rows"] == 16 and results["data"]["xstest"]["harmful"] == 5
    per = results["systems"]["base"]["per_dataset"]["xstest"]
    assert (per["n_harmful"], per["n_benign"]) == (5, 11)
    rows = [json.loads(line) for line in (tmp_path / "responses_base.jsonl").read_text().splitlines()]
    refused = [r["refusal"] for r in rows if r["harmful"]]
    assert per["asr"] is None  # refusal_string judges refusals only: the ASR is the labelled non-refusal rate
    assert per["refusal_rate_harmful"] == pytest.approx(sum(refused) / len(refused))
    assert per["asr_nonrefusal"] == pytest.approx(1 - per["refusal_rate_harmful"])
    benign = [r["refusal"] for r in rows if not r["harmful"]]
    assert per["orr"] == pytest.approx(sum(benign) / len(benign))


def test_guard_eval_smoke_on_the_published_openai_sample(tmp_path):
    results = run_recipe("guard_eval", ["dataset=moderation_openai", f"dataset.path={FIX / 'samples-1680.jsonl.gz'}",
                                        "run.smoke=true", "run.progress=false"], run_dir=tmp_path)
    assert results["data"]["moderation_openai"]["rows"] == 12 and results["data"]["moderation_openai"]["harmful"] == 7
    assert results["num_train"] + results["num_test"] == 12


def test_the_short_command_line_runs_a_tiny_policy_judged_by_refusal_strings(tmp_path):
    """`+recipe=safety_eval dataset=xstest dataset.path=FILE` needs nothing more: the `auto` judge is the refusal-string
    judge on a benchmark file and the tiny policy is warm-started on the default toy world's corpus."""
    results = run_recipe("safety_eval", ["dataset=xstest", f"dataset.path={FIX / 'xstest_prompts.csv'}",
                                         "run.smoke=true", "run.progress=false"], run_dir=tmp_path)
    assert results["judge"] == "refusal_string" and results["data"]["xstest"]["rows"] == 16
    assert (tmp_path / "checkpoints").exists()  # the warm start ran
    per = results["systems"]["base"]["per_dataset"]["xstest"]
    assert per["asr"] is None and per["asr_nonrefusal"] == pytest.approx(1 - per["refusal_rate_harmful"])
