"""The command line: Hydra composition, recipe registration, preflight validation and the run itself.

``python -m runner +recipe=NAME [overrides]`` → compose → validate → run context → the method's
``run(cfg, ctx)`` → ``results.json``. Before Hydra creates any directory, every job the command line
describes (one, or each point of a ``-m`` sweep) is composed and validated here, so a bad config exits
with status 2 and one line on stderr and leaves nothing behind.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from runner import CONF_DIR, RECIPES_DIR
from runner.core import registry
from runner.core.config import apply_private, apply_smoke, available_recipes, validate
from runner.core.errors import ConfigError

_PROCESS_TAG = secrets.token_hex(3)
_STAMP = time.strftime("%Y-%m-%d/%H-%M-%S")


# --------------------------------------------------------------------------- registration
def _recipe_name() -> str:
    from hydra.core.hydra_config import HydraConfig

    try:
        return str(HydraConfig.get().runtime.choices.get("recipe") or "run")
    except ValueError:
        return "run"


def _run_dir(run_dir: str | None, root: str) -> str:
    """A fresh directory ``<root>/runs/<date>/<time>_<recipe>_<tag>`` unless ``run.dir`` names one."""
    if run_dir:
        return run_dir
    return f"{root}/runs/{_STAMP}_{_recipe_name()}_{_PROCESS_TAG}"


def _sweep_dir(root: str) -> str:
    return f"{root}/sweeps/{_STAMP}_{_recipe_name()}_{_PROCESS_TAG}"


def register() -> None:
    """Register resolvers and expose ``recipes/*.yaml`` as Hydra's config group ``recipe`` (idempotent)."""
    from hydra.core.config_store import ConfigStore

    if not OmegaConf.has_resolver("runner_run_dir"):
        OmegaConf.register_new_resolver("runner_run_dir", _run_dir)
        OmegaConf.register_new_resolver("runner_sweep_dir", _sweep_dir)
    cs = ConfigStore.instance()
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        node = OmegaConf.load(path)
        cs.store(group="recipe", name=path.stem, node=node, package="_global_", provider="runner")


# --------------------------------------------------------------------------- composition
def compose(overrides: Sequence[str]) -> DictConfig:
    """Compose the job config for ``overrides`` with Hydra's compose API (hydra node kept for choices)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def prepare(cfg: DictConfig) -> DictConfig:
    """From a composed config to a validated run config: recipe guard, run name, smoke overrides, schemas."""
    from hydra.core.hydra_config import HydraConfig

    choices: dict[str, Any] = {}
    task_overrides: list[str] = []
    if "hydra" in cfg:
        choices = dict(cfg.hydra.runtime.choices)
        task_overrides = list(cfg.hydra.overrides.task)
    elif HydraConfig.initialized():
        choices = dict(HydraConfig.get().runtime.choices)
        task_overrides = list(HydraConfig.get().overrides.task)
    explicit = {o.split("=", 1)[0].lstrip("+~") for o in task_overrides}
    if "recipe" in cfg:
        raise ConfigError(
            "'recipe' arrived as a plain key, not a selected recipe option: the recipe group was not "
            f"registered (available recipes: {', '.join(available_recipes())})"
        )
    if not choices.get("recipe") and cfg.get("algorithm") is None:
        raise ConfigError(f"no recipe selected: use +recipe=NAME (available: {', '.join(available_recipes())})")
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg.copy()
    OmegaConf.set_struct(cfg, True)
    if cfg.get("run") is not None and cfg.run.get("name") is None:
        with _open_struct(cfg):
            cfg.run.name = choices.get("recipe") or "run"
    cfg = apply_smoke(apply_private(cfg, explicit), explicit)
    return validate(cfg)


class _open_struct:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def __enter__(self):
        OmegaConf.set_struct(self.cfg, False)

    def __exit__(self, *exc):
        OmegaConf.set_struct(self.cfg, True)


def compose_recipe(recipe: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The validated config of ``+recipe=NAME overrides`` (for tests and notebooks); ConfigError if bad."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return _compose_job([f"+recipe={recipe}", *overrides])
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(one_line(e)) from e


# --------------------------------------------------------------------------- running
def execute(cfg: DictConfig, run_dir: Path | str) -> dict[str, Any]:
    """Run a validated config in ``run_dir``: open the context, dispatch to the method, write results."""
    from runner.core.context import RunContext

    ctx = RunContext.open(cfg, run_dir)
    try:
        method = registry.get("algorithm", cfg.algorithm.name)
        results = method(cfg, ctx)
        if not isinstance(results, dict):
            raise TypeError(f"algorithm '{cfg.algorithm.name}' returned {type(results).__name__}, expected a dict")
        return ctx.finish(results)
    finally:
        ctx.close()


def run_recipe(recipe: str, overrides: Sequence[str] = (), run_dir: Path | str | None = None) -> dict[str, Any]:
    """Compose, validate and run a recipe in this process; returns the results written to ``results.json``."""
    cfg = compose_recipe(recipe, overrides)
    if run_dir is None:
        run_dir = _run_dir(cfg.run.dir, cfg.run.output_root)
    return execute(cfg, run_dir)


def _hydra_task(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    run_cfg = prepare(cfg)
    try:
        execute(run_cfg, HydraConfig.get().runtime.output_dir)
    except Exception as e:  # errors found only while running (a data file, model weights, a tokenizer)
        if not _is_config_error(e):
            raise
        fail(_first_line(e))


def _is_config_error(e: BaseException) -> bool:
    """A ConfigError (a DataError too), or a model / tokenizer that could not be loaded as configured."""
    from runner.models.builder import ModelLoadError

    return isinstance(e, (ConfigError, ModelLoadError))


def _first_line(e: BaseException) -> str:
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)


# --------------------------------------------------------------------------- preflight
_SKIP_PREFLIGHT = {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "--resolve",
                   "--shell-completion", "-sc", "--package", "-p", "--experimental-rerun",
                   "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd"}


def _expand_jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """Every job's override list: the cartesian product of sweep overrides under ``-m``, else one job."""
    if not multirun:
        return [overrides]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    axes: list[list[str]] = []
    for o in parsed:
        if o.is_sweep_override():
            axes.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    return [list(job) for job in itertools.product(*axes)]


def one_line(e: BaseException) -> str:
    """A Hydra/OmegaConf composition error as one readable line."""
    from hydra.errors import MissingConfigException

    msg = str(e)
    if isinstance(e, MissingConfigException):
        m = re.search(r"Could not find '([^']+)'", msg)
        missing = m.group(1) if m else (e.missing_cfg_file or "?")
        group, _, option = missing.rpartition("/")
        options = list(e.options or [])
        if not options:
            found = re.search(r"Available options in '[^']+':\s*(.*)", msg, re.S)
            options = found.group(1).split() if found else []
        if group:
            return f"unknown option '{option}' for group '{group}' (allowed: {', '.join(options) or 'none'})"
        return f"config '{missing}' not found"
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "reference_type="))]
    return "; ".join(lines) or type(e).__name__


def _compose_job(job: list[str]) -> DictConfig:
    """Compose and validate one job. An override of a key the config lacks is retried as an addition,
    so the schema (not Hydra's struct check) reports it, naming the allowed keys."""
    from hydra.errors import ConfigCompositionException

    try:
        return prepare(compose(job))
    except ConfigCompositionException as e:
        m = re.match(r"Could not override '([^']+)'", str(e))
        if not m or "To append" not in str(e):
            raise
        key = m.group(1)
        retry = [f"+{o}" if o.split("=")[0] == key else o for o in job]
        try:
            prepare(compose(retry))
        except ConfigError:
            raise
        except Exception:
            raise e from None
        raise


def preflight(argv: Sequence[str]) -> list[DictConfig]:
    """Compose and validate every job described by ``argv``; exit 2 with one line on the first bad one.
    Returns the validated configs."""
    if any(a.split("=")[0] in _SKIP_PREFLIGHT for a in argv):
        return []
    multirun = any(a in ("-m", "--multirun") for a in argv)
    overrides = [a for a in argv if not a.startswith("-")]
    user = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    cfgs: list[DictConfig] = []
    try:
        for job in _expand_jobs(user, multirun):
            cfg = _compose_job(job)
            cfgs.append(cfg)
            if multirun and cfg.hardware.launcher != "none":
                raise ConfigError("hardware.launcher starts one run's processes; it cannot be combined with -m")
            _check_inputs(cfg)
            from runner.rollout.budget import check_gpu_layout

            check_gpu_layout(cfg)  # vLLM tensor parallelism vs processes, GPU memory of engines + training
            if cfg.run.dir:
                from runner.core.context import check_resumable

                check_resumable(cfg, Path(cfg.run.dir))
    except ConfigError as e:
        fail(_first_line(e))
    except Exception as e:  # composition errors from Hydra or OmegaConf
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(e, (HydraException, OmegaConfBaseException)):
            fail(one_line(e))
        raise
    finally:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
    return cfgs


def _check_inputs(cfg: DictConfig) -> None:
    """Open every local input the run will read: each data file is parsed and checked in full, local model
    weights must exist. A problem is a ConfigError, reported before any run directory exists."""
    from runner.data.preflight import check_data

    check_data(cfg)
    model = cfg.get("model")
    if model is not None and model.get("kind") == "hf" and model.get("path") and not Path(model.path).exists():
        raise ConfigError(f"model.path {model.path} does not exist (local weights expected there)")


def fail(message: str) -> None:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise
    print(f"config error: {message}", file=sys.stderr)
    sys.exit(2)


def _quiet_libraries() -> None:
    """Silence import-time noise of optional libraries (torchao's CUDA-only kernels on CPU machines)."""
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _maybe_launch(cfg: DictConfig, argv: list[str]) -> None:
    """With ``hardware.launcher`` set (outside a launched process): start the run's processes, or print the
    launch line with ``hardware.print_launch``, and exit with their status."""
    from runner.core.launch import launch_line, needs_launch, relaunch

    if not needs_launch(cfg):
        return
    run_dir = cfg.run.dir or f"{cfg.run.output_root}/runs/{_STAMP}_{cfg.run.name}_{_PROCESS_TAG}"
    if cfg.hardware.print_launch:
        print(launch_line(cfg, argv, run_dir))
        sys.exit(0)
    sys.exit(relaunch(cfg, argv, run_dir))


def main(argv: Sequence[str] | None = None) -> None:
    import hydra

    _quiet_libraries()
    argv = list(sys.argv[1:] if argv is None else argv)
    register()
    cfgs = preflight(argv)
    if len(cfgs) == 1:
        _maybe_launch(cfgs[0], argv)
    from runner.core.sweep import pin_sweep_dir

    argv = pin_sweep_dir(argv)  # one sweep folder for all jobs, whichever process a launcher runs them in
    sys.argv = [sys.argv[0], *argv]
    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_hydra_task)()
