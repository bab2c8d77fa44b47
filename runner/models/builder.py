"""Build a causal LM and its tokenizer from the ``model`` and ``hardware`` groups.

``model.kind=tiny``: a small ``LlamaForCausalLM`` from a ``LlamaConfig`` (random init, seeded) with a
tokenizer built here; ``model.kind=hf``: ``AutoModelForCausalLM.from_pretrained(model.path or
model.hf_id)``. Offline, an hf model that is not cached fails with an error that names ``model.path``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from omegaconf import DictConfig

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


class ModelLoadError(RuntimeError):
    """A model's weights could not be loaded (offline, missing files, gated repo)."""


def torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def build_tokenizer(model_cfg: DictConfig, corpus: Iterable[str] | None = None):
    """The tokenizer for ``model_cfg``: built here for tiny models, loaded for hf models."""
    from runner.models.tokenizer import bpe_tokenizer, byte_tokenizer

    if model_cfg.kind == "tiny":
        if model_cfg.tokenizer == "bpe":
            if corpus is None:
                raise ValueError("model.tokenizer=bpe needs a corpus to train on")
            return bpe_tokenizer(corpus, model_cfg.vocab_size)
        return byte_tokenizer()
    from transformers import AutoTokenizer

    source = model_cfg.path or model_cfg.hf_id
    try:
        tok = AutoTokenizer.from_pretrained(source, revision=model_cfg.revision,
                                            trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(_load_hint(model_cfg, "tokenizer", e)) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def tiny_llama_config(model_cfg: DictConfig, tokenizer) -> Any:
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_kv_heads,
        max_position_embeddings=model_cfg.max_position_embeddings,
        rope_theta=model_cfg.rope_theta,
        tie_word_embeddings=model_cfg.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_model(model_cfg: DictConfig, tokenizer, hardware_cfg: DictConfig | None = None):
    """The causal LM for ``model_cfg`` on the hardware's device and dtype (train mode off)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    dtype = torch_dtype(hardware_cfg.dtype) if hardware_cfg is not None else torch.float32
    if model_cfg.kind == "tiny":
        model = LlamaForCausalLM(tiny_llama_config(model_cfg, tokenizer)).to(dtype)
    else:
        source = model_cfg.path or model_cfg.hf_id
        try:
            model = AutoModelForCausalLM.from_pretrained(
                source, revision=model_cfg.revision, dtype=dtype, trust_remote_code=model_cfg.trust_remote_code
            )
        except (OSError, ValueError) as e:
            raise ModelLoadError(_load_hint(model_cfg, "weights", e)) from e
    if hardware_cfg is not None and hardware_cfg.device != "cpu":
        device = "cuda" if hardware_cfg.device == "auto" and torch.cuda.is_available() else hardware_cfg.device
        if device != "auto":
            model = model.to(device)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()


def build_model_and_tokenizer(model_cfg: DictConfig, hardware_cfg: DictConfig | None = None,
                              corpus: Iterable[str] | None = None):
    tok = build_tokenizer(model_cfg, corpus)
    return build_model(model_cfg, tok, hardware_cfg), tok


def _load_hint(model_cfg: DictConfig, what: str, e: Exception) -> str:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return (
        f"could not load the {what} of model '{model_cfg.name}' from "
        f"'{model_cfg.path or model_cfg.hf_id}' ({first}). The hub is unreachable offline: download the "
        f"model elsewhere and set model.path=/local/dir/with/weights"
    )
