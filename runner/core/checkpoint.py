"""Stage checkpoints: atomic writes, the last ``keep`` per stage, and the metric-log position to rewind to.

A stage saves ``state`` (any torch-serialisable dict: model and optimizer state, RNG states, loop
counters). On resume the method loads the latest state of its stage and continues; the run context
truncates ``metrics.jsonl`` to what had been logged when that checkpoint was written, so a resumed run's
log equals an uninterrupted one.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np

_STEP = re.compile(r"step_(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    """Every global RNG's state, to store in a checkpoint."""
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Checkpointer:
    """Checkpoints of a run's stages. ``read_only`` (a non-zero rank of a multi-process run): a snapshot of rank
    0's checkpoints as they were when the run started, read through handles opened now, so this rank makes the
    same resume decisions as rank 0 however far rank 0 has since moved on; saving is rank 0's job."""

    def __init__(self, root: Path, keep: int = 2, metrics_path: Path | None = None, read_only: bool = False):
        self.root = Path(root)
        self.keep = keep
        self.metrics_path = metrics_path
        self.read_only = read_only
        self._latest: dict[str, tuple[int, Any]] = {}  # read_only: stage -> (newest step, open file)
        self._done: dict[str, dict[str, Any]] = {}
        if read_only:
            self._snapshot()

    def _snapshot(self) -> None:
        import json

        if not self.root.exists():
            return
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if (d / "done.json").exists():
                self._done[d.name] = json.loads((d / "done.json").read_text())
            for step in reversed(self._list_steps(d.name)):
                try:  # rank 0 may prune an old step meanwhile; the open handle outlives an unlink
                    self._latest[d.name] = (step, (d / f"step_{step}.pt").open("rb"))
                    break
                except FileNotFoundError:
                    continue

    def _stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def steps(self, stage: str) -> list[int]:
        if self.read_only:
            return [self._latest[stage][0]] if stage in self._latest else []
        return self._list_steps(stage)

    def _list_steps(self, stage: str) -> list[int]:
        d = self._stage_dir(stage)
        if not d.exists():
            return []
        return sorted(int(m.group(1)) for p in d.iterdir() if (m := _STEP.search(p.name)))

    def save(self, stage: str, step: int, state: dict[str, Any]) -> Path:
        """Write ``state`` for ``stage`` at ``step`` atomically; prune to the newest ``keep``."""
        import torch

        d = self._stage_dir(stage)
        if self.read_only:
            return d / f"step_{step}.pt"
        d.mkdir(parents=True, exist_ok=True)
        n_metrics = 0
        if self.metrics_path is not None and self.metrics_path.exists():
            with self.metrics_path.open() as f:
                n_metrics = sum(1 for line in f if line.strip())
        path = d / f"step_{step}.pt"
        tmp = d / f".step_{step}.pt.tmp"
        torch.save({"step": step, "state": state, "n_metric_records": n_metrics}, tmp)
        os.replace(tmp, path)
        for old in self.steps(stage)[: -self.keep]:
            (d / f"step_{old}.pt").unlink(missing_ok=True)
        return path

    def load(self, stage: str) -> dict[str, Any] | None:
        """The newest checkpoint of ``stage`` as ``{"step", "state", "n_metric_records"}``, or None."""
        import torch

        if self.read_only:
            if stage not in self._latest:
                return None
            handle = self._latest[stage][1]
            handle.seek(0)
            return torch.load(handle, weights_only=False)
        steps = self.steps(stage)
        if not steps:
            return None
        return torch.load(self._stage_dir(stage) / f"step_{steps[-1]}.pt", weights_only=False)

    def mark_done(self, stage: str, result: dict[str, Any] | None = None) -> None:
        """Record that a stage finished, with its (JSON-serialisable) result, so a resumed run skips it."""
        import json

        if self.read_only:
            return
        d = self._stage_dir(stage)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / ".done.tmp"
        tmp.write_text(json.dumps(result or {}))
        os.replace(tmp, d / "done.json")

    def done(self, stage: str) -> dict[str, Any] | None:
        import json

        if self.read_only:
            return self._done.get(stage)
        p = self._stage_dir(stage) / "done.json"
        return json.loads(p.read_text()) if p.exists() else None

    def any(self) -> bool:
        if self.read_only:
            return bool(self._latest or self._done)
        if not self.root.exists():
            return False
        return any(self.root.rglob("step_*.pt")) or any(self.root.rglob("done.json"))
