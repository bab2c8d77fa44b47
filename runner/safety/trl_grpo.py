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

With ``algorithm.lora`` the trainer gets a PEFT config: it trains the adapter, takes the base with the adapter
disabled as the KL reference, and checkpoints the adapter (:func:`finished_policy` reloads it). Launched with
several processes (:mod:`runner.core.launch`), TRL runs data-parallel through accelerate; rank 0 prepares the
output folder and writes the markers, and :class:`ReplicaDigest` logs each rank's parameter digest.

Imported lazily: it imports TRL at module level.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer
from trl.trainer.utils import RepeatSampler

from runner.core import distributed, report
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
        if not self.args.should_save:  # rank 0 writes the marker, after its part of the checkpoint
            return
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
    if not distributed.is_main():  # rank 0 prepares the folder and the log; the others follow its choice
        distributed.barrier()
        resume, step = distributed.broadcast_object((None, 0))
        mark = Path(resume) / MARKER if resume is not None else output_dir / START
        if mark.exists():  # every rank logs the same records, so rank 0's count rewinds this rank's log too
            JsonlLogger.truncate(metrics_path, int(json.loads(mark.read_text())["n_metric_records"]))
        return resume, step
    resume, step = _prepare(output_dir, metrics_path)
    distributed.barrier()
    return distributed.broadcast_object((resume, step))


def _prepare(output_dir: Path, metrics_path: Path) -> tuple[str | None, int]:
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


def finished_policy(model: Any, checkpoint: str, lora: bool) -> Any:
    """The final policy of a GRPO run that had finished before the run was stopped: the checkpoint's weights,
    or (LoRA) its adapter merged into ``model``."""
    if lora:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, checkpoint).merge_and_unload()
    return type(model).from_pretrained(checkpoint, dtype=model.dtype).to(model.device)


class ReplicaDigest(TrainerCallback):
    """In a data-parallel run, log each rank's parameter digest after every step (to its own metric log): equal
    digests show that the replicas stayed identical."""

    def __init__(self, log: Any):
        self.log = log

    def _log(self, state: Any, model: Any) -> None:
        if distributed.world_size() > 1 and model is not None:
            params = [p for p in model.parameters() if p.requires_grad]
            self.log({"param_digest": distributed.parameter_digest(params)}, state.global_step, "grpo_replica")

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.global_step == 0:  # the initial replicas (a resumed run logged its step already)
            self._log(state, model)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._log(state, model)
