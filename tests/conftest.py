"""Shared fixtures: every test runs offline, with a fresh Hydra state."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Tiny models gain nothing from intra-op threads, and OpenMP's spin-waiting makes two 2-thread processes on
# 2 cores (a test and the subprocess it starts) dozens of times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _clear_hydra():
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    yield
    GlobalHydra.instance().clear()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m runner ARGS`` in a subprocess from the repository root."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None) if env is None or "HYDRA_FULL_ERROR" not in env else None
    return subprocess.run([sys.executable, "-m", "runner", *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def kill_runner_when(args: Sequence[str], ready: Callable[[], bool], timeout: float = 300) -> None:
    """Start ``python -m runner ARGS`` and SIGKILL its process group as soon as ``ready()`` holds (a kill -9 in the
    middle of a run); fails if the run ends first or ``timeout`` seconds pass."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "runner", *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        try:
            deadline = time.time() + timeout
            while not ready():
                if proc.poll() is not None:
                    err.seek(0)
                    raise AssertionError(f"the run ended before it could be killed: {err.read()[-2000:]}")
                assert time.time() < deadline, f"the run was not ready to be killed after {timeout} s"
                time.sleep(0.01)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def resume_and_compare(args: Sequence[str], killed: Path, clean: Path) -> tuple[dict, dict]:
    """Resume the killed run in ``killed`` and run it uninterrupted in ``clean``; both must finish, only the first
    as a resume, with equal comparable results (runner.core.report) and byte-identical metric logs. Returns the
    two results.json."""
    from runner.core.report import comparable_results

    for run_dir in (killed, clean):
        proc = run_cli(*args, f"run.dir={run_dir}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((killed / "results.json").read_text())
    b = json.loads((clean / "results.json").read_text())
    assert a["run"]["resumed"] is True and b["run"]["resumed"] is False
    assert comparable_results(a) == comparable_results(b)
    assert (killed / "metrics.jsonl").read_text() == (clean / "metrics.jsonl").read_text()
    return a, b


def install_fake_vllm(monkeypatch: pytest.MonkeyPatch, llm_cls: type) -> Any:
    """Put a fake ``vllm`` module (``LLM`` = ``llm_cls``, ``SamplingParams`` recording its keywords) in
    sys.modules for one test, outside any distributed world, so the engine can be tested behind its interface."""
    import types

    fake = types.ModuleType("vllm")
    fake.LLM = llm_cls
    fake.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    outside_distributed_world(monkeypatch)
    return fake


def outside_distributed_world(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset the torch.distributed variables for one test and restore them after it, also those the code under test
    sets (a colocated vLLM engine sets them; leaked, MASTER_PORT makes later trainers in the process bind one port)."""
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(var, "")  # recorded, so monkeypatch restores the original state (absent or not)
        monkeypatch.delenv(var)


def logged_records(path: Path) -> list[dict]:
    """What a (possibly running) process has written to ``metrics.jsonl``; a half-written last line is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
