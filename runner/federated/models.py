"""Small FL networks built from config (no downloads), written so ``torch.func.vmap`` can batch clients.

No batch norm (its running statistics are state that per-client vmapped training cannot carry) and a
hand-written LSTM cell (``nn.LSTM``'s fused kernel does not vmap). Architectures follow LEAF / FedBuff:
an MLP for digits and synthetic, LEAF's 4-layer CNN for CelebA/FEMNIST, a small CNN for CIFAR-10, and an
embedding + LSTM for Sent140 / Shakespeare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from runner.core.errors import ConfigError


@dataclass
class FLModelConfig:
    """A small network for federated simulation. ``kind=tiny``: built from this config, offline."""

    name: str = "fl_mlp"
    kind: str = "tiny"
    arch: str = "mlp"  # mlp (0 hidden layers = softmax regression) | cnn | lstm
    hidden: list[int] = field(default_factory=lambda: [32])  # mlp hidden widths; lstm: [hidden size]
    channels: list[int] = field(default_factory=lambda: [32, 32, 32, 32])  # cnn conv widths (each: conv, pool)
    embed_dim: int = 32  # lstm token embedding

    @staticmethod
    def check(m: Any) -> None:
        if m.arch not in ("mlp", "cnn", "lstm"):
            raise ConfigError(f"model.arch='{m.arch}' must be one of mlp, cnn, lstm")
        if m.kind != "tiny":
            raise ConfigError(f"model.kind={m.kind}: federated models are built from config (model.kind=tiny)")
        if any(h < 1 for h in m.hidden) or any(c < 1 for c in m.channels):
            raise ConfigError("model.hidden and model.channels must hold positive widths")


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: list[int], num_classes: int):
        super().__init__()
        dims = [in_dim, *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """conv3×3 → ReLU → maxpool2 per width in ``channels``, then a linear classifier (LEAF's CelebA CNN)."""

    def __init__(self, in_shape: tuple[int, ...], channels: list[int], num_classes: int):
        super().__init__()
        c, h, w = in_shape
        layers: list[nn.Module] = []
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c, h, w = out, h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class LSTMClassifier(nn.Module):
    """Token embedding → one LSTM layer (explicit gates, vmap-friendly) → linear head on the last state."""

    def __init__(self, vocab: int, embed_dim: int, hidden: int, num_classes: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, embed_dim)
        self.gates = nn.Linear(embed_dim + hidden, 4 * hidden)
        self.head = nn.Linear(hidden, num_classes)
        self.hidden = hidden

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        e = self.embed(tokens)
        h = e.new_zeros(e.shape[0], self.hidden)
        c = torch.zeros_like(h)
        for t in range(e.shape[1]):
            i, f, g, o = self.gates(torch.cat([e[:, t], h], dim=-1)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return self.head(h)


def build_fl_model(cfg: Any, input_shape: tuple[int, ...], num_classes: int,
                   vocab_size: int | None = None) -> nn.Module:
    """The network ``cfg`` names, sized for the dataset's inputs and labels."""
    if cfg.arch == "mlp":
        return MLP(math.prod(input_shape), list(cfg.hidden), num_classes)
    if cfg.arch == "cnn":
        if len(input_shape) != 3:
            raise ConfigError(f"model.arch=cnn needs image inputs (C, H, W), got shape {input_shape}")
        return CNN(tuple(input_shape), list(cfg.channels), num_classes)
    if vocab_size is None:
        raise ConfigError("model.arch=lstm needs a token dataset (sent140, shakespeare)")
    return LSTMClassifier(vocab_size, cfg.embed_dim, cfg.hidden[0], num_classes)
