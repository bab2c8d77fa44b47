"""Safety and math prompt datasets, normalised to one record schema (:class:`SafetyRecord`).

Every loader reads a Hugging Face dataset by id (with the right config, split and file format) or a
local ``.csv``/``.tsv``/``.jsonl``/``.parquet`` file with the same columns, checks the columns against the
dataset's real schema, and maps each row to a :class:`SafetyRecord`. A file whose columns do not match
fails with an error that lists the columns expected and the ones found.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# --------------------------------------------------------------------------- the record schema


@dataclass(frozen=True)
class SafetyRecord:
    """One evaluation or training prompt.

    ``harmful``: the request itself is harmful (ASR is measured on these); benign prompts measure
    overrefusal. ``family``: ``harmful`` | ``benign_sensitive`` (looks sensitive, is benign: XSTest,
    OR-Bench) | ``benign`` (ordinary) | ``math``. ``adversarial``: a jailbreak-style wrapping.
    ``reference``: a reference answer (math) or rubric (FORTRESS) where the dataset has one.
    """

    prompt: str
    harmful: bool
    category: str = "none"
    family: str = "benign"
    adversarial: bool = False
    source: str = ""
    reference: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- config
@dataclass
class BenchmarkConfig:
    """One benchmark of a safety dataset option: a loader name, and a local file or the loader's HF id."""

    loader: str = "xstest"
    path: str | None = None  # local csv/tsv/jsonl/json/parquet with the dataset's columns
    hf_config: str | None = None  # null: the loader's default config
    split: str | None = None  # null: the loader's default split
    num_examples: int | None = None  # keep the first N records (after a seeded shuffle if shuffle)
    shuffle: bool = True


@dataclass
class SafetyDatasetConfig:
    """``dataset`` options of the safety recipes: the toy world (``source=builtin``) or real benchmarks.

    ``params`` configures the toy world (``mix``, ``categories``, ``include_adversarial``); ``train`` and
    ``eval`` list benchmarks for ``source=hf`` (each from its HF id, or from ``path`` when set).
    """

    name: str = "toy_safety"
    source: str = "builtin"
    params: dict[str, Any] = field(default_factory=dict)
    train: list[BenchmarkConfig] = field(default_factory=list)
    eval: list[BenchmarkConfig] = field(default_factory=list)


# --------------------------------------------------------------------------- loaders
Row = dict[str, Any]


@dataclass(frozen=True)
class LoaderSpec:
    """Where a dataset lives on the hub, its columns, and how a row becomes records."""

    hf_id: str
    hf_config: str | None
    split: str
    required: tuple[str, ...]
    to_records: Callable[[Row], list[SafetyRecord]]
    optional: tuple[str, ...] = ()
    load_kwargs: tuple[tuple[str, Any], ...] = ()


def _s(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _flag(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "unsafe", "harmful")
    return bool(v) and not (isinstance(v, float) and math.isnan(v))


def _wildjailbreak_train(r: Row) -> list[SafetyRecord]:
    kind = _s(r["data_type"])
    adversarial = kind.startswith("adversarial")
    prompt = _s(r["adversarial"]) if adversarial else _s(r["vanilla"])
    harmful = kind.endswith("harmful")
    return [SafetyRecord(prompt, harmful, category=kind, family="harmful" if harmful else "benign_sensitive",
                         adversarial=adversarial, source="wildjailbreak", reference=_s(r["completion"]) or None)]


def _wildjailbreak_eval(r: Row) -> list[SafetyRecord]:
    harmful = _flag(r["label"])
    kind = _s(r["data_type"])
    return [SafetyRecord(_s(r["adversarial"]), harmful, category=kind,
                         family="harmful" if harmful else "benign_sensitive",
                         adversarial=kind.startswith("adversarial"), source="wildjailbreak_eval")]


def _or_bench(source: str, harmful: bool) -> Callable[[Row], list[SafetyRecord]]:
    def convert(r: Row) -> list[SafetyRecord]:
        return [SafetyRecord(_s(r["prompt"]), harmful, category=_s(r["category"]),
                             family="harmful" if harmful else "benign_sensitive", source=source)]
    return convert


def _xstest(r: Row) -> list[SafetyRecord]:
    harmful = _s(r["label"]).strip().lower() == "unsafe"
    return [SafetyRecord(_s(r["prompt"]), harmful, category=_s(r["type"]),
                         family="harmful" if harmful else "benign_sensitive", source="xstest")]


def _harmful_only(source: str, prompt_col: str = "prompt") -> Callable[[Row], list[SafetyRecord]]:
    def convert(r: Row) -> list[SafetyRecord]:
        prompt = _s(r[prompt_col])
        if _s(r.get("context")):
            prompt = f"{_s(r['context'])}\n\n{prompt}"
        return [SafetyRecord(prompt, True, category=_s(r.get("category")) or "none", family="harmful",
                             source=source)]
    return convert


def _fortress(r: Row) -> list[SafetyRecord]:
    rubric = r["rubric"]
    rubric_text = json.dumps(list(rubric)) if isinstance(rubric, (list, tuple)) or hasattr(rubric, "tolist") \
        else _s(rubric)
    out = [SafetyRecord(_s(r["adversarial_prompt"]), True, category=_s(r["risk_domain"]), family="harmful",
                        adversarial=True, source="fortress", reference=rubric_text)]
    if _s(r["benign_prompt"]):
        out.append(SafetyRecord(_s(r["benign_prompt"]), False, category=_s(r["risk_domain"]),
                                family="benign_sensitive", source="fortress_benign"))
    return out


def _beavertails(r: Row) -> list[SafetyRecord]:
    cats = r["category"]
    if isinstance(cats, str):
        cats = json.loads(cats)
    flagged = [k for k, v in (cats or {}).items() if v]
    harmful = not _flag(r["is_safe"])
    return [SafetyRecord(_s(r["prompt"]), harmful, category=flagged[0] if flagged else "none",
                         family="harmful" if harmful else "benign", source="beavertails")]


def _toxicchat(r: Row) -> list[SafetyRecord]:
    harmful = _flag(r["toxicity"])
    return [SafetyRecord(_s(r["user_input"]), harmful, category="toxic" if harmful else "none",
                         family="harmful" if harmful else "benign", adversarial=_flag(r["jailbreaking"]),
                         source="toxicchat")]


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


LOADERS: dict[str, LoaderSpec] = {
    "wildjailbreak": LoaderSpec("allenai/wildjailbreak", "train", "train",
                                ("vanilla", "adversarial", "completion", "data_type"), _wildjailbreak_train,
                                load_kwargs=(("delimiter", "\t"), ("keep_default_na", False))),
    "wildjailbreak_eval": LoaderSpec("allenai/wildjailbreak", "eval", "train", ("adversarial", "label", "data_type"),
                                     _wildjailbreak_eval,
                                     load_kwargs=(("delimiter", "\t"), ("keep_default_na", False))),
    "or_bench_80k": LoaderSpec("bench-llm/or-bench", "or-bench-80k", "train", ("prompt", "category"),
                               _or_bench("or_bench_80k", False)),
    "or_bench_hard_1k": LoaderSpec("bench-llm/or-bench", "or-bench-hard-1k", "train", ("prompt", "category"),
                                   _or_bench("or_bench_hard_1k", False)),
    "or_bench_toxic": LoaderSpec("bench-llm/or-bench", "or-bench-toxic", "train", ("prompt", "category"),
                                 _or_bench("or_bench_toxic", True)),
    "xstest": LoaderSpec("walledai/XSTest", None, "test", ("prompt", "focus", "type", "note", "label"), _xstest),
    "strongreject": LoaderSpec("walledai/StrongREJECT", None, "train", ("prompt", "category", "source"),
                               _harmful_only("strongreject")),
    "fortress": LoaderSpec("ScaleAI/fortress_public", None, "train",
                           ("adversarial_prompt", "rubric", "risk_domain", "benign_prompt"), _fortress,
                           optional=("ID", "risk_subdomain")),
    "harmbench": LoaderSpec("walledai/HarmBench", "standard", "train", ("prompt", "category"),
                            _harmful_only("harmbench"), optional=("context",)),
    "beavertails": LoaderSpec("PKU-Alignment/BeaverTails", None, "30k_train",
                              ("prompt", "response", "category", "is_safe"), _beavertails),
    "toxicchat": LoaderSpec("lmsys/toxic-chat", "toxicchat0124", "test", ("user_input", "toxicity", "jailbreaking"),
                            _toxicchat, optional=("conv_id", "model_output", "human_annotation", "openai_moderation")),
    "gsm8k": LoaderSpec("openai/gsm8k", "main", "test", ("question", "answer"), _gsm8k),
    "math": LoaderSpec("DigitalLearningGmbH/MATH-lighteval", "default", "test",
                       ("problem", "level", "type", "solution"), _math("math")),
    "math500": LoaderSpec("HuggingFaceH4/MATH-500", None, "test",
                          ("problem", "solution", "answer", "subject", "level", "unique_id"), _math("math500")),
}


class DatasetSchemaError(ValueError):
    """A dataset's columns do not match what its loader expects."""


def check_columns(loader: str, found: Sequence[str], strict: bool = True) -> None:
    """Fail unless every required column is present and (``strict``) no column is unexpected."""
    spec = LOADERS[loader]
    missing = [c for c in spec.required if c not in found]
    unexpected = [c for c in found if c not in spec.required and c not in spec.optional] if strict else []
    if missing or unexpected:
        expected = list(spec.required) + [f"{c} (optional)" for c in spec.optional]
        problems = ([f"missing {missing}"] if missing else []) + ([f"unexpected {unexpected}"] if unexpected else [])
        raise DatasetSchemaError(f"dataset '{loader}': {'; '.join(problems)}: expected columns "
                                 f"{', '.join(expected)}; found {', '.join(found) or 'none'}")


def read_table(path: str | Path) -> list[Row]:
    """Rows of a local csv/tsv/jsonl/json/parquet file (empty cells stay empty strings in csv/tsv)."""
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"dataset file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix in (".csv", ".tsv"):
        df = pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False)
    elif suffix in (".jsonl", ".json"):
        df = pd.read_json(p, lines=suffix == ".jsonl")
    elif suffix == ".parquet":
        df = pd.read_parquet(p)
    else:
        raise ValueError(f"dataset file {p}: unsupported type (use .csv, .tsv, .jsonl, .json or .parquet)")
    return df.to_dict("records")


def load_safety_dataset(loader: str, path: str | None = None, hf_config: str | None = None,
                        split: str | None = None, num_examples: int | None = None, seed: int = 0,
                        shuffle: bool = True) -> list[SafetyRecord]:
    """Records of one benchmark: from ``path`` if given, else ``datasets.load_dataset`` of the loader's id."""
    if loader not in LOADERS:
        raise ValueError(f"unknown safety dataset loader '{loader}' (allowed: {', '.join(LOADERS)})")
    spec = LOADERS[loader]
    if path:
        rows = read_table(path)
        check_columns(loader, list(rows[0]) if rows else [], strict=True)
    else:
        from datasets import load_dataset

        try:
            ds = load_dataset(spec.hf_id, hf_config or spec.hf_config, split=split or spec.split,
                              **dict(spec.load_kwargs))
        except Exception as e:  # offline or gated: say how to use a local copy
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RuntimeError(f"could not load dataset '{spec.hf_id}' for loader '{loader}' ({first}); offline, "
                               "export it to a csv/jsonl/parquet file and set its `path`") from e
        check_columns(loader, list(ds.column_names), strict=False)
        rows = list(ds)
    records = [rec for r in rows for rec in spec.to_records(r) if rec.prompt.strip()]
    if shuffle:
        random.Random(seed).shuffle(records)
    return records[:num_examples] if num_examples else records


def load_benchmarks(specs: Sequence[Any], seed: int = 0) -> dict[str, list[SafetyRecord]]:
    """``{name: records}`` for a list of :class:`BenchmarkConfig` (names: the loader, deduplicated)."""
    out: dict[str, list[SafetyRecord]] = {}
    for spec in specs:
        name = spec.loader
        k = 2
        while name in out:
            name, k = f"{spec.loader}_{k}", k + 1
        out[name] = load_safety_dataset(spec.loader, spec.path, spec.hf_config, spec.split, spec.num_examples,
                                        seed, spec.shuffle)
    return out
