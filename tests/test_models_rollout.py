"""Offline models and tokenizers, and the rollout engines' contract."""

from __future__ import annotations

import types

import pytest
import torch
from omegaconf import OmegaConf

from runner.core.config import ModelConfig
from runner.data.text import builtin_corpus, split_heldout
from runner.models.builder import ModelLoadError, build_model_and_tokenizer, build_tokenizer
from runner.rollout import SamplingParams
from runner.rollout.hf import HFEngine
from tests.conftest import install_fake_vllm


def _cfg(**kw):
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), kw)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model, tok = build_model_and_tokenizer(_cfg())
    return model, tok


def test_byte_tokenizer_round_trips_any_text_and_renders_chat():
    tok = build_tokenizer(_cfg())
    text = "Grüße, 世界! tabs\tand\nnewlines"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text.encode("utf-8")) and tok.decode(ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|user|>hi<|end|><|assistant|>"
    assert tok.convert_tokens_to_ids("<|end|>") < 8  # special tokens are single ids


def test_bpe_tokenizer_trains_deterministically_and_compresses():
    corpus = builtin_corpus(300, seed=0)
    a, b = build_tokenizer(_cfg(tokenizer="bpe", vocab_size=400), corpus), build_tokenizer(
        _cfg(tokenizer="bpe", vocab_size=400), corpus)
    s = corpus[0]
    assert a(s)["input_ids"] == b(s)["input_ids"] and a.decode(a(s)["input_ids"]) == s
    assert len(a(s)["input_ids"]) < len(s.encode())


def test_tiny_model_matches_its_config(tiny):
    model, tok = tiny
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.vocab_size) == (64, 2, 4, len(tok))
    out = model(input_ids=torch.tensor([[1, 2, 3]]))
    assert out.logits.shape == (1, 3, len(tok))


def test_hf_model_offline_names_model_path():
    cfg = _cfg(name="llama3_8b_instruct", kind="hf", hf_id="meta-llama/Llama-3.1-8B-Instruct")
    with pytest.raises(ModelLoadError, match="model.path"):
        build_tokenizer(cfg)


def test_local_model_path_loads_through_transformers(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, tok2 = build_model_and_tokenizer(_cfg(name="local", kind="hf", path=str(tmp_path)))
    ids = torch.tensor([[5, 6, 7]])
    assert torch.allclose(loaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-6)
    assert tok2("abc")["input_ids"] == tok("abc")["input_ids"]


def test_builtin_corpus_is_deterministic_and_split_is_disjoint():
    assert builtin_corpus(50, 1) == builtin_corpus(50, 1) != builtin_corpus(50, 2)
    idx = list(range(100))
    train, held = split_heldout([str(i) for i in idx], 0.2, seed=0)
    assert len(held) == 20 and not set(train) & set(held) and len(train) + len(held) == 100


# ----------------------------------------------------------------------------- hf engine
def _manual_greedy(model, tok, prompt: str, n: int) -> list[int]:
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = []
    for _ in range(n):
        nxt = model(input_ids=ids).logits[0, -1].argmax().item()
        out.append(nxt)
        if nxt == tok.eos_token_id:
            break
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def test_greedy_generation_equals_manual_argmax_decoding(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    prompts = ["the cat", "a much longer prompt here"]
    rollouts = engine.generate(prompts, SamplingParams(max_new_tokens=12, temperature=0.0))
    assert [r.prompt_index for r in rollouts] == [0, 1]
    for r, p in zip(rollouts, prompts):  # left padding must not change what a prompt generates
        assert r.token_ids == _manual_greedy(model, tok, p, 12)
        assert r.finish_reason == ("stop" if r.token_ids[-1] == tok.eos_token_id else "length")
        assert len(r.token_ids) <= 12


def test_sampling_is_seeded_reproducible_and_leaves_global_rng_alone(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    p = SamplingParams(max_new_tokens=16, temperature=1.0, n=3, seed=123)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = engine.generate(["x", "y"], p)
    assert torch.equal(before, torch.get_rng_state())
    b = engine.generate(["x", "y"], p)
    c = engine.generate(["x", "y"], SamplingParams(max_new_tokens=16, temperature=1.0, n=3, seed=124))
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]
    assert [(r.prompt_index, r.sample_index) for r in a] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_top_k_one_sampling_is_greedy(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    greedy = engine.generate(["hello"], SamplingParams(max_new_tokens=10, temperature=0.0))
    top1 = engine.generate(["hello"], SamplingParams(max_new_tokens=10, temperature=1.3, top_k=1, seed=5))
    assert greedy[0].token_ids == top1[0].token_ids


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_logprobs_are_those_of_the_sampling_distribution(tiny, temperature):
    """Reference: teacher-forced log-softmax(logits / T) at each sampled token."""
    model, tok = tiny
    engine = HFEngine(model, tok)
    (r,) = engine.generate(["abc"], SamplingParams(max_new_tokens=8, temperature=temperature, seed=9))
    ids = torch.tensor([r.prompt_token_ids + r.token_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0].float() / temperature
    n_prompt = len(r.prompt_token_ids)
    ref = logits.log_softmax(-1)[n_prompt - 1:-1].gather(-1, torch.tensor(r.token_ids)[:, None]).squeeze(-1)
    assert torch.allclose(torch.tensor(r.logprobs), ref, atol=1e-4)


def test_stop_strings_and_chat_prompts(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    (free,) = engine.generate(["q"], SamplingParams(max_new_tokens=20, temperature=0.0))
    if len(free.text) >= 4:
        stop = free.text[2:4]
        (cut,) = engine.generate(["q"], SamplingParams(max_new_tokens=20, temperature=0.0, stop=[stop]))
        assert stop not in cut.text and free.text.startswith(cut.text) and cut.finish_reason == "stop"
        assert tok.decode(cut.token_ids, skip_special_tokens=True).find(stop) >= 0
    chat = [{"role": "user", "content": "hi"}]
    (a,) = engine.generate([chat], SamplingParams(max_new_tokens=5, temperature=0.0))
    (b,) = engine.generate(["<|user|>hi<|end|><|assistant|>"], SamplingParams(max_new_tokens=5, temperature=0.0))
    assert a.token_ids == b.token_ids


def test_stop_token_ids_end_a_completion(tiny):
    model, tok = tiny
    engine = HFEngine(model, tok)
    (free,) = engine.generate(["z"], SamplingParams(max_new_tokens=16, temperature=0.0))
    stop_id = free.token_ids[3]
    (cut,) = engine.generate(["z"], SamplingParams(max_new_tokens=16, temperature=0.0, stop_token_ids=[stop_id]))
    first = free.token_ids.index(stop_id)
    assert cut.token_ids == free.token_ids[: first + 1] and cut.finish_reason == "stop"


def test_sampling_params_reject_bad_values():
    for bad in ({"temperature": -1}, {"top_p": 0}, {"max_new_tokens": 0}, {"n": 0}, {"top_k": -2}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)


# ----------------------------------------------------------------------------- vllm engine
class _FakeLLM:
    """Records what the engine asks of vLLM; answers with vLLM's output structure (one completion per request)."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.rpc: list[tuple] = []
        self.reset = 0
        self.tokenizer = None

    def generate(self, prompts, sp, use_tqdm=False, lora_request=None):
        assert isinstance(sp, list) and len(sp) == len(prompts)  # one SamplingParams per request
        self.sp, self.prompts = sp, prompts
        return [self._out(i) for i, _ in enumerate(prompts)]

    def chat(self, messages, sp, use_tqdm=False, lora_request=None):
        self.chat_called = True
        return self.generate(messages, sp)

    def _out(self, i):
        lp = [{7: types.SimpleNamespace(logprob=-0.5)}, {8: types.SimpleNamespace(logprob=-1.5)}]
        comp = types.SimpleNamespace(text=f"out{i}", token_ids=[7, 8], logprobs=lp, finish_reason="length")
        return types.SimpleNamespace(outputs=[comp], prompt_token_ids=[1, 2])

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        self.rpc.append((method, args))
        return [None]

    def reset_prefix_cache(self):
        self.reset += 1

    def get_tokenizer(self):
        return self.tokenizer


@pytest.fixture
def fake_vllm(monkeypatch):
    return install_fake_vllm(monkeypatch, _FakeLLM)


def test_vllm_engine_maps_params_outputs_and_weight_updates(fake_vllm):
    from runner.rollout.vllm import VLLMEngine
    from runner.rollout.vllm_worker import WeightSyncExtension

    hw = OmegaConf.create({"tensor_parallel_size": 1, "gpu_memory_utilization": 0.3, "dtype": "bfloat16",
                           "max_model_len": 1024, "enforce_eager": True})
    model = torch.nn.Linear(2, 2)
    model.name_or_path = "meta-llama/Llama-3.1-8B-Instruct"
    model.config = types.SimpleNamespace(_name_or_path=model.name_or_path)
    engine = VLLMEngine.from_model(model, None, hw, seed=3)
    kw = engine.llm.kwargs
    assert kw["tensor_parallel_size"] == 1 and kw["gpu_memory_utilization"] == 0.3 and kw["seed"] == 3
    assert kw["distributed_executor_backend"] == "external_launcher" and kw["max_model_len"] == 1024
    assert kw["logprobs_mode"] == "processed_logprobs"
    assert kw["worker_extension_cls"] == "runner.rollout.vllm_worker.WeightSyncExtension"
    rollouts = engine.generate(["a", "b"], SamplingParams(max_new_tokens=9, temperature=0.7, top_k=0, stop=["\n"]))
    sp = engine.llm.sp[0]
    assert (sp.n, sp.max_tokens, sp.temperature, sp.top_k, sp.stop, sp.logprobs) == (1, 9, 0.7, -1, ["\n"], 0)
    assert [r.text for r in rollouts] == ["out0", "out1"] and rollouts[1].logprobs == [-0.5, -1.5]
    engine.generate([[{"role": "user", "content": "x"}]], SamplingParams())
    assert engine.llm.chat_called

    # weight sync: a method of the worker extension called by name (no pickled function), tensors by reference
    engine.update_weights(model)
    ((method, (weights,)),) = engine.llm.rpc
    assert method == "load_trained_weights" and [n for n, _ in weights] == ["weight", "bias"]
    assert weights[0][1].data_ptr() == model.weight.data_ptr() and engine.llm.reset == 1
    loaded = []
    worker = types.SimpleNamespace(model_runner=types.SimpleNamespace(
        model=types.SimpleNamespace(load_weights=lambda ws: loaded.extend(n for n, _ in ws))))
    assert getattr(WeightSyncExtension, method)(worker, weights) == 2 and loaded == ["weight", "bias"]

    # a rendered template that already holds the BOS goes in as token ids, so vLLM adds no second BOS
    engine.llm.tokenizer = _bos_adding_tokenizer()
    engine.generate(["<s>a", "<s>b"], SamplingParams())
    ids = [p["prompt_token_ids"] for p in engine.llm.prompts]
    assert [i.count(engine.llm.tokenizer.bos_token_id) for i in ids] == [1, 1]


def test_vllm_engine_with_its_own_workers_refuses_weight_updates(fake_vllm):
    """TP 4 in one process: vLLM starts its own workers; the engine serves a fixed model (judges, evaluation)."""
    from runner.rollout.vllm import VLLMEngine

    engine = VLLMEngine("some/model", tensor_parallel_size=4)
    assert "distributed_executor_backend" not in engine.llm.kwargs and engine.tp_group is None
    with pytest.raises(RuntimeError, match="must divide the number of training processes"):
        engine.update_weights(torch.nn.Linear(2, 2))
    assert engine.llm.rpc == []


def _bos_adding_tokenizer():
    """The byte tokenizer made to prepend ``<s>`` as Llama 3's tokenizer prepends ``<|begin_of_text|>``."""
    from tokenizers.processors import TemplateProcessing

    from runner.models.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    tok._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.bos_token_id)])
    return tok


def test_hf_engine_never_doubles_the_bos(tiny):
    """A prompt rendered with its BOS (as Llama 3 / Llama Guard chat templates do) keeps exactly one."""
    model, _ = tiny
    tok = _bos_adding_tokenizer()
    engine = HFEngine(model, tok)
    p = SamplingParams(max_new_tokens=2, temperature=0.0)
    (rendered,) = engine.generate(["<s>hi"], p)
    (plain,) = engine.generate(["hi"], p)
    assert rendered.prompt_token_ids == plain.prompt_token_ids
    assert rendered.prompt_token_ids.count(tok.bos_token_id) == 1 and rendered.prompt_token_ids[0] == tok.bos_token_id
