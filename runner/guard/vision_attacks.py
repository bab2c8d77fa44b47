"""Attacks on a vision guard: PGD on the image and GCG on an attacker-controlled response suffix.

PGD (Madry et al., L∞): on unsafe items the attacker perturbs the image within ``‖δ‖∞ ≤ ε`` (pixel values in
[0, 1]) to push the guard's P(unsafe) down::

    x ← x0 + U(−ε, ε)                                  (random start; optional)
    repeat steps:  x ← Π_{[x0−ε, x0+ε] ∩ [0,1]} ( x − α · sign ∇_x log P(unsafe | x, text) )

The image is attacked in the processor's output pixel space (``pixel_values · std + mean``: the resized tile, in
[0, 1]), so the same code serves the tiny guard and the released one. GCG (Zou et al. 2023) edits the tokens of a
suffix appended to the agent's response to make the guard's most likely verdict ``safe``; it is run by ``nanogcg``
through a thin wrapper that feeds the image to the Mllama model on every candidate. A miss is an unsafe item whose
P(unsafe) falls below the decision threshold.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from runner.data.vision_moderation import VisionModerationExample
from runner.guard.format import verdict_token_ids
from runner.guard.vision_format import vision_guard_prompt
from runner.guard.vision_model import Encoded, VisionPrompter, collate, model_inputs, pixel_stats, unsafe_probs

NANOGCG_INSTALL = "pip install --no-deps nanogcg==0.3.0"


def pgd_linf(x0: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor], eps: float, steps: int,
             step_size: float, random_start: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected sign-gradient descent on ``loss_fn`` (summed over the batch) within the L∞ ball of radius ``eps``
    around ``x0`` intersected with [0, 1]; returns the final iterate (detached)."""
    x = x0.detach().clone()
    if eps <= 0 or steps <= 0:
        return x
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1
        x = (x + eps * noise).clamp(0.0, 1.0)
    lo, hi = (x0 - eps).clamp(min=0.0), (x0 + eps).clamp(max=1.0)
    for _ in range(steps):
        x.requires_grad_(True)
        with torch.enable_grad():
            grad, = torch.autograd.grad(loss_fn(x).sum(), x)
        x = torch.minimum(torch.maximum(x.detach() - step_size * grad.sign(), lo), hi)
    return x.detach()


@dataclass
class PGDResult:
    p_clean: list[float]
    p_attacked: list[float]
    pixels: torch.Tensor | None = None  # attacked images in [0, 1], [N, images, tiles, 3, H, W]


def pgd_attack(model: Any, prompter: VisionPrompter, encoded: Sequence[Encoded], eps: float, steps: int,
               step_size: float, random_start: bool, seed: int, batch_size: int = 32) -> PGDResult:
    """PGD on the images of ``encoded`` (items with images) against log P(unsafe) at the verdict position."""
    _, unsafe_id = verdict_token_ids(prompter.tokenizer)
    gen = torch.Generator().manual_seed(seed)
    was = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    clean, attacked, pixels = [], [], []
    try:
        for s in range(0, len(encoded), batch_size):
            batch = model_inputs(collate(encoded[s:s + batch_size], prompter.tokenizer.pad_token_id, left=True),
                                 model.device)
            pv = batch.pop("pixel_values")
            mean, std = pixel_stats(prompter.processor, pv)

            def log_p_unsafe(x: torch.Tensor, batch: dict = batch, mean: torch.Tensor = mean,
                             std: torch.Tensor = std) -> torch.Tensor:
                logits = model(**batch, pixel_values=(x - mean) / std, logits_to_keep=1).logits[:, -1].float()
                return logits.log_softmax(-1)[:, unsafe_id]

            x0 = pv * std + mean
            x = pgd_linf(x0, log_p_unsafe, eps, steps, step_size, random_start, gen)
            with torch.no_grad():
                clean += log_p_unsafe(x0).exp().tolist()
                attacked += log_p_unsafe(x).exp().tolist()
            pixels.append(x.cpu())
    finally:
        for p, r in zip(model.parameters(), was):
            p.requires_grad_(r)
    return PGDResult(clean, attacked, torch.cat(pixels) if pixels else None)


def miss_rate(p_unsafe: Sequence[float], threshold: float = 0.5) -> float:
    """Share of (unsafe) items the guard lets through: P(unsafe) below the threshold."""
    return sum(p < threshold for p in p_unsafe) / len(p_unsafe) if p_unsafe else float("nan")


# --------------------------------------------------------------------------- GCG
class ImageConditioned(torch.nn.Module):
    """A Mllama guard seen as a text-only causal LM for ``nanogcg``: every call gets the item's image features
    (computed once) and a cross-attention mask from the image token to the end of the sequence."""

    def __init__(self, model: Any, item: Encoded):
        super().__init__()
        self.model = model
        dev = model.device
        with torch.no_grad():
            pv = item.image["pixel_values"].to(dev, model.dtype)
            vis = model.model.vision_model(pixel_values=pv, aspect_ratio_ids=item.image["aspect_ratio_ids"].to(dev),
                                           aspect_ratio_mask=item.image["aspect_ratio_mask"].to(dev))
            h = vis.last_hidden_state
            self.states = model.model.multi_modal_projector(h).reshape(-1, h.shape[-2], model.model.hidden_size)
        self.image_pos = item.image_pos
        self.tiles = int(item.image["aspect_ratio_mask"][0, 0].sum())
        self.max_tiles = item.image["pixel_values"].shape[2]

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def config(self) -> Any:
        return self.model.config

    def get_input_embeddings(self) -> Any:
        return self.model.get_input_embeddings()

    def forward(self, inputs_embeds: torch.Tensor, **_: Any) -> Any:
        b, n = inputs_embeds.shape[:2]
        cross = torch.zeros((b, n, 1, self.max_tiles), dtype=torch.long, device=inputs_embeds.device)
        cross[:, self.image_pos:, 0, :self.tiles] = 1
        states = self.states.expand(b, *self.states.shape[1:])
        return self.model(inputs_embeds=inputs_embeds, cross_attention_states=states, cross_attention_mask=cross)


def import_nanogcg() -> Any:
    try:
        import nanogcg
    except ImportError:
        raise ImportError(f"the GCG attack needs nanogcg: {NANOGCG_INSTALL} (not a pyproject extra: its metadata "
                          "pins transformers<=4.47.1, so pip's resolver would downgrade this project's transformers; "
                          "its code runs with transformers 5)") from None
    return nanogcg


def _not_allowed_ids(ids: torch.Tensor | None, tokenizer: Any, embeddings: Any) -> torch.Tensor:
    """nanogcg's excluded tokens (non-ASCII, BOS/EOS/PAD/UNK among ``tokenizer.vocab_size``) plus every special
    token and every embedding row past the base vocabulary: an attacker types text, and a suffix holding
    ``<|image|>`` or a header token would not be text (the processor would also count a second image)."""
    extra = set(range(tokenizer.vocab_size, embeddings.weight.shape[0])) | set(tokenizer.all_special_ids)
    extra |= {i for t, i in tokenizer.get_added_vocab().items()}
    base = set(ids.tolist()) if ids is not None else set()
    return torch.tensor(sorted(base | extra), device=embeddings.weight.device)


@dataclass
class GCGResult:
    p_clean: list[float]
    p_attacked: list[float]
    suffixes: list[str]
    losses: list[float]


def gcg_attack(model: Any, prompter: VisionPrompter, examples: Sequence[VisionModerationExample], steps: int,
               search_width: int, topk: int, suffix_len: int, seed: int) -> GCGResult:
    """GCG (nanogcg) on a suffix of each unsafe response: target the verdict ``safe``; the attacked response is
    the response, a space and the best suffix, re-rendered and re-tokenised as any response would be."""
    nanogcg = import_nanogcg()
    import logging

    logging.getLogger("nanogcg").setLevel(logging.WARNING)
    tok = copy.deepcopy(prompter.tokenizer)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # the guard prompt as it is
    clean = unsafe_probs(model, prompter, [prompter.encode(e) for e in examples])
    attacked, suffixes, losses = [], [], []
    was = [p.requires_grad for p in model.parameters()]
    model.eval().requires_grad_(False)
    try:
        for i, ex in enumerate(examples):
            template = vision_guard_prompt(ex.prompt, f"{ex.response} {{optim_str}}", prompter.categories)
            wrapped = ImageConditioned(model, prompter.encode(ex))
            config = nanogcg.GCGConfig(num_steps=steps, search_width=search_width, topk=topk, seed=seed + i,
                                       optim_str_init=" ".join(["x"] * suffix_len), use_prefix_cache=False,
                                       verbosity="WARNING")
            gcg = nanogcg.gcg.GCG(wrapped, tok, config)
            gcg.not_allowed_ids = _not_allowed_ids(gcg.not_allowed_ids, tok, wrapped.get_input_embeddings())
            result = gcg.run([{"role": "user", "content": template}], "safe")
            attacked_ex = copy.copy(ex)
            attacked_ex.response = f"{ex.response} {result.best_string}"
            attacked += unsafe_probs(model, prompter, [prompter.encode(attacked_ex)])
            suffixes.append(result.best_string)
            losses.append(float(result.best_loss))
    finally:
        for p, r in zip(model.parameters(), was):
            p.requires_grad_(r)
    return GCGResult(clean, attacked, suffixes, losses)
