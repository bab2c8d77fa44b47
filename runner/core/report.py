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


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return f"[{len(v)} values]" if len(v) > 6 else json.dumps(_clean(v))
    return str(v)


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_summary(path: Path, title: str, results: Mapping[str, Any], choices: Mapping[str, Any],
                  plots: Sequence[Path], notes: str = "") -> Path:
    """A short human-readable ``summary.md``: what ran, the final metrics, the plots."""
    parts = [f"# {title}\n"]
    if choices:
        parts.append("## Configuration\n" + markdown_table([choices], list(choices)))
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
