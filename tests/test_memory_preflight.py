"""GPU layout preflight: parameter counts, the memory budget of the paper recipes, TP vs world size."""

from __future__ import annotations

import pytest
import torch

from runner.core.cli import compose_recipe
from runner.core.errors import ConfigError
from runner.rollout.budget import KNOWN, Arch, check_gpu_layout, plan
from tests.conftest import run_cli

LORA_GPU1 = ["hardware=gpu1", "algorithm.lora.enabled=true", "hardware.judge_engine=hf",
             "hardware.gpu_memory_utilization=0.35"]


def _meta_llama(arch: Arch):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=arch.hidden, intermediate_size=arch.intermediate, num_hidden_layers=arch.layers,
                      num_attention_heads=arch.heads, num_key_value_heads=arch.kv_heads, vocab_size=arch.vocab,
                      tie_word_embeddings=arch.tied)
    with torch.device("meta"):
        return LlamaForCausalLM(cfg)


@pytest.mark.parametrize("arch", [KNOWN["meta-llama/Llama-3.1-8B-Instruct"], KNOWN["meta-llama/Llama-Guard-3-1B"],
                                  Arch(64, 192, 2, 4, 2, 260, tied=True)])
def test_parameter_and_lora_counts_match_the_models(arch):
    """Reference: the parameters of the transformers model itself (built on the meta device) and peft's LoRA."""
    from peft import LoraConfig, get_peft_model

    model = _meta_llama(arch)
    assert arch.num_params() == sum(p.numel() for p in model.parameters())
    if arch.vocab == 128256 and not arch.tied:
        assert round(arch.num_params() / 1e9, 2) == 8.03  # Llama 3.1 8B's model card
        return  # (peft on 32 layers takes seconds; LoRA's count is checked on the smaller models)
    targets = ["q_proj", "v_proj", "down_proj"]
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=targets))
    assert arch.lora_params(8, targets) == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_waltzrl_paper_on_one_gpu_fails_preflight_with_one_line():
    # the recipe as shipped (two LoRA agents): its one engine's share cannot hold the 8B weights
    r = run_cli("+recipe=waltzrl_paper", "hardware=gpu1", timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("config error: vLLM engine 'conversation+feedback+single_model_rl' gets 0.2 × 80 GB")
    assert "no room for a KV cache" in lines[0] and "hardware.judge_engine=hf" in lines[0]
    # full fine-tuning, as in the paper: five engines and three full 8B policies with AdamW
    r = run_cli("+recipe=waltzrl_paper", "hardware=gpu1", "algorithm.lora.enabled=false", timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith("config error: GPU memory over budget on hardware=gpu1 (80 GB per GPU): 5 vLLM engines")
    assert "algorithm.lora.enabled=true" in lines[0] and "hardware.judge_engine=hf" in lines[0]


def test_waltzrl_paper_with_lora_and_hf_judges_fits_one_gpu():
    cfg = compose_recipe("waltzrl_paper", LORA_GPU1)
    check_gpu_layout(cfg)
    pl = plan(cfg)
    assert [e.name for e in pl.engines] == ["conversation+feedback+single_model_rl"]
    # by hand: 0.35 × 80 GB engine, the 8.03e9-parameter base in bf16 once, WildGuard 7.24e9 and Llama Guard 3
    # 8.03e9 in bf16, 2 GB overhead, three rank-16 adapters on all 7 projections in fp32 with AdamW (16 B each)
    adapters = 3 * 32 * 16 * (2 * (4096 + 4096) + 2 * (4096 + 1024) + 3 * (4096 + 14336)) * 16 / 1e9
    expected = 28 + 2 * 8.0305 + 2 * 7.2417 + 2 * 8.0305 + 2 + adapters
    assert pl.used_gb == pytest.approx(expected, abs=0.05) and pl.used_gb < 80
    # the same run with each judge on its own vLLM engine no longer fits
    with pytest.raises(ConfigError, match="3 vLLM engines"):
        check_gpu_layout(compose_recipe("waltzrl_paper", LORA_GPU1[:2] + LORA_GPU1[3:]))
    # and an engine share too small for its own weights is named
    with pytest.raises(ConfigError, match="no room for a KV cache"):
        check_gpu_layout(compose_recipe("waltzrl_paper", LORA_GPU1[:3]))


def test_trainer_tensor_parallelism_must_divide_the_world_size():
    cfg = compose_recipe("waltzrl_paper", ["hardware.launcher=none", "algorithm.lora.enabled=true"])
    with pytest.raises(ConfigError, match=r"tensor_parallel_size=8 must divide the world size 1"):
        check_gpu_layout(cfg)
    check_gpu_layout(compose_recipe("waltzrl_paper", ["algorithm.lora.enabled=true", "hardware.judge_engine=hf"]))


def test_vllm_judge_loads_no_hf_weights(monkeypatch, tmp_path):
    """A judge on the vllm engine: vLLM reads the checkpoint itself, so only the tokenizer is built here."""
    import sys
    import types

    from omegaconf import OmegaConf

    from runner.models.tokenizer import byte_tokenizer
    from runner.safety.judges import JudgeConfig, LlamaGuardJudge, build_judge

    byte_tokenizer().save_pretrained(tmp_path)
    fake = types.ModuleType("vllm")
    fake.LLM = lambda **kw: types.SimpleNamespace(kwargs=kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def no_weights(*_a, **_k):
        raise AssertionError("the judge's HF weights were loaded")

    monkeypatch.setattr("runner.models.builder.build_model_and_tokenizer", no_weights)
    hw = compose_recipe("safety_eval", ["hardware=gpu1"]).hardware
    judge = build_judge(JudgeConfig(name="llama_guard", model="llama_guard_3_1b", model_path=str(tmp_path)), hw)
    assert isinstance(judge, LlamaGuardJudge) and judge.engine.llm.kwargs["model"] == str(tmp_path)
    assert judge.engine.llm.kwargs["gpu_memory_utilization"] == hw.gpu_memory_utilization
    hf = OmegaConf.merge(hw, {"judge_engine": "hf"})
    monkeypatch.setattr("runner.models.builder.build_model_and_tokenizer",
                        lambda cfg, hw: (types.SimpleNamespace(), byte_tokenizer()))
    judge = build_judge(JudgeConfig(name="llama_guard", model="llama_guard_3_1b", model_path=str(tmp_path)), hf)
    assert type(judge.engine).__name__ == "HFEngine"
