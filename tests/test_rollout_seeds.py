"""Per-request seeds: the G copies of one prompt differ, reruns repeat, in both engines."""

from __future__ import annotations

import types

import pytest
import torch
from omegaconf import OmegaConf

from runner.core.config import ModelConfig
from runner.core.seeding import derive_seed
from runner.models.builder import build_model_and_tokenizer
from runner.rollout import SamplingParams
from runner.rollout.base import request_seed
from runner.rollout.hf import HFEngine, PerRequestSampler
from tests.conftest import install_fake_vllm


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model_and_tokenizer(OmegaConf.structured(ModelConfig))


def test_hf_copies_of_a_prompt_differ_and_reruns_repeat_whatever_the_batching(tiny):
    model, tok = tiny
    p = SamplingParams(max_new_tokens=12, temperature=1.0, seed=11)
    group = HFEngine(model, tok, batch_size=64).generate(["ab"] * 4 + ["cd"] * 4, p)  # two GRPO groups of G = 4
    copies = [tuple(r.token_ids) for r in group[:4]]
    assert len(set(copies)) == 4 and len({tuple(r.token_ids) for r in group[4:]}) == 4
    # the same requests one at a time, and as n = 4 copies of each prompt: the same samples (a request's draw
    # depends on its seed, prompt and the model only)
    alone = HFEngine(model, tok, batch_size=1).generate(["ab"] * 4 + ["cd"] * 4, p)
    assert [r.token_ids for r in alone] == [r.token_ids for r in group]
    n4 = HFEngine(model, tok).generate(["ab", "cd"], SamplingParams(max_new_tokens=12, temperature=1.0, n=4, seed=11))
    assert len({tuple(r.token_ids) for r in n4[:4]}) == 4
    assert [(r.prompt_index, r.sample_index) for r in n4[:5]] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    again = HFEngine(model, tok).generate(["ab"] * 4 + ["cd"] * 4, p)
    assert [r.token_ids for r in again] == [r.token_ids for r in group]
    greedy = HFEngine(model, tok).generate(["ab"] * 3, SamplingParams(max_new_tokens=12, temperature=0.0))
    assert len({tuple(r.token_ids) for r in greedy}) == 1


def test_evaluation_with_several_samples_gets_distinct_answers(tiny):
    from runner.safety.evaluate import model_system

    model, tok = tiny
    system = model_system(HFEngine(model, tok), SamplingParams(max_new_tokens=12, temperature=1.0, seed=5))
    answers = [r.text for r in system(["tell me"] * 3)]  # evaluate() asks each prompt n_samples times
    assert len(set(answers)) == 3


def test_per_request_sampler_draws_from_the_processed_distribution():
    """Reference: softmax(logits / T) restricted to the top-k, then to the top-p nucleus, renormalised."""
    torch.manual_seed(0)
    logits = torch.randn(12)
    n, temperature, top_k, top_p = 40000, 0.7, 8, 0.8
    sampler = PerRequestSampler(list(range(n)), max_new_tokens=1, prompt_len=3, temperature=temperature,
                                top_k=top_k, top_p=top_p)
    out = sampler(torch.zeros(n, 3, dtype=torch.long), logits.expand(n, -1).clone())
    tokens = out.argmax(-1)
    assert torch.all(out.max(-1).values == 0) and torch.all(torch.isinf(out).sum(-1) == 11)

    probs = (logits / temperature).softmax(-1)
    order = probs.argsort(descending=True)
    keep = torch.zeros(12, dtype=torch.bool)
    keep[order[:top_k]] = True
    sorted_p = probs[order[:top_k]] / probs[order[:top_k]].sum()
    cum = sorted_p.cumsum(0)
    nucleus = order[:top_k][: int((cum - sorted_p < top_p).sum())]  # smallest prefix holding top_p
    ref = torch.zeros(12)
    ref[nucleus] = probs[nucleus] / probs[nucleus].sum()
    freq = torch.bincount(tokens, minlength=12).float() / n
    assert torch.allclose(freq, ref, atol=0.01)
    assert torch.allclose(sampler.logprobs[:, 0], ref.log()[tokens], atol=1e-5)


# ----------------------------------------------------------------------------- vllm, behind a fake module
class _RecordingLLM:
    """vLLM's ``LLM`` as far as the engine uses it; the completion text names the request's seed."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def generate(self, prompts, sampling_params, use_tqdm=False, lora_request=None):
        self.requests = list(zip(prompts, sampling_params))
        outs = []
        for _, sp in self.requests:
            comp = types.SimpleNamespace(text=f"seed={sp.seed}", token_ids=[sp.seed % 97], logprobs=None,
                                         finish_reason="stop")
            outs.append(types.SimpleNamespace(outputs=[comp], prompt_token_ids=[1]))
        return outs

    def get_tokenizer(self):
        return types.SimpleNamespace(bos_token=None)


def test_vllm_gets_one_seeded_request_per_copy(monkeypatch):
    install_fake_vllm(monkeypatch, _RecordingLLM)
    from runner.rollout.vllm import VLLMEngine

    engine = VLLMEngine("some/model")
    seed = derive_seed(0, "stage1", "rollout", 3)  # how a trainer folds (run seed, stage, step) into the call seed
    out = engine.generate(["p", "q"], SamplingParams(temperature=1.0, n=3, seed=seed))
    seeds = [sp.seed for _, sp in engine.llm.requests]
    assert [p for p, _ in engine.llm.requests] == ["p"] * 3 + ["q"] * 3
    assert all(sp.n == 1 for _, sp in engine.llm.requests) and len(set(seeds)) == 6
    assert seeds == [derive_seed(seed, "request", i, j) for i in range(2) for j in range(3)]
    assert [(r.prompt_index, r.sample_index, r.text) for r in out][:2] == [(0, 0, f"seed={seeds[0]}"),
                                                                          (0, 1, f"seed={seeds[1]}")]
    engine.generate(["p", "q"], SamplingParams(temperature=1.0, n=3, seed=seed))
    assert [sp.seed for _, sp in engine.llm.requests] == seeds  # a rerun repeats
    engine.generate(["p"] * 3, SamplingParams(temperature=1.0, seed=seed))  # a group as repeated prompts
    assert [sp.seed for _, sp in engine.llm.requests] == [request_seed(seed, i, 0) for i in range(3)]
    engine.generate(["p", "q"], SamplingParams(temperature=1.0, n=3, seed=seed + 1))
    assert not set(seeds) & {sp.seed for _, sp in engine.llm.requests}  # the next step samples afresh


def test_vllm_tensor_parallel_shards_run_their_groups_requests(monkeypatch):
    """Rank 1 of a TP-2 group: both ranks' requests go to vLLM (as every shard must run the same batch), and
    rank 1 keeps the completions of its own, with its own seeds."""
    import torch.distributed as dist

    install_fake_vllm(monkeypatch, _RecordingLLM)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr("runner.rollout.vllm._tp_group", lambda tp: "tp-group")
    from runner.rollout.vllm import VLLMEngine

    engine = VLLMEngine("some/model", tensor_parallel_size=2)
    assert engine.colocated and engine.tp_group == "tp-group"
    other = [("rank0 prompt", 111), ("rank0 prompt", 222), ("rank0 other", 333)]

    def all_gather_object(out, obj, group=None):
        assert group == "tp-group"
        out[0], out[1] = other, obj

    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    out = engine.generate(["mine"], SamplingParams(temperature=1.0, n=2, seed=9))
    assert [p for p, _ in engine.llm.requests] == ["rank0 prompt", "rank0 prompt", "rank0 other", "mine", "mine"]
    assert [(r.prompt_index, r.sample_index, r.text) for r in out] == [
        (0, j, f"seed={request_seed(9, 0, j)}") for j in range(2)]
