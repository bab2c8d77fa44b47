"""Metric loggers behind one Protocol; the run context fans each ``log`` out to all selected ones.

jsonl is always on (``metrics.jsonl``, one record per call); wandb (offline unless configured) and
tensorboard are selected by the ``logger`` group.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from runner.core.errors import require


class MetricLogger(Protocol):
    def log(self, metrics: Mapping[str, float], step: int, stage: str | None = None) -> None: ...

    def close(self) -> None: ...


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (math.inf if v > 0 else -math.inf)
    return v


class JsonlLogger:
    """Appends ``{"step", "stage", **metrics}`` records to ``metrics.jsonl``; flushed on every call."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = self.path.open("a", encoding="utf-8")

    def log(self, metrics: Mapping[str, float], step: int, stage: str | None = None) -> None:
        record = {"step": int(step), **({"stage": stage} if stage else {})}
        record.update({k: _jsonable(v) for k, v in metrics.items()})
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    @staticmethod
    def read(path: Path) -> list[dict[str, Any]]:
        path = Path(path)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    @staticmethod
    def truncate(path: Path, n_records: int, stage: str | None = None) -> None:
        """Rewind to a checkpoint: drop the records after the first ``n_records`` that belong to ``stage``.

        Records of other stages are kept, so restoring a finished stage's weights later in a run does not
        erase what the stages after it logged. ``stage=None`` drops every record after ``n_records``.
        """
        path = Path(path)
        if not path.exists():
            return
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        tail = [ln for ln in lines[n_records:] if stage is not None and json.loads(ln).get("stage") != stage]
        path.write_text("".join(line + "\n" for line in lines[:n_records] + tail))


class WandbLogger:
    """Weights & Biases, offline by default (``logger.wandb.mode=online`` to sync)."""

    def __init__(self, run_dir: Path, cfg: Mapping[str, Any], project: str, entity: str | None,
                 mode: str, tags: list[str], name: str):
        wandb = require("wandb", "dev", "logger 'wandb'")
        self._run = wandb.init(project=project, entity=entity, mode=mode, dir=str(run_dir), config=dict(cfg),
                               name=name, tags=list(tags), reinit=True)

    def log(self, metrics: Mapping[str, float], step: int, stage: str | None = None) -> None:
        prefix = f"{stage}/" if stage else ""
        self._run.log({prefix + k: _jsonable(v) for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        self._run.finish()


class TensorboardLogger:
    """TensorBoard event files under ``<run dir>/tensorboard``."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self._w = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, metrics: Mapping[str, float], step: int, stage: str | None = None) -> None:
        prefix = f"{stage}/" if stage else ""
        for k, v in metrics.items():
            v = _jsonable(v)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                self._w.add_scalar(prefix + k, v, step)
        self._w.flush()

    def close(self) -> None:
        self._w.close()
