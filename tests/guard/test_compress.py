"""Compression steps on small Llama models where the right answer is known."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from runner.guard import compress
from runner.guard.train import answer_logits, collate, guard_loss, shared_prefix_length

torch.set_num_threads(1)


def _model(layers: int = 3, hidden: int = 64, mlp: int = 128, vocab: int = 96, tied: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


def _batches(n: int = 3, vocab: int = 96, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(3, vocab, (4, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[0, 9:] = 0  # a padded row: its pads must not count
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _make_identity(layer) -> None:
    """A residual block whose attention and MLP write nothing: output = input."""
    torch.nn.init.zeros_(layer.self_attn.o_proj.weight)
    torch.nn.init.zeros_(layer.mlp.down_proj.weight)


@torch.no_grad()
def test_block_importance_identity_block_scores_zero_and_matches_hidden_states():
    model = _model(layers=4)
    _make_identity(model.model.layers[1])
    batches = _batches()
    calib = compress.calibrate(model, batches)
    bi = calib["block_importance"]
    assert abs(bi[1]) < 1e-6 and min(bi[0], bi[2]) > 1e-3
    # independent reference: cosine between consecutive hidden states from output_hidden_states (blocks 0..L-2)
    num, den = torch.zeros(3, dtype=torch.float64), 0
    for b in batches:
        hs = model(**b, output_hidden_states=True).hidden_states
        m = b["attention_mask"].bool()
        for layer in range(3):
            num[layer] += torch.nn.functional.cosine_similarity(hs[layer], hs[layer + 1], dim=-1)[m].double().sum()
        den += int(m.sum())
    assert bi[:3] == pytest.approx((1 - num / den).tolist(), abs=1e-5)
    assert compress.blocks_to_keep(bi, 3) == [i for i in range(4) if i != 1]


@torch.no_grad()
def test_removing_identity_block_leaves_outputs_unchanged_and_cache_works():
    model = _model(layers=3)
    _make_identity(model.model.layers[1])
    ids = torch.randint(3, 96, (2, 10))
    before = model(input_ids=ids).logits
    pruned = compress.prune_blocks(copy.deepcopy(model), [0, 2])
    assert pruned.config.num_hidden_layers == 2 and [ly.self_attn.layer_idx for ly in pruned.model.layers] == [0, 1]
    torch.testing.assert_close(pruned(input_ids=ids).logits, before, rtol=1e-5, atol=1e-5)
    gen = pruned.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert gen.shape == (2, 14)


@torch.no_grad()
def test_mlp_pruning_drops_dead_neurons_exactly():
    model = _model(layers=2, mlp=128)
    dead = torch.arange(0, 128, 4)  # 32 neurons that never fire
    for layer in model.model.layers:
        layer.mlp.up_proj.weight[dead] = 0.0
    calib = compress.calibrate(model, _batches())
    for scores in calib["neuron_importance"]:
        assert max(scores[i] for i in dead.tolist()) == 0.0
        assert min(s for i, s in enumerate(scores) if i % 4) > 0.0
    ids = torch.randint(3, 96, (2, 10))
    before = model(input_ids=ids).logits
    pruned = compress.prune_mlp(copy.deepcopy(model), calib["neuron_importance"], 96)
    for layer in pruned.model.layers:
        assert layer.mlp.gate_proj.weight.shape == (96, 64) and layer.mlp.down_proj.weight.shape == (64, 96)
    assert pruned.config.intermediate_size == 96
    torch.testing.assert_close(pruned(input_ids=ids).logits, before, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_pruned_model_runs_with_consistent_shapes():
    model = _model(layers=4, mlp=128)
    calib = compress.calibrate(model, _batches())
    keep = compress.blocks_to_keep(calib["block_importance"], 2)
    compress.prune_blocks(model, keep)
    compress.prune_mlp(model, [calib["neuron_importance"][i] for i in keep], 64)
    sd = model.state_dict()
    fresh = LlamaForCausalLM(model.config)
    fresh.load_state_dict(sd)  # the config describes the pruned weights exactly
    ids = torch.randint(3, 96, (1, 8))
    assert model(input_ids=ids).logits.shape == (1, 8, 96)
    assert model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0).shape == (1, 11)


@torch.no_grad()
def test_output_pruning_keeps_argmax_over_kept_tokens():
    model = _model(layers=2)
    kept = [1, 5, 17, 40, 41, 90]
    ids = torch.randint(3, 96, (3, 9))
    before = model(input_ids=ids).logits
    compress.prune_output_layer(model, kept)
    after = model(input_ids=ids).logits
    assert after.shape == before.shape
    torch.testing.assert_close(after[..., kept], before[..., kept], rtol=1e-5, atol=1e-5)
    others = [i for i in range(96) if i not in kept]
    assert torch.isneginf(after[..., others]).all()
    kept_t = torch.tensor(kept)
    assert torch.equal(after.argmax(-1), kept_t[before[..., kept].argmax(-1)])
    assert torch.isfinite(model.get_input_embeddings().weight).all()  # the embedding is untouched by untying


def test_qat_prepare_convert_round_trip_and_packed_export(tmp_path):
    from torchao.quantization import IntxUnpackedToInt8Tensor
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    model = _model(layers=2, hidden=64, mlp=128)
    ids = torch.randint(3, 96, (2, 10))
    compress.qat(model, 32, "prepare")
    assert isinstance(model.model.layers[0].mlp.up_proj, FakeQuantizedLinear)
    assert model.lm_head.weight is not model.model.embed_tokens.weight  # untied before quantisation
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert model.model.layers[0].mlp.up_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        fake = model(input_ids=ids).logits
    compress.qat(model, 32, "convert")
    w = model.model.layers[0].mlp.up_proj.weight
    assert isinstance(w, IntxUnpackedToInt8Tensor) and tuple(w.block_size) == (1, 32)
    assert int(w.qdata.min()) >= -8 and int(w.qdata.max()) <= 7 and bool((w.zero_point == 0).all())
    torch.testing.assert_close((w.qdata.float().view(128, 2, 32) * w.scale.view(128, 2, 1)).view(128, 64),
                               w.dequantize(), rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        real = model(input_ids=ids).logits
    torch.testing.assert_close(real, fake, rtol=0.05, atol=0.05)  # convert computes what QAT simulated
    assert isinstance(model.model.embed_tokens.weight, IntxUnpackedToInt8Tensor)

    size = compress.export_model(model, tmp_path / "m.safetensors")
    fp32 = compress.export_model(_model(layers=2, hidden=64, mlp=128, tied=False), tmp_path / "f.safetensors")
    assert size < fp32 / 4
    loaded = compress.load_exported_int4(tmp_path / "m.safetensors")
    assert torch.equal(loaded["model.layers.0.mlp.up_proj.weight"]["qdata"], w.qdata)
    assert torch.equal(loaded["model.layers.0.mlp.up_proj.weight"]["scale"], w.scale)

    # output pruning on the quantised head keeps its exact integers: logits on kept tokens unchanged
    kept = [1, 2, 50]
    with torch.no_grad():
        compress.prune_output_layer(model, kept)
        torch.testing.assert_close(model(input_ids=ids).logits[..., kept], real[..., kept], rtol=1e-5, atol=1e-5)


def test_int4_pack_round_trip():
    q = torch.randint(-8, 8, (7, 5), dtype=torch.int8)
    packed = compress.pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.numel() == 18
    assert torch.equal(compress.unpack_int4(packed, (7, 5)), q)


def test_distillation_loss_matches_formula():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    labels = torch.full((2, 5), -100)
    labels[:, 3:] = torch.randint(0, 7, (2, 2))
    loss, parts = guard_loss(s, labels, t, ratio=0.3, temperature=2.0)
    keep = labels[:, 1:] != -100
    sl, tl, y = s[:, :-1][keep], t[:, :-1][keep], labels[:, 1:][keep]
    ce = torch.nn.functional.cross_entropy(sl, y)
    pt = torch.softmax(tl / 2, -1)
    kl = (pt * (pt.log() - torch.log_softmax(sl / 2, -1))).sum(-1).mean() * 4
    assert loss.item() == pytest.approx((0.7 * ce + 0.3 * kl).item(), rel=1e-5)
    assert parts["kl"] == pytest.approx(kl.item(), rel=1e-5)
    same, _ = guard_loss(s, labels, s, ratio=1.0)
    assert same.item() == pytest.approx(0.0, abs=1e-6)


def test_answer_logits_with_a_shared_prefix_cache_equal_the_full_forward():
    """Training scores the answer positions only and runs the shared template opening once per distinct opening
    (gradients through its KV cache): logits and gradients must equal the plain forward's."""
    g = torch.Generator().manual_seed(3)
    openings = [torch.randint(3, 96, (7,), generator=g).tolist() for _ in range(2)]
    data = [(openings[i % 2] + torch.randint(3, 96, (3 + i,), generator=g).tolist(), [10 + i, 1]) for i in range(5)]
    assert shared_prefix_length(data, max_prefixes=2) == 7 and shared_prefix_length(data, max_prefixes=1) == 0
    batch = collate(data, pad_id=0)
    for prefix in (0, 7):
        model = _model(layers=2, seed=4).train()
        logits, target = answer_logits(model, batch, prefix)
        full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        keep = batch["labels"][:, 1:] != -100
        torch.testing.assert_close(logits, full[:, :-1][keep], atol=1e-5, rtol=1e-4)
        assert target.tolist() == [t for _, a in data for t in a]
        guard_loss(full, batch["labels"])[0].backward()
        ref = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        torch.nn.functional.cross_entropy(logits, target).backward()
        for p, r in zip(model.parameters(), ref):
            torch.testing.assert_close(p.grad, r, atol=1e-5, rtol=1e-4)


def test_cpu_latency_reports_positive_numbers():
    lat = compress.cpu_latency(_model(layers=1), torch.randint(3, 96, (1, 6)), new_tokens=3, repeats=1)
    assert lat["ttft_s"] > 0 and lat["decode_tokens_per_s"] > 0
