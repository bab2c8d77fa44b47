"""Safety and math prompt datasets, normalised to one record schema (:class:`SafetyRecord`).

Every loader reads a Hugging Face dataset by id (with the right config, split and file format) or a local
file as the benchmark publishes it (``.csv``/``.tsv``/``.jsonl``/``.json``/``.parquet``, optionally
``.gz``/``.xz``/``.bz2``) through :func:`runner.data.files.read_table`. A loader knows the benchmark's
column layouts, the published file's first and the hub mirrors' after it; extra columns are ignored, label
columns are checked against their allowed values, and a file that fits no layout fails with a
:class:`~runner.data.files.DataError` naming the columns expected and found.

Published files (header source in ``tests/fixtures/README.md``): XSTest ``xstest_prompts.csv`` and
``xstest_v2_prompts.csv``, StrongREJECT ``strongreject_dataset.csv``, HarmBench
``harmbench_behaviors_text_all.csv``, AdvBench ``harmful_behaviors.csv``, the OpenAI moderation sample
``samples-1680.jsonl.gz``, ToxicChat ``toxic-chat_annotation_*.csv``, WildJailbreak ``train.tsv`` /
``eval.tsv``, OR-Bench ``or-bench-*.csv``, FORTRESS (parquet), BeaverTails ``round0/*/train.jsonl.gz``.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runner.data.files import BINARY, DataError, Layout, Table, match_layout, norm, read_table

# --------------------------------------------------------------------------- the record schema


@dataclass(frozen=True)
class SafetyRecord:
    """One evaluation or training prompt.

    ``harmful``: the request itself is harmful (ASR is measured on these); benign prompts measure
    overrefusal. ``family``: ``harmful`` | ``benign_sensitive`` (looks sensitive, is benign: XSTest,
    OR-Bench) | ``benign`` (ordinary) | ``math``. ``adversarial``: a jailbreak-style wrapping.
    ``reference``: a reference answer (math) or rubric (FORTRESS) where the dataset has one.
    ``codes``: Llama Guard 3 hazard codes where the source's labels map to them (OpenAI moderation).
    """

    prompt: str
    harmful: bool
    category: str = "none"
    family: str = "benign"
    adversarial: bool = False
    source: str = ""
    reference: str | None = None
    codes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- config
@dataclass
class BenchmarkConfig:
    """One benchmark of a safety dataset option: a loader name, and a local file or the loader's HF id."""

    loader: str = "xstest"
    path: str | None = None  # a local file as the benchmark publishes it (see the module docstring)
    hf_config: str | None = None  # null: the loader's default config
    split: str | None = None  # null: the loader's default split
    num_examples: int | None = None  # keep the first N records (after a seeded shuffle if shuffle)
    shuffle: bool = True


@dataclass
class SafetyDatasetConfig:
    """``dataset`` options of the safety recipes: the toy world (``source=builtin``) or real benchmarks.

    ``params`` configures the toy world (``mix``, ``categories``, ``include_adversarial``); ``train`` and
    ``eval`` list benchmarks for ``source=hf`` (each from its HF id, or from ``path`` when set). The
    single-benchmark options (``dataset=xstest``, ...) point their one benchmark's path at ``path``;
    ``num_examples`` caps every benchmark (after the seeded shuffle).
    """

    name: str = "toy_safety"
    source: str = "builtin"
    path: str | None = None
    num_examples: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    train: list[BenchmarkConfig] = field(default_factory=list)
    eval: list[BenchmarkConfig] = field(default_factory=list)


# --------------------------------------------------------------------------- loaders
Row = dict[str, Any]


@dataclass(frozen=True)
class LoaderSpec:
    """Where a benchmark lives on the hub and its file layouts (the published file's first)."""

    hf_id: str
    hf_config: str | None
    split: str
    layouts: tuple[Layout, ...]
    load_kwargs: tuple[tuple[str, Any], ...] = ()


def _s(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _flag(v: Any) -> bool:
    return norm(v) in ("1", "yes", "unsafe", "harmful")


def _each(fn: Callable[[Row], list[SafetyRecord]]) -> Callable[[list[Row]], list[SafetyRecord]]:
    return lambda rows: [rec for r in rows for rec in fn(r)]


def _family(harmful: bool, benign: str = "benign_sensitive") -> str:
    return "harmful" if harmful else benign


# WildJailbreak (Jiang et al., 2024): train.tsv and eval.tsv of allenai/wildjailbreak.
WJ_TYPES = frozenset({"vanilla_harmful", "vanilla_benign", "adversarial_harmful", "adversarial_benign"})


def _wildjailbreak_train(r: Row) -> list[SafetyRecord]:
    kind = _s(r["data_type"])
    adversarial = kind.startswith("adversarial")
    prompt = _s(r["adversarial"]) if adversarial else _s(r["vanilla"])
    harmful = kind.endswith("harmful")
    return [SafetyRecord(prompt, harmful, category=kind, family=_family(harmful), adversarial=adversarial,
                         source="wildjailbreak", reference=_s(r["completion"]) or None)]


def _wildjailbreak_eval(r: Row) -> list[SafetyRecord]:
    harmful = _flag(r["label"])
    kind = _s(r["data_type"])
    return [SafetyRecord(_s(r["adversarial"]), harmful, category=kind, family=_family(harmful),
                         adversarial=kind.startswith("adversarial"), source="wildjailbreak_eval")]


def _or_bench(source: str, harmful: bool) -> Callable[[Row], list[SafetyRecord]]:
    def convert(r: Row) -> list[SafetyRecord]:
        return [SafetyRecord(_s(r["prompt"]), harmful, category=_s(r["category"]), family=_family(harmful),
                             source=source)]
    return convert


# XSTest (Röttger et al., 2024). xstest_prompts.csv (and the walledai/XSTest mirror) label each prompt
# safe/unsafe; the older xstest_v2_prompts.csv has no label column: its `type` marks the 200 unsafe
# prompts as contrast_* (contrast_homonyms, contrast_discr, ...).
def _xstest(r: Row) -> list[SafetyRecord]:
    harmful = norm(r["label"]) == "unsafe"
    return [SafetyRecord(_s(r["prompt"]), harmful, category=_s(r["type"]), family=_family(harmful),
                         source="xstest")]


def _xstest_v2(r: Row) -> list[SafetyRecord]:
    harmful = norm(r["type"]).startswith("contrast_")
    return [SafetyRecord(_s(r["prompt"]), harmful, category=_s(r["type"]), family=_family(harmful),
                         source="xstest")]


def _harmful(source: str, prompt_col: str, category_col: str | None) -> Callable[[Row], list[SafetyRecord]]:
    """A harmful-only benchmark row: the prompt and its category."""
    def convert(r: Row) -> list[SafetyRecord]:
        category = _s(r.get(category_col)) if category_col else ""
        return [SafetyRecord(_s(r[prompt_col]), True, category=category or "none", family="harmful",
                             source=source)]
    return convert


def _harmbench(behavior: str, category: str, context: str) -> Callable[[Row], list[SafetyRecord]]:
    """A HarmBench behaviour; a contextual one is asked with its context first, as HarmBench's own test
    cases do (``f"{context}\\n\\n---\\n\\n{behavior}"``)."""
    def convert(r: Row) -> list[SafetyRecord]:
        prompt = _s(r[behavior])
        ctx = _s(r.get(context)).strip()
        if ctx:
            prompt = f"{ctx}\n\n---\n\n{prompt}"
        return [SafetyRecord(prompt, True, category=_s(r.get(category)) or "none", family="harmful",
                             source="harmbench")]
    return convert


def _fortress(r: Row) -> list[SafetyRecord]:
    rubric = r["rubric"]
    rubric_text = json.dumps(list(rubric)) if isinstance(rubric, (list, tuple)) or hasattr(rubric, "tolist") \
        else _s(rubric)
    out = [SafetyRecord(_s(r["adversarial_prompt"]), True, category=_s(r["risk_domain"]), family="harmful",
                        adversarial=True, source="fortress", reference=rubric_text)]
    if _s(r["benign_prompt"]).strip():
        out.append(SafetyRecord(_s(r["benign_prompt"]), False, category=_s(r["risk_domain"]),
                                family="benign_sensitive", source="fortress_benign"))
    return out


def _beavertails(rows: list[Row]) -> list[SafetyRecord]:
    """One record per distinct prompt. BeaverTails' ``is_safe`` rates the prompt–response (QA) pair, not the
    prompt (Ji et al., 2023: a QA pair is safe only if it is harmless in all 14 categories); the same
    prompt appears with several responses. A prompt is harmful if any of its responses was judged unsafe
    (it elicited harm); its category is the one flagged most often over its unsafe pairs."""
    by_prompt: dict[str, list[Row]] = {}
    for r in rows:
        by_prompt.setdefault(_s(r["prompt"]), []).append(r)
    out = []
    for prompt, group in by_prompt.items():
        flagged: Counter[str] = Counter()
        for r in group:
            cats = r["category"]
            if isinstance(cats, str):
                cats = json.loads(cats) if cats.strip() else {}
            if not _flag(r["is_safe"]):
                flagged.update(k for k, v in (cats or {}).items() if _flag(v))
        harmful = any(not _flag(r["is_safe"]) for r in group)
        category = flagged.most_common(1)[0][0] if flagged else "none"
        out.append(SafetyRecord(prompt, harmful, category=category, family=_family(harmful, "benign"),
                                source="beavertails"))
    return out


def _toxicchat(r: Row) -> list[SafetyRecord]:
    harmful = _flag(r["toxicity"])
    return [SafetyRecord(_s(r["user_input"]), harmful, category="toxic" if harmful else "none",
                         family=_family(harmful, "benign"), adversarial=_flag(r["jailbreaking"]),
                         source="toxicchat")]


# OpenAI moderation evaluation sample (Markov et al., 2023; openai/moderation-api-release
# data/samples-1680.jsonl.gz): `prompt` and 0/1 flags; a flag missing from a line is unknown, not 0.
OPENAI_FLAGS = ("S", "H", "V", "HR", "SH", "S3", "H2", "V2")
# Closest Llama Guard 3 hazard: sexual → S12, sexual/minors → S4 (and S12), hate(/threatening) → S10,
# harassment → S10 (it has no own code), violence(/graphic) → S1, self-harm → S11.
OPENAI_TO_LLAMA_GUARD: dict[str, tuple[str, ...]] = {
    "S": ("S12",), "S3": ("S4", "S12"), "H": ("S10",), "H2": ("S10",), "HR": ("S10",), "V": ("S1",),
    "V2": ("S1",), "SH": ("S11",)}


def _openai_moderation(r: Row) -> list[SafetyRecord]:
    flags = [k for k in OPENAI_FLAGS if _flag(r.get(k))]
    codes = sorted({c for k in flags for c in OPENAI_TO_LLAMA_GUARD[k]}, key=lambda c: int(c[1:]))
    return [SafetyRecord(_s(r["prompt"]), bool(flags), category=",".join(flags) or "none",
                         family=_family(bool(flags), "benign"), source="openai_moderation", codes=tuple(codes))]


def _gsm8k(r: Row) -> list[SafetyRecord]:
    answer = _s(r["answer"])
    final = answer.split("####")[-1].strip() if "####" in answer else answer.strip()
    return [SafetyRecord(_s(r["question"]), False, category="math", family="math", source="gsm8k",
                         reference=final)]


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` in a solution (braces balanced), or None."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def _math(source: str) -> Callable[[Row], list[SafetyRecord]]:
    def convert(r: Row) -> list[SafetyRecord]:
        ref = _s(r.get("answer")) or last_boxed(_s(r["solution"]))
        subject = _s(r.get("type") or r.get("subject")) or "math"
        return [SafetyRecord(_s(r["problem"]), False, category=subject, family="math", source=source,
                             reference=ref)]
    return convert


def _star_benign(r: Row) -> list[SafetyRecord]:
    """STAR-benign (UCSC-VLAA): benign prompts that resemble STAR-1's harmful ones (overrefusal)."""
    return [SafetyRecord(_s(r["question"]), False, category=_s(r.get("category")) or "none",
                         family="benign_sensitive", source="star_benign")]


def _lay(name: str, required: tuple[str, ...], convert: Callable[[Row], list[SafetyRecord]],
         labels: dict[str, frozenset[str]] | None = None) -> Layout:
    return Layout(name, required, _each(convert), labels or {})


_TSV = (("delimiter", "\t"), ("keep_default_na", False))
_OPENAI_LABELS = {k: frozenset({"0", "1", ""}) for k in OPENAI_FLAGS}

LOADERS: dict[str, LoaderSpec] = {
    "wildjailbreak": LoaderSpec("allenai/wildjailbreak", "train", "train", (
        _lay("train.tsv", ("vanilla", "adversarial", "completion", "data_type"), _wildjailbreak_train,
             {"data_type": WJ_TYPES}),), _TSV),
    "wildjailbreak_eval": LoaderSpec("allenai/wildjailbreak", "eval", "train", (
        _lay("eval.tsv", ("adversarial", "label", "data_type"), _wildjailbreak_eval,
             {"label": BINARY, "data_type": WJ_TYPES}),), _TSV),
    "or_bench_80k": LoaderSpec("bench-llm/or-bench", "or-bench-80k", "train", (
        _lay("or-bench-80k.csv", ("prompt", "category"), _or_bench("or_bench_80k", False)),)),
    "or_bench_hard_1k": LoaderSpec("bench-llm/or-bench", "or-bench-hard-1k", "train", (
        _lay("or-bench-hard-1k.csv", ("prompt", "category"), _or_bench("or_bench_hard_1k", False)),)),
    "or_bench_toxic": LoaderSpec("bench-llm/or-bench", "or-bench-toxic", "train", (
        _lay("or-bench-toxic.csv", ("prompt", "category"), _or_bench("or_bench_toxic", True)),)),
    "xstest": LoaderSpec("walledai/XSTest", None, "test", (
        _lay("xstest_prompts.csv or walledai/XSTest", ("prompt", "type", "label"), _xstest,
             {"label": frozenset({"safe", "unsafe"})}),
        _lay("xstest_v2_prompts.csv", ("prompt", "type"), _xstest_v2))),
    "strongreject": LoaderSpec("walledai/StrongREJECT", None, "train", (
        _lay("strongreject_dataset.csv", ("forbidden_prompt", "category"),
             _harmful("strongreject", "forbidden_prompt", "category")),
        _lay("walledai/StrongREJECT", ("prompt", "category"), _harmful("strongreject", "prompt", "category")))),
    "harmbench": LoaderSpec("walledai/HarmBench", "standard", "train", (
        Layout("harmbench_behaviors_text_all.csv", ("Behavior", "SemanticCategory"),
               _each(_harmbench("Behavior", "SemanticCategory", "ContextString")),
               {"FunctionalCategory": frozenset({"standard", "contextual", "copyright"})}),
        _lay("walledai/HarmBench", ("prompt", "category"), _harmbench("prompt", "category", "context")))),
    "advbench": LoaderSpec("walledai/AdvBench", None, "train", (
        _lay("harmful_behaviors.csv", ("goal", "target"), _harmful("advbench", "goal", None)),
        _lay("walledai/AdvBench", ("prompt", "target"), _harmful("advbench", "prompt", None)))),
    "fortress": LoaderSpec("ScaleAI/fortress_public", None, "train", (
        _lay("fortress_public", ("adversarial_prompt", "rubric", "risk_domain", "benign_prompt"), _fortress),)),
    "beavertails": LoaderSpec("PKU-Alignment/BeaverTails", None, "30k_train", (
        Layout("round0/*/train.jsonl.gz", ("prompt", "response", "category", "is_safe"), _beavertails,
               {"is_safe": BINARY}),)),
    "toxicchat": LoaderSpec("lmsys/toxic-chat", "toxicchat0124", "test", (
        _lay("toxic-chat_annotation_*.csv", ("user_input", "toxicity", "jailbreaking"), _toxicchat,
             {"toxicity": BINARY, "jailbreaking": BINARY}),)),
    "openai_moderation": LoaderSpec("mmathys/openai-moderation-api-evaluation", None, "train", (
        _lay("samples-1680.jsonl(.gz)", ("prompt", *OPENAI_FLAGS), _openai_moderation, _OPENAI_LABELS),)),
    "gsm8k": LoaderSpec("openai/gsm8k", "main", "test", (
        _lay("gsm8k", ("question", "answer"), _gsm8k),)),
    "math": LoaderSpec("DigitalLearningGmbH/MATH-lighteval", "default", "test", (
        _lay("MATH", ("problem", "solution"), _math("math")),)),
    "math500": LoaderSpec("HuggingFaceH4/MATH-500", None, "test", (
        _lay("MATH-500", ("problem", "solution", "answer"), _math("math500")),)),
    # RECAP's data: STAR-1's 1K harmful prompts (and its benign counterparts), AIME problems with answers
    "star1": LoaderSpec("UCSC-VLAA/STAR-1", None, "train", (
        _lay("STAR-1", ("question", "category"), _harmful("star1", "question", "category")),)),
    "star_benign": LoaderSpec("UCSC-VLAA/STAR-benign-915", None, "train", (
        _lay("STAR-benign-915", ("question",), _star_benign),)),
    "aime": LoaderSpec("AI-MO/aimo-validation-aime", None, "train", (
        _lay("aimo-validation-aime or aime_2024", ("problem", "answer"), _math("aime")),)),
}


def _spec(loader: str) -> LoaderSpec:
    if loader not in LOADERS:
        raise DataError("dataset", None, f"unknown safety dataset loader '{loader}' (allowed: {', '.join(LOADERS)})")
    return LOADERS[loader]


def read_benchmark(loader: str, path: str | None = None, hf_config: str | None = None,
                   split: str | None = None) -> tuple[list[SafetyRecord], int]:
    """All records of one benchmark file (or hub split) and the number of rows read, before any cap."""
    spec = _spec(loader)
    if path:
        table = read_table(path)
    else:
        from datasets import load_dataset

        try:
            ds = load_dataset(spec.hf_id, hf_config or spec.hf_config, split=split or spec.split,
                              **dict(spec.load_kwargs))
        except Exception as e:  # offline or gated: say how to use a local copy
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise DataError(spec.hf_id, None, f"could not load the hub dataset for loader '{loader}' ({first}); "
                                              "offline, download the benchmark's file and set its `path`") from e
        table = Table(Path(spec.hf_id), list(ds.column_names), list(ds))
    layout = match_layout(table, spec.layouts, loader)
    records = [rec for rec in layout.convert(table.rows) if rec.prompt.strip()]
    return records, len(table)


def load_safety_dataset(loader: str, path: str | None = None, hf_config: str | None = None,
                        split: str | None = None, num_examples: int | None = None, seed: int = 0,
                        shuffle: bool = True) -> list[SafetyRecord]:
    """Records of one benchmark: from ``path`` if given, else ``datasets.load_dataset`` of the loader's id."""
    records, _ = read_benchmark(loader, path, hf_config, split)
    return _select(records, num_examples, seed, shuffle)


def _select(records: list[SafetyRecord], num_examples: int | None, seed: int, shuffle: bool) -> list[SafetyRecord]:
    if shuffle:
        records = list(records)
        random.Random(seed).shuffle(records)
    return records[:num_examples] if num_examples else records


def data_info(path: str | None, rows: int, records: int, harmful: int, used: int) -> dict[str, Any]:
    """What a run read from one file, for ``results.json``'s ``data.<name>``: rows in the file, records made
    of them (harmful / benign), records used after any cap."""
    return {"path": path, "rows": rows, "records": records, "harmful": harmful, "benign": records - harmful,
            "used": used}


def load_benchmarks(specs: Sequence[Any], seed: int = 0, info: dict[str, Any] | None = None,
                    num_examples: int | None = None, prefix: str = "") -> dict[str, list[SafetyRecord]]:
    """``{name: records}`` for a list of :class:`BenchmarkConfig` (names: the loader, deduplicated).

    ``num_examples`` caps every benchmark (on top of its own cap); ``info`` receives :func:`data_info` per
    benchmark under ``prefix + name``.
    """
    out: dict[str, list[SafetyRecord]] = {}
    for spec in specs:
        name = spec.loader
        k = 2
        while name in out:
            name, k = f"{spec.loader}_{k}", k + 1
        records, rows = read_benchmark(spec.loader, spec.path, spec.hf_config, spec.split)
        caps = [n for n in (spec.num_examples, num_examples) if n]
        out[name] = _select(records, min(caps) if caps else None, seed, spec.shuffle)
        if info is not None:
            info[prefix + name] = data_info(spec.path, rows, len(records), sum(r.harmful for r in records),
                                            len(out[name]))
    return out


def load_benchmark_sets(dataset_cfg: Any, seed: int = 0
                        ) -> tuple[list[SafetyRecord], dict[str, list[SafetyRecord]], dict[str, Any]]:
    """Training records, evaluation sets by name and ``data`` info of a benchmark ``dataset`` option."""
    info: dict[str, Any] = {}
    cap = dataset_cfg.get("num_examples")
    train = load_benchmarks(dataset_cfg.train, seed, info, cap, prefix="train_")
    evals = load_benchmarks(dataset_cfg.eval, seed, info, cap)
    return [r for recs in train.values() for r in recs], evals, info


def benchmark_files(dataset_cfg: Any) -> list[tuple[str, str]]:
    """(loader, path) of every local file a benchmark ``dataset`` option reads."""
    return [(s.loader, s.path) for s in [*dataset_cfg.get("train", []), *dataset_cfg.get("eval", [])] if s.path]
