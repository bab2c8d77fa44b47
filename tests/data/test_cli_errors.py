"""Data errors are configuration errors: `python -m runner` exits 2 with one line naming file, line and column,
before any run directory exists; a run that failed before its first checkpoint does not block a rerun."""

import shutil
from pathlib import Path

import pytest

from tests.conftest import run_cli

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"
SAFETY = ["+recipe=safety_eval", "algorithm.warm_start.steps=0", "algorithm.judge.name=refusal_string"]
GUARD = ["+recipe=guard_eval", "run.smoke=true"]


def _cut(src: str, marker: str) -> bytes:
    """The fixture cut right after the first occurrence of ``marker`` (as a partial download would be)."""
    data = (FIX / src).read_bytes()
    return data[:data.index(marker.encode()) + len(marker)]


# name → (recipe args, file name, content (None: no file), expected message after "config error: FILE")
CASES = {
    "missing": (SAFETY + ["dataset=xstest"], "xstest_prompts.csv", None, ": no such file"),
    "empty": (SAFETY + ["dataset=strongreject"], "strongreject_dataset.csv", b"", ":1: the file is empty"),
    "binary": (GUARD + ["dataset=moderation_toxicchat"], "toxicchat.csv",
               (FIX / "fortress_public.parquet").read_bytes(), ":1: a NUL byte: this is a binary file"),
    "cut_in_quotes": (SAFETY + ["dataset=harmbench"], "harmbench_behaviors_text_all.csv",
                      _cut("harmbench_behaviors_text_all.csv", "took place on 13 April"),
                      ":8: column ContextString: a quoted field is never closed"),
    "cut_mid_row": (SAFETY + ["dataset=xstest"], "xstest_prompts.csv",
                    _cut("xstest_prompts.csv", "How do I kill time at"),
                    ":9: column type: missing: the row has 2 of the header's 6 fields"),
    "truncated_jsonl": (GUARD + ["dataset=moderation_openai"], "samples-1680.jsonl",
                        _cut("samples-1680.jsonl", '"Those people are'), ":3: not a complete JSON object"),
    "wrong_benchmark": (GUARD + ["dataset=moderation_openai"], "xstest_prompts.csv",
                        (FIX / "xstest_prompts.csv").read_bytes(), ":1: column S: missing; openai_moderation files"),
    "bad_label": (SAFETY + ["dataset=xstest"], "xstest_prompts.csv",
                  (FIX / "xstest_prompts.csv").read_bytes().replace(b",unsafe,", b",maybe,", 1),
                  ":7: column label: value 'maybe' is not one of safe, unsafe"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_exits_2_before_any_output(tmp_path, case):
    args, name, content, expected = CASES[case]
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    run_dir = tmp_path / "run"
    proc = run_cli(*args, f"dataset.path={path}", f"run.dir={run_dir}", timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) <= 3 and "Traceback" not in proc.stderr
    assert lines[-1].startswith(f"config error: {path}{expected}"), lines
    assert not run_dir.exists()


def test_published_file_passes_preflight_where_the_broken_one_failed(tmp_path):
    shutil.copy(FIX / "xstest_prompts.csv", tmp_path / "xstest_prompts.csv")
    proc = run_cli(*SAFETY, "dataset=xstest", f"dataset.path={tmp_path / 'xstest_prompts.csv'}", "--cfg", "job",
                   timeout=120)
    assert proc.returncode == 0 and "xstest_prompts.csv" in proc.stdout


def test_late_model_error_exits_2_and_does_not_block_the_rerun(tmp_path):
    from runner.core.cli import compose_recipe
    from runner.core.context import check_resumable

    weights = tmp_path / "weights"
    weights.mkdir()  # exists (preflight passes), holds no tokenizer: found only when the run loads it
    run_dir = tmp_path / "run"
    proc = run_cli("+recipe=guard_eval", "model=llama_guard_3_1b", f"model.path={weights}", "dataset.num_examples=20",
                   f"run.dir={run_dir}", timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) <= 3 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[-1].startswith("config error: could not load the tokenizer") and "model.path" in lines[-1]
    assert (run_dir / "run_config.yaml").exists() and not (run_dir / "checkpoints").exists()
    rerun = compose_recipe("guard_eval", ["run.smoke=true", f"run.dir={run_dir}"])  # another config, same dir
    assert check_resumable(rerun, run_dir) is False


def test_missing_model_path_is_a_preflight_error(tmp_path):
    proc = run_cli("+recipe=guard_eval", "model=llama_guard_3_1b", f"model.path={tmp_path / 'nope'}",
                   f"run.dir={tmp_path / 'run'}", timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"config error: model.path {tmp_path / 'nope'} does not exist (local weights expected there)")
    assert not (tmp_path / "run").exists()
