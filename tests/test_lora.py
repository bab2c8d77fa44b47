"""LoRA adapters on one base (runner.models.lora): parameter count, reference policy, views, vLLM multi-LoRA."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from omegaconf import OmegaConf

from runner.models.lora import LoRAConfig, SharedAdapters, adapter_engine, lora_parameter_count
from tests.conftest import outside_distributed_world

H, I, HEADS, KV, LAYERS, VOCAB = 32, 48, 4, 2, 2, 40  # head_dim 8: k/v project 32 -> 16


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=H, intermediate_size=I, num_hidden_layers=LAYERS,
                      num_attention_heads=HEADS, num_key_value_heads=KV, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def lora_cfg(r: int = 4, targets=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")):
    return OmegaConf.structured(LoRAConfig(enabled=True, r=r, alpha=2.0 * r, target_modules=list(targets)))


def randomise(view, seed: int) -> None:
    """Give an adapter non-zero weights (as training would), so it changes the model's output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in view.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.tensor([[1, 5, 9, 3, 7, 2], [4, 4, 8, 1, 0, 6]])


def test_trainable_parameters_equal_r_times_din_plus_dout_per_targeted_linear():
    r, kv = 4, H // HEADS * KV
    # by hand from the config: q, o: H -> H; k, v: H -> kv; gate, up: H -> I; down: I -> H
    per_layer = r * ((H + H) * 2 + (H + kv) * 2 + (H + I) * 3)
    base = tiny_llama()
    n_base = sum(p.numel() for p in base.parameters())
    assert lora_parameter_count(base, lora_cfg(r)) == LAYERS * per_layer
    shared = SharedAdapters(base, lora_cfg(r), ["conversation", "feedback"])
    trainable = sum(p.numel() for p in shared.peft.parameters() if p.requires_grad)  # peft's own bookkeeping
    assert trainable == LAYERS * per_layer  # only the active adapter trains; the base is frozen
    for name in ("conversation", "feedback"):
        assert sum(p.numel() for p in shared.view(name).parameters()) == LAYERS * per_layer
    counts = shared.counts()
    assert counts["base"] == n_base and counts["base_copies"] == 1  # two agents, one copy of the base weights
    # attention only (q, v): the formula follows the targets
    only_qv = SharedAdapters(tiny_llama(), lora_cfg(8, ("q_proj", "v_proj")), ["agent"])
    assert sum(p.numel() for p in only_qv.view("agent").parameters()) == LAYERS * 8 * ((H + H) + (H + kv))


def test_reference_is_the_base_exactly_and_views_switch_adapters():
    base = tiny_llama()
    want = logits(base, IDS)
    shared = SharedAdapters(base, lora_cfg(), ["conversation", "feedback"])
    conv, fb = shared.view("conversation"), shared.view("feedback")
    assert torch.equal(logits(conv, IDS), want)  # B = 0: a fresh adapter is the base
    randomise(conv, 1)
    randomise(fb, 2)
    out_c, out_f = logits(conv, IDS), logits(fb, IDS)
    assert not torch.allclose(out_c, want, atol=1e-3) and not torch.allclose(out_c, out_f, atol=1e-3)
    assert torch.equal(logits(conv, IDS), out_c)  # switching back and forth is exact
    for view in (conv, fb):
        with view.reference() as ref:
            assert torch.equal(logits(ref, IDS), want)  # adapter disabled: the base's logits, bit for bit
    assert torch.equal(logits(fb, IDS), out_f)  # the block restored the adapter


def test_warm_started_adapter_is_referenced_by_a_frozen_snapshot_and_state_round_trips():
    shared = SharedAdapters(tiny_llama(), lora_cfg(), ["conversation", "feedback"])
    fb = shared.view("feedback")
    randomise(fb, 3)  # a warm start trained the adapter: RL's reference is this policy, not the base
    at_start = logits(fb, IDS)
    state = fb.state_dict()
    fb.freeze_reference()
    randomise(fb, 4)  # RL moves the adapter
    assert not torch.allclose(logits(fb, IDS), at_start, atol=1e-3)
    with fb.reference() as ref:
        assert torch.equal(logits(ref, IDS), at_start)
    assert not any(p.requires_grad for n, p in shared.peft.named_parameters() if "feedback_ref" in n)
    fb.load_state_dict(state)  # a checkpoint restores the adapter alone
    assert torch.equal(logits(fb, IDS), at_start)
    assert set(state) == {k for k in state if ".lora_" in k}  # no base weights in an agent's checkpoint


def test_vllm_serves_every_adapter_from_one_engine_with_a_lora_request_per_adapter(monkeypatch, tmp_path):
    """vLLM behind a fake module: one LLM for the base (LoRA enabled, rank r); each adapter's requests carry its
    LoRARequest, whose folder peft loads back to the adapter's current weights (also after an update)."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    made = []

    class FakeLLM:
        def __init__(self, **kwargs):
            self.kwargs, self.calls = kwargs, []
            made.append(self)

        def generate(self, prompts, sampling_params, use_tqdm=False, lora_request=None):
            self.calls.append(lora_request)
            comp = types.SimpleNamespace(text="x", token_ids=[1], logprobs=None, finish_reason="stop")
            return [types.SimpleNamespace(outputs=[comp], prompt_token_ids=[1]) for _ in prompts]

        def get_tokenizer(self):
            return types.SimpleNamespace(bos_token=None)

    vllm = types.ModuleType("vllm")
    vllm.LLM, vllm.SamplingParams = FakeLLM, (lambda **kw: types.SimpleNamespace(**kw))
    lora_mod, request_mod = types.ModuleType("vllm.lora"), types.ModuleType("vllm.lora.request")
    request_mod.LoRARequest = lambda lora_name, lora_int_id, lora_path: types.SimpleNamespace(
        lora_name=lora_name, lora_int_id=lora_int_id, lora_path=lora_path)
    for name, mod in (("vllm", vllm), ("vllm.lora", lora_mod), ("vllm.lora.request", request_mod)):
        monkeypatch.setitem(sys.modules, name, mod)
    outside_distributed_world(monkeypatch)  # the engine sets them
    from runner.rollout.base import SamplingParams

    base = tiny_llama()
    base.save_pretrained(tmp_path / "base")
    base.name_or_path = str(tmp_path / "base")
    shared = SharedAdapters(base, lora_cfg(6), ["conversation", "feedback"])
    randomise(shared.view("conversation"), 5)
    randomise(shared.view("feedback"), 6)
    hw = OmegaConf.create({"rollout_engine": "vllm", "tensor_parallel_size": 1, "gpu_memory_utilization": 0.3,
                           "dtype": "float32", "max_model_len": None, "enforce_eager": True})
    ctx = types.SimpleNamespace(seed=0, dir=tmp_path / "run")
    engines = {n: adapter_engine(shared.view(n), None, hw, ctx) for n in ("conversation", "feedback")}
    assert len(made) == 1  # one vLLM engine, one copy of the base
    kw = made[0].kwargs
    assert kw["model"] == str(tmp_path / "base") and kw["enable_lora"] and kw["max_lora_rank"] == 8  # r = 6 rounded up

    def served(name):
        engines[name].generate(["hi"], SamplingParams(max_new_tokens=2, temperature=0.0))
        req = made[0].calls[-1]
        # what vLLM does with the request: the base from its folder, the adapter from the request's folder
        loaded = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(tmp_path / "base"), req.lora_path)
        return req, logits(loaded.eval(), IDS)

    ids = set()
    for name in ("conversation", "feedback"):
        req, out = served(name)
        assert req.lora_name.startswith(name)
        ids.add(req.lora_int_id)
        assert torch.allclose(out, logits(shared.view(name), IDS), atol=1e-5)
    assert len(ids) == 2
    randomise(shared.view("feedback"), 7)  # a training step
    engines["feedback"].update_weights(shared.view("feedback"))
    req, out = served("feedback")
    assert req.lora_int_id not in ids  # a new id: vLLM does not serve the cached old weights
    assert torch.allclose(out, logits(shared.view("feedback"), IDS), atol=1e-5)


@pytest.mark.parametrize("bad,match", [("r=0", "algorithm.lora.r"), ("alpha=0", "algorithm.lora.alpha"),
                                       ("dropout=1.0", "algorithm.lora.dropout"),
                                       ("target_modules=[]", "algorithm.lora.target_modules")])
def test_bad_lora_config_is_one_line(bad, match):
    from runner.core.cli import compose_recipe
    from runner.core.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        compose_recipe("waltzrl", ["algorithm.lora.enabled=true", f"algorithm.lora.{bad}"])
