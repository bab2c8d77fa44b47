"""The ExecuTorch export of the INT4 guard (runner.guard.export): the packed INT4 embedding against torchao's
dequantisation, the ``.pte`` run in the ExecuTorch runtime against the in-memory torchao model (prefill, decoding
from its KV cache, greedy generation), and the one-line error without the ``deploy`` extra."""

from __future__ import annotations

import sys

import pytest
import torch

from runner.core.errors import ConfigError
from runner.guard import compress, export

KEPT = [1, 2, 5, 40, 77]


def _student() -> torch.nn.Module:
    """A 1-block Llama, quantised as the pipeline does (8da4w, INT4 embedding, group 32), output-pruned."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    for p in model.parameters():
        p.data.normal_(0.0, 0.3)  # logits far apart: the greedy path does not hinge on quantisation noise
    compress.qat(model, 32, "prepare")
    compress.qat(model, 32, "convert")
    return compress.prune_output_layer(model, KEPT)


def test_int4_embedding_matches_torchao_dequantised_rows():
    from torchao.quantization import quantize_

    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 64)
    quantize_(emb, compress.embedding_config(32), filter_fn=lambda m, _: isinstance(m, torch.nn.Embedding))
    ids = torch.tensor([[0, 7, 49, 7]])
    packed = export.Int4Embedding(emb.weight)
    assert packed.packed.dtype == torch.uint8 and packed.packed.shape == (50, 32)  # two values per byte
    assert packed.scales.dtype == torch.float16 and packed.scales.shape == (50, 2)  # one scale per group of 32
    reference = torch.nn.functional.embedding(ids, emb.weight.dequantize())
    torch.testing.assert_close(packed(ids), reference, rtol=1e-3, atol=1e-6)  # fp16 scales: rounding only


def test_pte_matches_the_torchao_model(tmp_path):
    model = _student()
    size = export.export_pte(model, tmp_path / "g.pte", max_len=32)
    assert size == (tmp_path / "g.pte").stat().st_size
    pte = export.PteGuard(tmp_path / "g.pte")
    prompt = [3, 17, 60, 8, 91, 4, 22]
    with torch.no_grad():
        eager = model(input_ids=torch.tensor([prompt])).logits[0, -1]
    first = pte.step(prompt, 0)
    scale = eager[KEPT].abs().max()
    # XNNPACK stores the weight scales as bf16 (8-bit mantissa, <= 0.4% off) and quantises activations itself
    torch.testing.assert_close(first[KEPT], eager[KEPT], rtol=0, atol=0.02 * scale)
    assert torch.isneginf(first[[i for i in range(96) if i not in KEPT]]).all()  # pruned head: −inf elsewhere

    # greedy generation from the KV cache = greedy decoding by full forward passes of the torchao model
    out, logits0 = pte.generate(prompt, max_new_tokens=5)
    torch.testing.assert_close(logits0, first)
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(5):
            seq.append(int(model(input_ids=torch.tensor([seq])).logits[0, -1].argmax()))
    assert out == seq[len(prompt):]
    # a new prompt resets the cache: the program does not remember the previous one
    torch.testing.assert_close(pte.step(prompt, 0), first)
    stop = out.index(out[1]) + 1
    assert pte.generate(prompt, max_new_tokens=5, eos=[out[1]])[0] == out[:stop]  # stops at (and keeps) the eos
    lat = export.pte_latency(pte, prompt, new_tokens=3, repeats=1)
    assert lat["ttft_s"] > 0 and lat["decode_tokens_per_s"] > 0


def test_missing_deploy_extra_is_a_one_line_config_error(monkeypatch):
    from runner.core.cli import compose_recipe

    for name in [m for m in sys.modules if m == "executorch" or m.startswith("executorch.")] + ["executorch"]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[deploy\]'") as e:
        compose_recipe("llamaguard_1b_int4")
    assert "\n" not in str(e.value)
    assert not compose_recipe("llamaguard_1b_int4", ["algorithm.export_pte=false"]).algorithm.export_pte
