"""TRL's ``GRPOTrainer`` resumable inside a run directory, so a killed run ends with the same numbers.

transformers' Trainer checkpoints weights, optimizer, schedule, global RNGs (which drive generation)
and the step. Three things it leaves out decide what a resumed GRPO run does next:

- **Prompt order.** TRL's ``RepeatSampler`` draws one permutation per epoch from a generator seeded
  once, so a run resumed in epoch e > 0 replays epoch 0's order. :class:`EpochSeededRepeatSampler`
  seeds each epoch's permutation with ``seed + epoch`` (the Trainer calls ``set_epoch``), so the order
  depends on the epoch alone.
- **The run's metric log.** A checkpoint records how many records ``metrics.jsonl`` held; resuming
  truncates the log there, so nothing logged after the checkpoint appears twice.
- **Completeness.** That record is written last, so a checkpoint without it (a kill during the save) is
  never resumed from; ``save_total_limit=2`` keeps the previous complete one until then.

Imported lazily: it imports TRL at module level.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

from runner.core import report
from runner.core.logging import JsonlLogger

MARKER = "runner_checkpoint.json"  # written last into a checkpoint folder: it is complete
START = "runner_start.json"  # the metric-log position when the stage first started


class EpochSeededRepeatSampler(RepeatSampler):
    """``RepeatSampler`` whose permutation in epoch e is drawn from a generator seeded with ``seed + e``."""

    def set_epoch(self, epoch: int) -> None:
        if self.shuffle:
            self.generator.manual_seed(int(self.seed or 0) + int(epoch))


class RunDirGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with an epoch-seeded prompt order and checkpoints that record the metric-log position."""

    def __init__(self, *args: Any, metrics_path: Path, **kwargs: Any):
        self.metrics_path = Path(metrics_path)
        super().__init__(*args, **kwargs)

    def _get_train_sampler(self, dataset: Any = None) -> EpochSeededRepeatSampler:
        s = super()._get_train_sampler(dataset)
        return EpochSeededRepeatSampler(s.data_source, mini_repeat_count=s.mini_repeat_count,
                                        batch_size=s.batch_size, repeat_count=s.repeat_count,
                                        shuffle=s.shuffle, seed=s.seed)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        folder = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        report.write_json(folder / MARKER, {"step": self.state.global_step,
                                            "n_metric_records": _n_records(self.metrics_path)})


def _n_records(metrics_path: Path) -> int:
    return len(JsonlLogger.read(metrics_path))


def _checkpoint_step(path: Path) -> int:
    return int(path.name.rsplit("-", 1)[1])


def resume_point(output_dir: Path, metrics_path: Path) -> tuple[str | None, int]:
    """Prepare ``output_dir`` (the trainer's) for a (re)start; returns (checkpoint to resume from, its step).

    The newest complete checkpoint is resumed from and ``metrics_path`` is rewound to what it had logged;
    incomplete checkpoints are deleted. With no complete checkpoint the log is rewound to where the stage
    first started, and that position is recorded for a later restart.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    folders = sorted((p for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir()), key=_checkpoint_step)
    complete = [p for p in folders if (p / MARKER).exists()]
    for p in folders:
        if not (p / MARKER).exists():
            shutil.rmtree(p)
    if complete:
        state = json.loads((complete[-1] / MARKER).read_text())
        JsonlLogger.truncate(metrics_path, int(state["n_metric_records"]))
        return str(complete[-1]), int(state["step"])
    start = output_dir / START
    if start.exists():
        JsonlLogger.truncate(metrics_path, int(json.loads(start.read_text())["n_metric_records"]))
    else:
        report.write_json(start, {"n_metric_records": _n_records(metrics_path)})
    return None, 0
