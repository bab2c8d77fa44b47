"""The run context: everything a method needs from the runner, in one object.

``RunContext.open(cfg, run_dir)`` seeds every RNG, prepares the run directory (refusing to mix runs),
opens the metric loggers and the checkpointer. A method receives it as ``run(cfg, ctx)`` and returns its
final results; ``ctx.finish(results)`` writes ``results.json`` and ``summary.md``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner.core import distributed, report
from runner.core.checkpoint import Checkpointer
from runner.core.claims import claims_markdown, evaluate_claims
from runner.core.errors import ConfigError
from runner.core.logging import JsonlLogger, MetricLogger
from runner.core.seeding import seed_everything

CONFIG_FILE = "run_config.yaml"
_IGNORED_ON_RESUME = ("run.resume", "run.dir", "run.progress", "claims")  # claims judge results, not make them


def _config_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    fa, fb = report.flatten(a), report.flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k) and not k.startswith(_IGNORED_ON_RESUME))


class RunContext:
    """Run directory, seeded RNGs, metric loggers, checkpointer, progress bars and plots of one run."""

    def __init__(self, cfg: DictConfig, run_dir: Path, resumed: bool, loggers: list[MetricLogger],
                 metrics_path: Path | None = None, checkpoints: Checkpointer | None = None):
        self.cfg = cfg
        self.dir = Path(run_dir)
        self.seed: int = int(cfg.seed)
        self.resumed = resumed
        self._loggers = loggers
        # rank 0 writes the run's files; another rank of a multi-process run keeps only its own metric log and
        # reads rank 0's checkpoints (the replicas are equal, and every rank logs the same number of records)
        self.is_main = distributed.is_main()
        self.metrics_path = Path(metrics_path) if metrics_path is not None else self.dir / "metrics.jsonl"
        self.checkpoints = checkpoints or Checkpointer(self.dir / "checkpoints", keep=cfg.run.checkpoint_keep,
                                                       metrics_path=self.metrics_path)
        self.plots: list[Path] = []
        self.notes: list[str] = []  # Markdown paragraphs a method adds to summary.md's notes
        self._t0 = time.time()

    # ----------------------------------------------------------------- lifecycle
    @classmethod
    def open(cls, cfg: DictConfig, run_dir: Path | str) -> RunContext:
        """Prepare ``run_dir`` for ``cfg``: a new run, or a resumed one if it holds this config's checkpoints."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        plain = OmegaConf.to_container(cfg, resolve=True)
        distributed.init(cfg.hardware.device)  # a launched multi-process run: join its process group
        main = distributed.is_main()
        resumed = check_resumable(cfg, run_dir) if main else False
        if main and not resumed:
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)  # left by a run that failed before a checkpoint
            OmegaConf.save(cfg, run_dir / CONFIG_FILE, resolve=True)
        # another rank reads rank 0's checkpoints as they are now, before rank 0 can write new ones
        snapshot = None if main else Checkpointer(run_dir / "checkpoints", keep=cfg.run.checkpoint_keep,
                                                  read_only=True)
        distributed.barrier()
        resumed = distributed.broadcast_object(resumed)
        metrics_path = run_dir / "metrics.jsonl" if main else rank_log(run_dir, distributed.rank())
        if not resumed:
            metrics_path.unlink(missing_ok=True)
        _set_threads(cfg)
        seed_everything(int(cfg.seed))
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        loggers: list[MetricLogger] = [JsonlLogger(metrics_path)]
        if main:
            loggers += _open_backends(cfg, run_dir, plain)
        if snapshot is not None:
            snapshot.metrics_path = metrics_path
        return cls(cfg, run_dir, resumed, loggers, metrics_path, snapshot)

    def finish(self, results: Mapping[str, Any], notes: str = "") -> dict[str, Any]:
        """Write ``results.json`` (with the recipe's claims judged on it) and ``summary.md``; close the loggers.

        The claims are judged here, by core, on the results exactly as written; the method never judges
        itself. Returns what was written.
        """
        reserved = {"claims", "claims_info"} & set(results)
        if reserved:
            raise ValueError(f"results may not contain {sorted(reserved)}: core writes the claims")
        out = dict(results)
        out.setdefault("run", {})
        out["run"] = {**out["run"], "name": self.cfg.run.name, "seed": self.seed, "dir": str(self.dir),
                      "resumed": self.resumed, "wall_seconds": round(time.time() - self._t0, 3)}
        holds, info = evaluate_claims(self.cfg.get("claims"), report.jsonable(out))
        if holds:
            out["claims"], out["claims_info"] = holds, info
        if not self.is_main:
            self.close()
            return out
        report.write_json(self.dir / "results.json", out)
        choices = {g: self.cfg[g].name for g in ("algorithm", "model", "dataset", "hardware", "privacy")}
        choices["seed"] = self.seed
        notes = "\n\n".join(n for n in (*self.notes, notes) if n)
        report.write_summary(self.dir / "summary.md", f"Run {self.cfg.run.name}", results, choices,
                             self.plots, notes, claims=claims_markdown(info) if info else "")
        self.close()
        return out

    def close(self) -> None:
        for logger in self._loggers:
            logger.close()
        self._loggers = []

    # ----------------------------------------------------------------- metrics
    def log(self, metrics: Mapping[str, float], step: int, stage: str | None = None) -> None:
        """Log one step's metrics to every selected logger (jsonl always)."""
        for logger in self._loggers:
            logger.log(metrics, step, stage)

    def metrics(self, stage: str | None = None) -> list[dict[str, Any]]:
        """The records logged so far (optionally of one stage), read back from ``metrics.jsonl``."""
        records = JsonlLogger.read(self.metrics_path)
        return [r for r in records if stage is None or r.get("stage") == stage]

    # ----------------------------------------------------------------- checkpoints
    def restore(self, stage: str) -> dict[str, Any] | None:
        """The newest checkpoint state of ``stage`` (rewinding ``metrics.jsonl`` to it), or None."""
        ckpt = self.checkpoints.load(stage)
        if ckpt is None:
            return None
        JsonlLogger.truncate(self.metrics_path, ckpt["n_metric_records"], stage)
        return ckpt["state"]

    def save(self, stage: str, step: int, state: dict[str, Any]) -> Path:
        return self.checkpoints.save(stage, step, state)

    # ----------------------------------------------------------------- output helpers
    def path(self, *parts: str) -> Path:
        """A path inside the run directory (parents created)."""
        p = self.dir.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def progress(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 initial: int = 0, leave: bool = False):
        """A tqdm progress bar (disabled with ``run.progress=false``)."""
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, initial=initial, leave=leave, mininterval=1.0,
                    disable=not self.cfg.run.progress, dynamic_ncols=True)

    def plot(self, name: str, series: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str,
             ylabel: str, title: str | None = None, **kw: Any) -> Path:
        """Save a PNG ``<run dir>/<name>.png`` with one curve per series; listed in ``summary.md``."""
        if not self.is_main:
            return self.dir / f"{name}.png"
        p = report.plot_curves(self.path(f"{name}.png"), series, xlabel, ylabel, title, **kw)
        if p not in self.plots:
            self.plots.append(p)
        return p

    def write_json(self, name: str, data: Mapping[str, Any]) -> Path:
        if not self.is_main:
            return self.dir / name
        return report.write_json(self.path(name), data)

    def write_jsonl(self, name: str, rows: Iterable[Mapping[str, Any]]) -> Path:
        p = self.dir / name
        if not self.is_main:
            return p
        p = self.path(name)
        with p.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(report._clean(row)) + "\n")
        return p

    @property
    def device(self):
        import torch

        want = self.cfg.hardware.device
        if want == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(want)


def rank_log(run_dir: Path, rank: int) -> Path:
    """The private metric log of a non-zero rank of a multi-process run."""
    return Path(run_dir) / "ranks" / f"rank{rank}" / "metrics.jsonl"


def check_resumable(cfg: DictConfig, run_dir: Path) -> bool:
    """True if ``run_dir`` holds a run of this same config (to resume); ConfigError if it holds another."""
    saved_cfg = Path(run_dir) / CONFIG_FILE
    if not saved_cfg.exists() or not _holds_run(Path(run_dir)):
        return False  # nothing to protect: a run that failed before its first checkpoint is simply rerun
    if cfg.run.resume == "never":
        raise ConfigError(f"run directory {run_dir} already holds a run and run.resume=never")
    before = OmegaConf.to_container(OmegaConf.load(saved_cfg), resolve=True)
    diff = _config_diff(before, OmegaConf.to_container(cfg, resolve=True))
    if diff:
        raise ConfigError(
            f"run directory {run_dir} holds a run with a different config ({', '.join(diff[:5])}); "
            "resume it with the same config or choose a new run.dir"
        )
    return True


def _holds_run(run_dir: Path) -> bool:
    """A directory holds a run worth protecting once it has a checkpoint or results."""
    ckpts = run_dir / "checkpoints"
    return (run_dir / "results.json").exists() or (ckpts.is_dir() and any(ckpts.iterdir()))


def _set_threads(cfg: DictConfig) -> None:
    n = cfg.hardware.get("num_threads")
    if n:
        import torch

        torch.set_num_threads(int(n))
        os.environ.setdefault("OMP_NUM_THREADS", str(n))


def _open_backends(cfg: DictConfig, run_dir: Path, plain: dict[str, Any]) -> list[MetricLogger]:
    from runner.core import registry

    out: list[MetricLogger] = []
    for backend in cfg.logger.backends:
        cls = registry.get("logger", backend)
        if backend == "wandb":
            w = cfg.logger.wandb
            out.append(cls(run_dir, plain, w.project, w.entity, w.mode, list(w.tags), cfg.run.name))
        else:
            out.append(cls(run_dir))
    return out
