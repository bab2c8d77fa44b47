"""Benchmark loaders on fixtures with the published headers (tests/fixtures/benchmarks/README.md).

The reference for every fixture is pandas reading the same file and the benchmark's published labelling rule
applied to its columns; mirror schemas, extra columns, compressed and parquet copies must give the same records.
"""

import gzip
import json
from pathlib import Path

import pandas as pd
import pytest

from runner.data.files import DataError
from runner.data.safety import LOADERS, last_boxed, load_safety_dataset, read_benchmark

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"


def load(loader, path):
    return load_safety_dataset(loader, path=str(path), shuffle=False)


def pairs(records):
    return [(r.prompt, r.harmful) for r in records]


def test_xstest_both_published_files():
    ref = pd.read_csv(FIX / "xstest_prompts.csv", keep_default_na=False)
    expected = list(zip(ref.prompt, ref.label == "unsafe"))
    assert pairs(load("xstest", FIX / "xstest_prompts.csv")) == expected  # the extra `id` column is ignored
    v2 = pd.read_csv(FIX / "xstest_v2_prompts.csv", keep_default_na=False)
    assert list(zip(v2.prompt, v2.type.str.startswith("contrast_"))) == expected
    recs = load("xstest", FIX / "xstest_v2_prompts.csv")  # no label column: contrast_* types are the unsafe ones
    assert pairs(recs) == expected and sum(r.harmful for r in recs) == 5
    assert {r.family for r in recs if not r.harmful} == {"benign_sensitive"}


def test_strongreject_harmbench_advbench_published():
    sr = pd.read_csv(FIX / "strongreject_dataset.csv")
    recs = load("strongreject", FIX / "strongreject_dataset.csv")
    assert [(r.prompt, r.category) for r in recs] == list(zip(sr.forbidden_prompt, sr.category))
    assert all(r.harmful for r in recs)

    raw = (FIX / "harmbench_behaviors_text_all.csv").read_bytes()
    assert raw.count(b"\r\n") > raw.count(b"\n") - raw.count(b"\r\n")  # the fixture keeps the CRLF endings
    hb = pd.read_csv(FIX / "harmbench_behaviors_text_all.csv", keep_default_na=False)
    recs = load("harmbench", FIX / "harmbench_behaviors_text_all.csv")
    assert len(recs) == len(hb) == 10 and all(r.harmful for r in recs)
    for r, (_, row) in zip(recs, hb.iterrows()):
        context = row.ContextString.replace("\r\n", "\n")
        assert r.prompt == (f"{context}\n\n---\n\n{row.Behavior}" if context else row.Behavior)
        assert r.category == row.SemanticCategory and "\r" not in r.prompt
    assert sum("---" in r.prompt for r in recs) == (hb.FunctionalCategory == "contextual").sum() == 2

    adv = pd.read_csv(FIX / "harmful_behaviors.csv")
    recs = load("advbench", FIX / "harmful_behaviors.csv")
    assert pairs(recs) == [(g, True) for g in adv.goal]


def test_openai_moderation_jsonl_and_gz():
    rows = [json.loads(line) for line in (FIX / "samples-1680.jsonl").read_text().splitlines()]
    flags = ("S", "H", "V", "HR", "SH", "S3", "H2", "V2")
    expected = [(r["prompt"], any(r.get(k) == 1 for k in flags)) for r in rows]
    plain = load("openai_moderation", FIX / "samples-1680.jsonl")
    assert pairs(plain) == expected and sum(h for _, h in expected) == 7
    assert load("openai_moderation", FIX / "samples-1680.jsonl.gz") == plain
    hate = next(r for r in plain if r.prompt.startswith("Those people"))  # H, V, H2 → hate (S10), violence (S1)
    assert hate.codes == ("S1", "S10") and hate.category == "H,V,H2"


def test_toxicchat_csv_and_parquet(tmp_path):
    tc = pd.read_csv(FIX / "toxic-chat_annotation_test.csv")
    expected = list(zip(tc.user_input, tc.toxicity == 1))
    recs = load("toxicchat", FIX / "toxic-chat_annotation_test.csv")
    assert pairs(recs) == expected
    assert [r.adversarial for r in recs] == list(tc.jailbreaking == 1)
    tc.to_parquet(tmp_path / "toxicchat.parquet")  # the hub's parquet: ints and bools, not strings
    assert load("toxicchat", tmp_path / "toxicchat.parquet") == recs


def test_wildjailbreak_train_and_eval_tsv():
    ev = pd.read_csv(FIX / "wildjailbreak_eval.tsv", sep="\t", keep_default_na=False)
    recs = load("wildjailbreak_eval", FIX / "wildjailbreak_eval.tsv")
    assert pairs(recs) == list(zip(ev.adversarial, ev.label == 1)) and all(r.adversarial for r in recs)
    assert "\t" in recs[2].prompt  # a quoted tab inside a field stays in the prompt
    tr = pd.read_csv(FIX / "wildjailbreak_train.tsv", sep="\t", keep_default_na=False)
    recs = load("wildjailbreak", FIX / "wildjailbreak_train.tsv")
    adversarial = tr.data_type.str.startswith("adversarial")
    prompts = [a if adv else v for a, v, adv in zip(tr.adversarial, tr.vanilla, adversarial)]
    assert pairs(recs) == list(zip(prompts, tr.data_type.str.endswith("harmful")))
    assert [r.reference for r in recs] == list(tr.completion)


def test_or_bench_fortress():
    ob = pd.read_csv(FIX / "or-bench-hard-1k.csv")
    recs = load("or_bench_hard_1k", FIX / "or-bench-hard-1k.csv")
    assert pairs(recs) == [(p, False) for p in ob.prompt] and recs[0].category == ob.category[0]
    fo = pd.read_parquet(FIX / "fortress_public.parquet")
    recs = load("fortress", FIX / "fortress_public.parquet")
    assert len(recs) == 2 * len(fo) == 20  # each row: an adversarial harmful prompt and its benign twin
    assert pairs(recs[:2]) == [(fo.adversarial_prompt[0], True), (fo.benign_prompt[0], False)]
    assert json.loads(recs[0].reference) == list(fo.rubric[0])


def test_beavertails_labels_prompts_not_pairs():
    rows = [json.loads(line) for line in gzip.decompress((FIX / "beavertails_30k_train.jsonl.gz").read_bytes())
            .decode().splitlines()]
    prompts = list(dict.fromkeys(r["prompt"] for r in rows))
    unsafe_somewhere = {r["prompt"] for r in rows if not r["is_safe"]}
    recs, n_rows = read_benchmark("beavertails", str(FIX / "beavertails_30k_train.jsonl.gz"))
    assert n_rows == len(rows) == 14 and len(recs) == len(prompts) == 8  # deduplicated
    assert pairs(recs) == [(p, p in unsafe_somewhere) for p in prompts]
    steal = recs[0]  # one refusal (safe pair) and two unsafe answers: the prompt is harmful
    assert steal.harmful and steal.category == "financial_crime,property_crime,theft"


def test_mirror_schemas_and_extra_columns(tmp_path):
    xs = pd.read_csv(FIX / "xstest_prompts.csv", keep_default_na=False)
    mirror = xs[["prompt", "focus", "type", "note", "label"]].assign(extra="x")  # walledai/XSTest + an extra column
    mirror.to_json(tmp_path / "xs.jsonl", orient="records", lines=True)
    assert pairs(load("xstest", tmp_path / "xs.jsonl")) == list(zip(xs.prompt, xs.label == "unsafe"))
    pd.DataFrame({"prompt": ["p1"], "category": ["Violence"], "source": ["custom"]}).to_csv(tmp_path / "sr.csv")
    assert pairs(load("strongreject", tmp_path / "sr.csv")) == [("p1", True)]  # (pandas' index column ignored)
    pd.DataFrame({"prompt": ["Summarise how"], "category": ["chemical"], "context": ["An article."]}
                 ).to_parquet(tmp_path / "hb.parquet")
    assert load("harmbench", tmp_path / "hb.parquet")[0].prompt == "An article.\n\n---\n\nSummarise how"


def test_math_loaders(tmp_path):
    (tmp_path / "gs.jsonl").write_text(json.dumps({"question": "2+3?", "answer": "2+3=5\n#### 5"}) + "\n")
    gs = load("gsm8k", tmp_path / "gs.jsonl")
    assert gs[0].reference == "5" and gs[0].family == "math" and not gs[0].harmful
    pd.DataFrame({"problem": ["Find x"], "level": ["Level 2"], "type": ["Algebra"],
                  "solution": ["So $x=\\boxed{\\frac{1}{2}}$."]}).to_parquet(tmp_path / "mt.parquet")
    mt = load("math", tmp_path / "mt.parquet")
    assert mt[0].reference == "\\frac{1}{2}" and mt[0].category == "Algebra"
    assert last_boxed("a \\boxed{1} b \\boxed{{2}+3}") == "{2}+3" and last_boxed("none") is None


def test_wrong_benchmark_and_bad_label_name_file_line_column(tmp_path):
    with pytest.raises(DataError) as e:  # an XSTest file read as the OpenAI moderation sample
        load("openai_moderation", FIX / "xstest_prompts.csv")
    msg = str(e.value)
    assert msg.startswith(f"{FIX / 'xstest_prompts.csv'}:1: column S: missing")
    assert "prompt, S, H, V, HR, SH, S3, H2, V2" in msg and "found id, prompt, type, label, focus, note" in msg
    bad = tmp_path / "tc.csv"
    bad.write_text((FIX / "toxic-chat_annotation_test.csv").read_text().replace(",0,0,", ",2,0,", 1))
    with pytest.raises(DataError, match=r"tc.csv:2: column toxicity: value '2' is not one of 0, 1"):
        load("toxicchat", bad)


def test_every_loader_has_a_hub_id_and_offline_failure_names_path(monkeypatch):
    assert set(LOADERS) >= {"wildjailbreak", "wildjailbreak_eval", "or_bench_80k", "or_bench_hard_1k",
                            "or_bench_toxic", "xstest", "strongreject", "fortress", "harmbench", "beavertails",
                            "toxicchat", "openai_moderation", "advbench", "gsm8k", "math"}
    import datasets

    def offline(*a, **k):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="walledai/XSTest: could not load the hub dataset .* set its `path`"):
        load_safety_dataset("xstest")
