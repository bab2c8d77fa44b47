"""Preflight of a run's local data files: each one is opened, parsed and checked before anything is written.

The CLI calls :func:`check_data` on every composed job. A benchmark option (``dataset=xstest``, the paper
options) or a moderation option (``params.format``) names its files; each is read completely with the
loader the run will use (:func:`runner.data.files.read_table` keeps the parsed table, so the run does not
parse it twice) and any problem is a :class:`~runner.data.files.DataError`, i.e. exit 2 with one line.
"""

from __future__ import annotations

from omegaconf import DictConfig

from runner.data.moderation import moderation_files, read_moderation
from runner.data.safety import benchmark_files, read_benchmark


def data_files(dataset_cfg: DictConfig) -> list[tuple[str, str]]:
    """(loader or format, path) of every local data file a safety or moderation dataset option reads."""
    if "eval" in dataset_cfg or "train" in dataset_cfg:
        return benchmark_files(dataset_cfg)
    if "format" in (dataset_cfg.get("params") or {}):
        return moderation_files(dataset_cfg)
    return []


def check_data(cfg: DictConfig) -> None:
    """Read and check every local data file of ``cfg.dataset`` with its loader; DataError on the first bad one."""
    dataset_cfg = cfg.get("dataset")
    if dataset_cfg is None:
        return
    moderation = "eval" not in dataset_cfg and "train" not in dataset_cfg
    for kind, path in data_files(dataset_cfg):
        if moderation:
            read_moderation(kind, path)
        else:
            read_benchmark(kind, path)
