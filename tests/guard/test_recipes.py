"""The guard recipes compose, validate and run end to end in a smoke setting; the pipeline resumes."""

from __future__ import annotations

import json

import pytest

from runner.core.cli import compose_recipe, run_recipe
from runner.core.errors import ConfigError


def test_recipes_compose_with_paper_scale_values():
    cfg = compose_recipe("llamaguard_1b_int4_paper")
    assert cfg.model.hf_id == "meta-llama/Llama-Guard-3-1B"
    assert cfg.algorithm.teacher_hf_id == "meta-llama/Llama-Guard-3-8B"
    assert (cfg.algorithm.keep_layers, cfg.algorithm.mlp_size, cfg.algorithm.group_size) == (12, 6400, 256)
    assert list(cfg.algorithm.categories) == [f"S{i}" for i in range(1, 14)]
    assert compose_recipe("guard_eval", ["model=llama_guard_3_8b"]).model.hf_id == "meta-llama/Llama-Guard-3-8B"
    assert compose_recipe("llamaguard_1b_int4").model.name == "tiny_guard"


@pytest.mark.parametrize("override,key", [
    ("algorithm.mlp_size=200", "algorithm.mlp_size"),
    ("algorithm.keep_layers=9", "algorithm.keep_layers"),
    ("algorithm.categories=[S1,S15]", "algorithm.categories"),
    ("algorithm.distill_ratio=1.5", "algorithm.distill_ratio"),
    ("algorithm.bogus=1", "algorithm.bogus"),
])
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose_recipe("llamaguard_1b_int4", [override])


SMOKE = ["run.smoke=true", "run.progress=false"]
NO_PTE = ["algorithm.export_pte=false"]  # the ExecuTorch export is tested in test_export and test_toy_task_learning


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke run of the pipeline, shared by the stage-table and resume tests (the resume test runs last)."""
    run_dir = tmp_path_factory.mktemp("llamaguard_1b_int4")
    return run_dir, run_recipe("llamaguard_1b_int4", SMOKE + NO_PTE, run_dir=run_dir)


def test_llamaguard_1b_int4_smoke_stage_table(smoke_run):
    run_dir, r = smoke_run
    stages = r["stages"]
    assert list(stages) == ["source", "pruned", "distilled", "int4", "int4_output_pruned"]
    for row in stages.values():
        assert {"params", "bytes", "f1", "fpr", "ttft_s", "decode_tokens_per_s"} <= set(row)
    assert stages["pruned"]["params"] < stages["source"]["params"]
    assert stages["int4"]["bytes"] < stages["distilled"]["bytes"] / 2
    assert stages["int4_output_pruned"]["bytes"] < stages["int4"]["bytes"]
    assert r["compression_ratio_vs_fp32_source"] == pytest.approx(stages["source"]["bytes"] /
                                                                  stages["int4_output_pruned"]["bytes"])
    assert "pte_bytes" not in stages["int4_output_pruned"] and not (run_dir / "export").exists()
    assert len(r["kept_blocks"]) == 1


def test_llamaguard_1b_int4_resume_rebuilds_last_stage(smoke_run):
    run_dir, r = smoke_run
    stages = r["stages"]
    # resume: drop the last stage's marker; the re-run rebuilds it from the QAT checkpoint and gets the same row
    (run_dir / "checkpoints" / "int4_output_pruned" / "done.json").unlink()
    again = run_recipe("llamaguard_1b_int4", SMOKE + NO_PTE, run_dir=run_dir)
    assert again["run"]["resumed"]
    for key in ("params", "bytes", "f1", "fpr", "auprc"):
        assert again["stages"]["int4_output_pruned"][key] == stages["int4_output_pruned"][key]
    assert json.loads((run_dir / "results.json").read_text())["f1_gap"] == r["f1_gap"]


def test_guard_eval_smoke(tmp_path):
    r = run_recipe("guard_eval", SMOKE, run_dir=tmp_path)
    m = r["metrics"]
    assert m["n"] == r["num_test"] and 0.0 <= m["f1"] <= 1.0 and 0.0 <= m["auprc"] <= 1.0
    # the toy world's six codes; its prompts fit the tiny guard's context; answers carry codes
    assert r["info"]["categories"] == ["S1", "S2", "S9", "S10", "S11", "S12"] and r["info"]["categories_expected"]
    assert r["info"]["truncated"] == m["truncated"] == 0 and r["info"]["prompt_wrap"] == "chat_template"
    assert len(r["threshold_curves"]["f1"]) == 21
    assert (tmp_path / "threshold_curves.png").exists()
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == r["num_test"] and "p_unsafe" in json.loads(lines[0])


def test_guard_eval_trains_and_tests_on_disjoint_toy_items():
    """guard_eval uses the toy world's held-out split (as the compression pipeline does), never a random one."""
    from runner.data.moderation import guard_split, load_moderation

    cfg = compose_recipe("guard_eval", ["run.smoke=true"])
    examples = load_moderation(cfg.dataset, cfg.seed)
    train, test = guard_split(examples, cfg.dataset, cfg.algorithm.test_fraction, cfg.seed)
    assert train and test and len(train) + len(test) == len(examples)
    assert not {(e.prompt, e.response) for e in train} & {(e.prompt, e.response) for e in test}
    assert {e.source for e in test} == {"toy-heldout"}
