"""Multi-process training on CPU (gloo) under torchrun: data-parallel REINFORCE++ on LoRA adapters, and
2-process smokes of safety_rl and waltzrl with LoRA started by ``hardware.launcher=torchrun``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
       "HYDRA_FULL_ERROR": "0"}
for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(var, None)


# ----------------------------------------------------------------------------- DP step == full-batch step
def build_trainer():
    """A REINFORCE++ trainer on the feedback adapter of a tiny Llama shared with a conversation adapter."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from runner.models.lora import LoRAConfig, SharedAdapters
    from runner.safety.waltzrl_rl import PolicyTrainer, RLConfig

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    shared = SharedAdapters(model, LoRAConfig(enabled=True, r=4, alpha=8.0), ["conversation", "feedback"])
    view = shared.view("feedback")
    with torch.no_grad():  # a warm-started adapter: A and B both receive gradients
        for _, p in view.named_parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.3)
    cfg = RLConfig(learning_rate=1e-2, beta=0.1, ppo_epochs=1, minibatch_size=64, max_grad_norm=1.0)
    return PolicyTrainer(view, pad_id=0, cfg=cfg, seed=0), view


def rank_samples(rank: int, n: int | None = None):
    """Rank ``rank``'s share of a batch: different prompts, completions and rewards per rank (3 and 5 samples)."""
    from runner.safety.waltzrl_rl import Sample

    g = torch.Generator().manual_seed(100 + rank)
    n = 3 + 2 * rank if n is None else n
    out = []
    for _ in range(n):
        lp, lc = int(torch.randint(2, 6, (1,), generator=g)), int(torch.randint(1, 6, (1,), generator=g))
        out.append(Sample(torch.randint(1, 50, (lp,), generator=g).tolist(),
                          torch.randint(1, 50, (lc,), generator=g).tolist(), float(torch.rand(1, generator=g))))
    return out


DP_SCRIPT = """
import sys, dataclasses, torch
from runner.core import distributed
from tests.test_multiprocess import build_trainer, rank_samples
distributed.init("cpu")
trainer, view = build_trainer()
r = distributed.rank()
trainer.step(rank_samples(r))
first = {"params": [p.detach().clone() for p in view.parameters()],
         "grads": [p.grad.clone() for p in view.parameters()]}
trainer.cfg = dataclasses.replace(trainer.cfg, minibatch_size=2)  # unequal minibatch counts, rank 0 idle
trainer.step(rank_samples(r, n=0 if r == 0 else 5))
torch.save({**first, "second": [p.detach().clone() for p in view.parameters()]}, f"{sys.argv[1]}/rank{r}.pt")
"""


def test_data_parallel_step_on_lora_adapters_equals_the_full_batch_step(tmp_path):
    script = tmp_path / "dp_step.py"
    script.write_text(DP_SCRIPT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(tmp_path)], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{k}.pt") for k in (0, 1))
    trainer, view = build_trainer()
    init = [p.detach().clone() for p in view.parameters()]
    trainer.step(rank_samples(0) + rank_samples(1))  # one process, the union of both ranks' samples
    full_grads = [p.grad for p in view.parameters()]
    full_params = [p.detach() for p in view.parameters()]
    for k in range(len(init)):
        assert torch.equal(r0["params"][k], r1["params"][k])  # the replicas agree bit for bit
        assert torch.allclose(r0["grads"][k], full_grads[k], rtol=1e-4, atol=1e-7)  # summed = full-batch gradient
        assert torch.allclose(r0["params"][k], full_params[k], rtol=1e-4, atol=1e-6)
        assert torch.equal(r0["second"][k], r1["second"][k])  # an idle rank still joins every collective
    assert any(not torch.equal(a, b) for a, b in zip(init, r0["params"]))  # the step moved the adapter
    assert any(not torch.equal(a, b) for a, b in zip(r0["params"], r0["second"]))


# ----------------------------------------------------------------------------- smokes under the launcher
def launch(recipe: str, run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "runner", f"+recipe={recipe}", "run.smoke=true", "run.progress=false",
           "algorithm.lora.enabled=true", "hardware.launcher=torchrun", "hardware.nproc=2", f"run.dir={run_dir}",
           *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "launch: torchrun --standalone --nproc_per_node=2 -m runner" in proc.stderr
    return proc


def rank_logs(run_dir: Path) -> tuple[list[dict], list[dict]]:
    """Both ranks ran: rank 0 wrote the run's files, rank 1 only its own metric log (same records)."""
    assert (run_dir / "results.json").exists() and (run_dir / "summary.md").exists()
    assert not list((run_dir / "ranks").rglob("results.json"))
    logs = [[json.loads(x) for x in p.read_text().splitlines()]
            for p in (run_dir / "metrics.jsonl", run_dir / "ranks" / "rank1" / "metrics.jsonl")]
    assert len(logs[0]) == len(logs[1]) > 0
    assert [(r["stage"], r["step"]) for r in logs[0]] == [(r["stage"], r["step"]) for r in logs[1]]
    return logs[0], logs[1]


def digests(log: list[dict]) -> list[tuple[str, int, str, float]]:
    return [(r["stage"], r["step"], k, v) for r in log for k, v in r.items() if k.endswith("param_digest")]


def test_torchrun_safety_rl_with_lora(tmp_path):
    """TRL's GRPOTrainer under DDP (accelerate, gloo): a warm start long enough for rewards to differ within a
    group, so the step has a gradient and the replicas must agree after it."""
    launch("safety_rl", tmp_path, "algorithm.warm_start.steps=200", "algorithm.warm_start.checkpoint_every=200",
           "algorithm.grpo.steps=1", "algorithm.grpo.num_generations=4", "algorithm.grpo.max_completion_length=24",
           "algorithm.grpo.mask_truncated_completions=false")
    log0, log1 = rank_logs(tmp_path)
    d0, d1 = digests(log0), digests(log1)
    assert [s for s, *_ in d0] == ["grpo_replica"] * 2 and d0 == d1  # before and after the step, both ranks
    assert d0[0][3] != d0[1][3]  # the step changed the adapter
    grpo = [r for r in log0 if r["stage"] == "grpo"]
    assert grpo[0]["grad_norm"] > 0 and grpo[0]["num_tokens"] > 0
    ckpt = tmp_path / "grpo" / "checkpoint-1"
    assert (ckpt / "adapter_model.safetensors").exists()  # the adapter, not the full weights, is checkpointed
    assert (ckpt / "rng_state_0.pth").exists() and (ckpt / "rng_state_1.pth").exists()  # two DDP processes
    res = json.loads((tmp_path / "results.json").read_text())
    assert 0 < res["lora"]["trainable"] < res["lora"]["base"]


def test_torchrun_waltzrl_with_lora_adapters(tmp_path):
    launch("waltzrl", tmp_path, "dataset.params.categories=[S1,S2]", "dataset.params.include_adversarial=false",
           "algorithm.baselines.learned_guard.steps=2", "algorithm.baselines.learned_guard.checkpoint_every=2",
           "algorithm.baselines.learned_guard.warmup_steps=1", "algorithm.baselines.oracle_guard=false",
           "algorithm.train.stage1_steps=1", "algorithm.train.stage2_steps=1", "algorithm.train.eval_every=0",
           "algorithm.baselines.single_model_rl_steps=1", "algorithm.eval.max_new_tokens=8")
    log0, log1 = rank_logs(tmp_path)
    d0, d1 = digests(log0), digests(log1)
    assert {k for _, _, k, _ in d0} == {"param_digest", "fb_param_digest", "conv_param_digest"} and d0 == d1
    res = json.loads((tmp_path / "results.json").read_text())
    lora = res["lora"]
    assert lora["base_copies"] == 1 and set(lora["adapters"]) == {"conversation", "feedback"}
    assert lora["adapters"]["feedback"] < lora["base"] / 2
    assert {"waltzrl", "single_model_rl", "base"} <= set(res["systems"])
    stage1 = torch.load(next((tmp_path / "checkpoints" / "stage1").glob("step_*.pt")), weights_only=False)
    assert all(".lora_" in k for k in stage1["state"]["feedback"]["model"])  # checkpoints hold the adapter only


@pytest.mark.parametrize("launcher,expect", [
    ("torchrun", "torchrun --standalone --nproc_per_node=8 -m runner +recipe=safety_rl"),
    ("accelerate", "accelerate launch --num_processes 8 --num_machines 1 --config_file conf/accelerate/fsdp.yaml"),
])
def test_launch_line(launcher, expect, monkeypatch):
    for var in ("WORLD_SIZE", "LOCAL_RANK"):  # outside a launched process
        monkeypatch.delenv(var, raising=False)
    from runner.core.cli import compose_recipe
    from runner.core.launch import launch_line, needs_launch

    extra = ["hardware.accelerate_config=conf/accelerate/fsdp.yaml"] if launcher == "accelerate" else []
    argv = ["+recipe=safety_rl", "hardware=gpu8", f"hardware.launcher={launcher}", *extra]
    cfg = compose_recipe("safety_rl", argv[1:])
    assert needs_launch(cfg)
    line = launch_line(cfg, argv, "outputs/runs/x")
    assert line.startswith(expect) and line.endswith("run.dir=outputs/runs/x")


@pytest.mark.parametrize("overrides,match", [
    (["hardware.launcher=accelerate"], "accelerate launches CPU processes with mpirun"),
    (["hardware.launcher=torchrun", "hardware.nproc=3"], "prompts_per_step=8 must be a multiple"),
    (["hardware=gpu8", "hardware.launcher=accelerate", "hardware.accelerate_config=conf/accelerate/nope.yaml"],
     "does not exist"),
])
def test_bad_launch_config_is_one_line(overrides, match):
    from runner.core.cli import compose_recipe
    from runner.core.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        compose_recipe("safety_rl", overrides)


def test_gpu8_launches_only_the_data_parallel_trainers():
    from runner.core.cli import compose_recipe
    from runner.core.launch import launcher

    assert launcher(compose_recipe("waltzrl_paper")) == "torchrun"  # hardware=gpu8, launcher=auto
    assert launcher(compose_recipe("safety_eval", ["hardware=gpu8"])) == "none"  # evaluation: one process
