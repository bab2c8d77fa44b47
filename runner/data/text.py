"""Plain-text corpora: the builtin generated corpus, local files, or a HF dataset's text column."""

from __future__ import annotations

import json
import random
from pathlib import Path

from omegaconf import DictConfig

from runner.core.errors import ConfigError

_SUBJECTS = ["the cat", "a dog", "the old man", "my friend", "the teacher", "a small bird", "the farmer",
             "our neighbour", "the child", "a student"]
_VERBS = ["sees", "likes", "finds", "paints", "follows", "carries", "feeds", "watches", "visits", "helps"]
_OBJECTS = ["the red ball", "a green apple", "the river", "a wooden box", "the tall tree", "a blue car",
            "the quiet garden", "a warm bread", "the bright star", "a long road"]
_TAILS = ["every morning", "at night", "in the rain", "after school", "near the house", "with joy",
          "on sunday", "before dinner"]


def builtin_corpus(n: int, seed: int) -> list[str]:
    """``n`` templated sentences (subject verb object [tail].), deterministic in ``seed``.

    The grammar is small enough that a tiny LM's loss falls far below the uniform-byte baseline within a
    few hundred steps, which is what the smoke recipe checks.
    """
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
        if rng.random() < 0.6:
            s += f" {rng.choice(_TAILS)}"
        out.append(s + ".")
    return out


def _read_file(path: Path, column: str) -> list[str]:
    if not path.exists():
        raise ConfigError(f"dataset.path {path} does not exist")
    if path.suffix == ".txt":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif path.suffix in (".csv", ".parquet"):
        import pandas as pd

        rows = (pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)).to_dict("records")
    else:
        raise ConfigError(f"dataset.path {path}: unsupported file type (use .txt, .jsonl, .csv or .parquet)")
    if rows and column not in rows[0]:
        raise ConfigError(f"dataset.path {path} has no column '{column}' (found: {', '.join(rows[0])})")
    return [str(r[column]) for r in rows]


def load_text_corpus(cfg: DictConfig, seed: int) -> list[str]:
    """The texts named by a ``dataset`` group config (builtin, local file or HF hub id)."""
    n = cfg.num_examples
    if cfg.source == "builtin":
        texts = builtin_corpus(n or 2000, seed)
    elif cfg.source == "file":
        texts = _read_file(Path(cfg.path), cfg.text_column)
    else:
        from datasets import load_dataset

        try:
            ds = load_dataset(cfg.hf_id, cfg.hf_config, split=cfg.split)
        except Exception as e:  # the hub is unreachable offline; say how to use a local copy
            raise RuntimeError(
                f"could not load dataset '{cfg.hf_id}' ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                "offline, export it to a local file and use dataset.source=file dataset.path=..."
            ) from e
        texts = [str(t) for t in ds[cfg.text_column]]
    return texts[:n] if n else texts


def split_heldout(texts: list[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle deterministically and split off ``fraction`` as a held-out set."""
    idx = list(range(len(texts)))
    random.Random(seed).shuffle(idx)
    k = max(1, int(round(len(texts) * fraction)))
    held = [texts[i] for i in idx[:k]]
    train = [texts[i] for i in idx[k:]]
    return train, held
