"""Reports of a run: ``results.json``, ``summary.md`` and PNG plots."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _clean(v: Any) -> Any:
    """Make a results value JSON-serialisable (numpy/torch scalars, tuples, non-finite floats)."""
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "tolist") and callable(v.tolist):
        return _clean(v.tolist())
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, Path):
        return str(v)
    return v


def jsonable(data: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` exactly as ``results.json`` will hold it (string keys, plain numbers, ``"inf"`` strings)."""
    return json.loads(json.dumps(_clean(data)))


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write JSON atomically (a reader never sees a half-written file)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}``; lists are kept as values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# Keys of results.json that record provenance or wall-clock time rather than what the method computed. They
# differ between two runs of the same seed and are left out when results are compared for determinism:
# the whole ``run`` block (name, seed, dir, resumed, wall_seconds), any ``timing`` block, and any key named
# ``seconds``, ``*_seconds``, ``seconds_*``, ``*_s`` (``ttft_s``, ``total_s``, ``decode_tokens_per_s``) or
# ``speedup_<a>_vs_<b>`` (a wall-clock ratio between two solvers). Simulated time (``time_to_target``, the
# FL ``speedup``) is computed, not measured, and is compared. New wall-clock keys must follow these names.
PROVENANCE_BLOCKS = ("run", "timing")


def is_provenance_key(flat_key: str) -> bool:
    """True if a flattened results key (``a.b.c``) is provenance or wall-clock time (see above)."""
    parts = flat_key.split(".")
    if parts[0] in PROVENANCE_BLOCKS or "timing" in parts[1:]:
        return True
    last = parts[-1]
    return (last == "seconds" or last.endswith("_seconds") or last.startswith("seconds_") or last.endswith("_s")
            or (last.startswith("speedup_") and "_vs_" in last))


def comparable_results(results: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened results without provenance and wall-clock keys: equal for two runs of one seed."""
    return {k: v for k, v in flatten(jsonable(results)).items() if not is_provenance_key(k)}


def fmt_value(v: Any) -> str:
    """A value as a table cell: floats to 6 significant digits, long lists by their length."""
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return f"[{len(v)} values]" if len(v) > 6 else json.dumps(_clean(v))
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(fmt_value(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_summary(path: Path, title: str, results: Mapping[str, Any], choices: Mapping[str, Any],
                  plots: Sequence[Path], notes: str = "", claims: str = "") -> Path:
    """A short human-readable ``summary.md``: what ran, the claims table, the final metrics, the plots."""
    parts = [f"# {title}\n"]
    if choices:
        parts.append("## Configuration\n" + markdown_table([choices], list(choices)))
    if claims:
        parts.append("## Claims\n" + claims)
    flat = flatten(results)
    if flat:
        parts.append("## Results\n" + markdown_table([{"metric": k, "value": v} for k, v in flat.items()],
                                                     ["metric", "value"]))
    if plots:
        parts.append("## Plots\n" + "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n")
    if notes:
        parts.append("## Notes\n" + notes.strip() + "\n")
    Path(path).write_text("\n".join(parts))
    return Path(path)


def plot_curves(path: Path, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str,
                ylabel: str, title: str | None = None, logy: bool = False, kind: str = "line",
                annotate: bool = False) -> Path:
    """One figure with a line (or scatter) per named series; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    for name, (x, y) in series.items():
        if kind == "scatter":
            ax.scatter(x, y, label=name)
            if annotate:
                for xi, yi in zip(x, y):
                    ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        else:
            ax.plot(x, y, label=name, marker="o" if len(x) <= 20 else None, markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(series) > 1 or kind == "scatter":
        ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
