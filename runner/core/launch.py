"""Multi-process runs: ``hardware.launcher`` (``none|auto|torchrun|accelerate``) and ``hardware.nproc``.

``python -m runner +recipe=... hardware=gpu8`` with a launcher set re-executes itself under that launcher,
used as a library (``torch.distributed.run`` for torchrun, ``accelerate.commands.launch`` for accelerate),
with ``nproc`` processes running ``python -m runner`` with the same overrides and one pinned ``run.dir``.
``hardware.print_launch=true`` prints the launch line instead of running it. Inside, each process sees
``RANK``/``WORLD_SIZE`` and the run is data-parallel (:mod:`runner.core.distributed`; TRL through
accelerate). ``hardware.accelerate_config`` names an accelerate config file (FSDP or DeepSpeed ZeRO-3 for
the paper-scale full fine-tuning, ``conf/accelerate/``); accelerate launches CPU processes with mpirun, so
on CPU the launcher is torchrun (gloo).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runner.core.errors import ConfigError

LAUNCHERS = ("none", "auto", "torchrun", "accelerate")
# the trainers whose step is data-parallel (gradients all-reduced, rollouts sharded by rank); ``auto`` launches
# torchrun for these and runs every other recipe (evaluation, guard, FL) in one process
DATA_PARALLEL = ("safety_rl", "waltzrl")


def launcher(cfg: Any) -> str:
    """The launcher this run uses: ``hardware.launcher``, with ``auto`` resolved by the algorithm."""
    name = cfg.hardware.launcher
    if name == "auto":
        return "torchrun" if cfg.algorithm.name in DATA_PARALLEL and num_processes(cfg.hardware) > 1 else "none"
    return name


def inside_launch() -> bool:
    """True in a process started by a launcher: torchrun (also under ``accelerate launch``) sets
    ``TORCHELASTIC_RUN_ID``; any launcher sets ``WORLD_SIZE`` > 1 (a colocated vLLM engine only defaults it to 1)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


def num_processes(hw: Any) -> int:
    """Processes on this node: ``hardware.nproc``, else one per GPU (one on CPU)."""
    if hw.get("nproc"):
        return int(hw.nproc)
    return max(1, int(hw.num_gpus)) if hw.device != "cpu" else 1


def check_launch(cfg: Any) -> None:
    """Cross-field checks of the launcher keys (ConfigError naming the key)."""
    hw = cfg.hardware
    if hw.launcher not in LAUNCHERS:
        raise ConfigError(f"bad value for hardware.launcher: '{hw.launcher}' (allowed: {', '.join(LAUNCHERS)})")
    if hw.nproc is not None and hw.nproc < 1:
        raise ConfigError(f"hardware.nproc={hw.nproc} must be >= 1")
    if hw.launcher in ("none", "auto") and hw.nproc and hw.nproc > 1 and launcher(cfg) == "none":
        raise ConfigError(f"hardware.nproc={hw.nproc} needs hardware.launcher=torchrun or accelerate")
    if hw.launcher in ("torchrun", "accelerate") and cfg.algorithm.name not in DATA_PARALLEL:
        raise ConfigError(f"hardware.launcher={hw.launcher}: algorithm {cfg.algorithm.name} runs in one process "
                          f"(data-parallel: {', '.join(DATA_PARALLEL)}); set hardware.launcher=none")
    if launcher(cfg) == "none":
        return
    n = num_processes(hw)
    if hw.device == "cuda" and n > hw.num_gpus:
        raise ConfigError(f"hardware.nproc={n} exceeds hardware.num_gpus={hw.num_gpus} (one process per GPU)")
    if hw.launcher == "accelerate" and hw.device == "cpu":
        raise ConfigError("hardware.launcher=accelerate launches CPU processes with mpirun; on CPU use "
                          "hardware.launcher=torchrun (gloo)")
    if hw.accelerate_config:
        _check_accelerate_config(cfg)
    if hw.rollout_engine == "vllm" and n % hw.tensor_parallel_size:
        raise ConfigError(f"hardware.tensor_parallel_size={hw.tensor_parallel_size} must divide the number of "
                          f"processes ({n}): TRL's colocated vLLM groups ranks by tensor-parallel size")


def accelerate_config_path(name: str) -> Path:
    """``hardware.accelerate_config`` as a path: as given, or relative to the project (``conf/accelerate/...``)."""
    from runner import PROJECT_ROOT

    p = Path(name)
    return p if p.is_absolute() or p.exists() else PROJECT_ROOT / p


def _check_accelerate_config(cfg: Any) -> None:
    import importlib.util

    import yaml

    hw = cfg.hardware
    if hw.launcher != "accelerate":
        raise ConfigError("hardware.accelerate_config needs hardware.launcher=accelerate")
    if cfg.algorithm.name != "safety_rl":
        raise ConfigError(f"hardware.accelerate_config (FSDP / ZeRO-3) shards TRL's trainer (safety_rl); "
                          f"{cfg.algorithm.name}'s trainer is data-parallel only: use hardware.launcher=torchrun")
    path = accelerate_config_path(hw.accelerate_config)
    if not path.exists():
        raise ConfigError(f"hardware.accelerate_config {hw.accelerate_config} does not exist")
    kind = (yaml.safe_load(path.read_text()) or {}).get("distributed_type")
    if kind == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"hardware.accelerate_config {hw.accelerate_config} uses DeepSpeed: pip install deepspeed")


def launcher_args(cfg: Any, argv: Sequence[str], run_dir: str) -> list[str]:
    """The launcher's own argument list for re-running ``python -m runner argv`` in ``run.dir=run_dir``."""
    hw = cfg.hardware
    n = num_processes(hw)
    child = [a for a in argv if not a.startswith(("run.dir=", "hardware.print_launch="))] + [f"run.dir={run_dir}"]
    if launcher(cfg) == "torchrun":
        return ["--standalone", f"--nproc_per_node={n}", "-m", "runner", *child]
    args = ["--num_processes", str(n), "--num_machines", "1"]
    if hw.accelerate_config:
        args += ["--config_file", str(accelerate_config_path(hw.accelerate_config))]
    elif n > 1:
        args += ["--multi_gpu"]
    if hw.dtype in ("bfloat16", "float16"):
        args += ["--mixed_precision", "bf16" if hw.dtype == "bfloat16" else "fp16"]
    return [*args, "-m", "runner", *child]


def launch_line(cfg: Any, argv: Sequence[str], run_dir: str) -> str:
    """The shell command that starts the run's processes."""
    prog = ["torchrun"] if launcher(cfg) == "torchrun" else ["accelerate", "launch"]
    return shlex.join([*prog, *launcher_args(cfg, argv, run_dir)])


def needs_launch(cfg: Any) -> bool:
    return launcher(cfg) != "none" and not inside_launch()


def relaunch(cfg: Any, argv: Sequence[str], run_dir: str) -> int:
    """Start the run's processes under the configured launcher and wait for them; the exit status."""
    args = launcher_args(cfg, argv, run_dir)
    print(f"launch: {launch_line(cfg, argv, run_dir)}", file=sys.stderr, flush=True)
    if launcher(cfg) == "torchrun":
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import parse_args, run

        try:
            run(parse_args(args))
        except ChildFailedError as e:
            print(f"launch: a process failed ({', '.join(str(f.exitcode) for f in e.failures.values())})",
                  file=sys.stderr)
            return 1
        return 0
    import subprocess

    from accelerate.commands.launch import launch_command, launch_command_parser

    try:
        launch_command(launch_command_parser().parse_args(args))
    except subprocess.CalledProcessError as e:
        return e.returncode or 1
    return 0
