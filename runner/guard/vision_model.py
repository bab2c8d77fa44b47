"""The vision guard's model and processor, encoding of image + text items, P(unsafe) and greedy verdicts.

``model.kind=tiny``: a small ``MllamaForConditionalGeneration`` (the Llama 3.2 Vision architecture of Llama Guard 3
Vision: a tiled ViT whose patch features reach the text decoder through gated cross-attention layers) built from
an ``MllamaConfig``, with an ``MllamaProcessor`` made of an ``MllamaImageProcessor`` (one tile of
``image_size`` pixels) and a byte-level BPE tokenizer trained on the rendered guard prompts, to which the Llama 3
special tokens of the template (``<|image|>``, headers, ``<|eot_id|>``) are added as single tokens.
``model.kind=hf``: ``MllamaForConditionalGeneration.from_pretrained`` and ``AutoProcessor.from_pretrained`` of
``model.path`` or ``model.hf_id`` (``meta-llama/Llama-Guard-3-11B-Vision``). Either way every item goes through
the processor: ``processor(text=prompt, images=[[image]])`` gives ``input_ids``, ``pixel_values``,
``aspect_ratio_ids/mask`` and the ``cross_attention_mask`` from the image token to the end of the text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from runner.core.config import ModelConfig
from runner.data.vision_moderation import VisionModerationExample, open_image
from runner.guard.format import guard_answer, parse_output, unsafe_probability, verdict_token_ids
from runner.guard.vision_format import SPECIAL_TOKENS, vision_guard_prompt


@dataclass
class VisionModelConfig(ModelConfig):
    """A vision guard: the text decoder's sizes (``ModelConfig``) plus the vision encoder's."""

    name: str = "tiny_vision_guard"
    image_size: int = 32
    patch_size: int = 4
    vision_hidden_size: int = 32
    vision_layers: int = 2
    vision_global_layers: int = 1
    vision_heads: int = 2
    vision_intermediate_size: int = 64
    cross_attention_layers: list[int] = field(default_factory=lambda: [1])


# --------------------------------------------------------------------------- building
def tiny_processor(corpus: Sequence[str], vocab_size: int, image_size: int) -> Any:
    """An ``MllamaProcessor`` for a tiny guard: BPE tokenizer trained on ``corpus`` + the template's special tokens."""
    from transformers import MllamaImageProcessorPil, MllamaProcessor

    from runner.models.tokenizer import bpe_tokenizer

    tok = bpe_tokenizer(corpus, vocab_size)
    tok.add_tokens(SPECIAL_TOKENS, special_tokens=True)
    # as in the released tokenizer: the template's BOS opens every prompt and <|eot_id|> ends the verdict
    tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    images = MllamaImageProcessorPil(size={"height": image_size, "width": image_size}, max_image_tiles=1)
    return MllamaProcessor(image_processor=images, tokenizer=tok)


def tiny_mllama_config(cfg: Any, tokenizer: Any) -> Any:
    from transformers import MllamaConfig
    from transformers.models.mllama.configuration_mllama import MllamaTextConfig, MllamaVisionConfig

    if cfg.image_size % cfg.patch_size:
        raise ValueError(f"model.image_size={cfg.image_size} must be a multiple of model.patch_size={cfg.patch_size}")
    vision = MllamaVisionConfig(
        hidden_size=cfg.vision_hidden_size, num_hidden_layers=cfg.vision_layers,
        num_global_layers=cfg.vision_global_layers, attention_heads=cfg.vision_heads,
        intermediate_size=cfg.vision_intermediate_size, image_size=cfg.image_size, patch_size=cfg.patch_size,
        max_num_tiles=1, supported_aspect_ratios=[[1, 1]], intermediate_layers_indices=[0],
        vision_output_dim=2 * cfg.vision_hidden_size)  # the last layer's features + layer 0's
    text = MllamaTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        cross_attention_layers=list(cfg.cross_attention_layers), num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings, rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_word_embeddings, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return MllamaConfig(vision_config=vision, text_config=text,
                        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"))


@torch.no_grad()
def open_gates(model: Any, cross_attention: float = 1.0, vision: float = math.pi / 4) -> None:
    """Open the tanh gates that ``from_config`` initialises (almost) shut, for a guard trained from scratch:
    the text decoder's cross-attention gates (zero, so that a pretrained text model starts unchanged) to
    ``cross_attention``, so the vision encoder gets gradients from the first step; and the gates of the vision
    encoder's global layers (normal with std 0.02, which scales their output and their gradients by ~0.02) to
    ``vision``, the value the layer's constructor gives them."""
    for name, p in model.named_parameters():
        if name.endswith(("cross_attn_attn_gate", "cross_attn_mlp_gate")):
            p.fill_(cross_attention)
        elif name.endswith(("gate_attn", "gate_ffn")) and "vision_model" in name:
            p.fill_(vision)


def build_vision_guard(model_cfg: Any, hardware_cfg: Any, corpus: Sequence[str] = ()) -> tuple[Any, Any]:
    """(model, processor) for ``model_cfg``: a tiny Mllama built here (its tokenizer trained on ``corpus``) or the
    released checkpoint."""
    from transformers import AutoProcessor, MllamaForConditionalGeneration

    from runner.models.builder import ModelLoadError, _load_hint, torch_dtype

    dtype = torch_dtype(hardware_cfg.dtype)
    if model_cfg.kind == "tiny":
        processor = tiny_processor(list(corpus) + ["safe", "unsafe"], model_cfg.vocab_size, model_cfg.image_size)
        model = MllamaForConditionalGeneration(tiny_mllama_config(model_cfg, processor.tokenizer)).to(dtype)
        open_gates(model)
    else:
        source = model_cfg.path or model_cfg.hf_id
        try:
            processor = AutoProcessor.from_pretrained(source, revision=model_cfg.revision)
            model = MllamaForConditionalGeneration.from_pretrained(source, revision=model_cfg.revision, dtype=dtype)
        except (OSError, ValueError) as e:
            raise ModelLoadError(_load_hint(model_cfg, "weights", e)) from e
    tok = processor.tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if hardware_cfg.device != "cpu":
        model = model.to("cuda" if hardware_cfg.device == "auto" and torch.cuda.is_available() else hardware_cfg.device)
    model.generation_config.pad_token_id = tok.pad_token_id
    return model.eval(), processor


# --------------------------------------------------------------------------- encoding
@dataclass
class Encoded:
    """One item through the processor: prompt ids (+ answer ids when training) and its image tensors."""

    ids: list[int]
    prompt_len: int
    image: dict[str, torch.Tensor] | None  # pixel_values, aspect_ratio_ids, aspect_ratio_mask (batch dim 1)
    image_pos: int | None  # index of the image token (the cross-attention mask runs from it to the end)


@dataclass
class VisionPrompter:
    """Renders and encodes vision moderation items for one processor and category list."""

    processor: Any
    categories: list[str]

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    def prompt(self, ex: VisionModerationExample, with_image: bool = True) -> str:
        return vision_guard_prompt(ex.prompt, ex.response, self.categories, image=with_image and ex.image is not None)

    def answer(self, ex: VisionModerationExample) -> str:
        cats = [c for c in ex.categories if c in self.categories]
        return "unsafe" if ex.unsafe and not cats else guard_answer(cats if ex.unsafe else [])

    def encode(self, ex: VisionModerationExample, with_image: bool = True, answer: bool = False,
               prompt: str | None = None) -> Encoded:
        """``prompt`` overrides the rendered text (attacks edit the response)."""
        text = prompt if prompt is not None else self.prompt(ex, with_image)
        tok = self.tokenizer
        if with_image and ex.image is not None:
            out = self.processor(text=[text], images=[[open_image(ex.image)]], add_special_tokens=False,
                                 return_tensors="pt")
            ids = out["input_ids"][0].tolist()
            image = {k: out[k] for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask")}
            pos = ids.index(self.processor.image_token_id)
        else:
            ids, image, pos = tok(text, add_special_tokens=False)["input_ids"], None, None
        n = len(ids)
        if answer:
            ids = ids + tok(self.answer(ex), add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return Encoded(ids, n, image, pos)


def collate(items: Sequence[Encoded], pad_id: int, left: bool) -> dict[str, torch.Tensor]:
    """A padded batch (left padding for scoring and generation, right for training) with ``labels`` on the answer
    tokens; image tensors and the cross-attention mask when the items have images (all or none)."""
    length = max(len(e.ids) for e in items)
    ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    with_images = [e.image is not None for e in items]
    if any(with_images) and not all(with_images):
        raise ValueError("a batch mixes items with and without images")
    tiles = items[0].image["pixel_values"].shape[2] if all(with_images) else 0
    cross = torch.zeros((len(items), length, 1, tiles), dtype=torch.long) if tiles else None
    for i, e in enumerate(items):
        off = length - len(e.ids) if left else 0
        ids[i, off:off + len(e.ids)] = torch.tensor(e.ids)
        mask[i, off:off + len(e.ids)] = 1
        labels[i, off + e.prompt_len:off + len(e.ids)] = torch.tensor(e.ids[e.prompt_len:])
        if cross is not None:
            n_tiles = int(e.image["aspect_ratio_mask"][0, 0].sum())
            cross[i, off + e.image_pos:off + len(e.ids), 0, :n_tiles] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if cross is not None:
        batch["cross_attention_mask"] = cross
        for k in ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"):
            batch[k] = torch.cat([e.image[k] for e in items])
    return batch


def model_inputs(batch: dict[str, torch.Tensor], device: Any) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items() if k != "labels"}


# --------------------------------------------------------------------------- scoring
def pixel_stats(processor: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The image processor's per-channel mean and std, shaped to broadcast over ``pixel_values`` [..., 3, H, W]."""
    ip = processor.image_processor
    mean = torch.tensor(ip.image_mean, dtype=like.dtype, device=like.device).view(3, 1, 1)
    std = torch.tensor(ip.image_std, dtype=like.dtype, device=like.device).view(3, 1, 1)
    return mean, std


def verdict_logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token logits at the last position of a left-padded batch (where the verdict is generated)."""
    out = model(**model_inputs(batch, model.device), logits_to_keep=1)
    return out.logits[:, -1, :].float()


@torch.no_grad()
def unsafe_probs(model: Any, prompter: VisionPrompter, encoded: Sequence[Encoded], batch_size: int = 32
                 ) -> list[float]:
    """P(``unsafe``) at the verdict position of every encoded item."""
    _, unsafe_id = verdict_token_ids(prompter.tokenizer)
    model.eval()
    out: list[float] = []
    for s in range(0, len(encoded), batch_size):
        batch = collate(encoded[s:s + batch_size], prompter.tokenizer.pad_token_id, left=True)
        out += unsafe_probability(verdict_logits(model, batch), unsafe_id).tolist()
    return out


@torch.no_grad()
def generate_verdicts(model: Any, prompter: VisionPrompter, encoded: Sequence[Encoded], max_new_tokens: int = 8,
                      batch_size: int = 32) -> tuple[list[str], list[float]]:
    """Greedy guard outputs and P(unsafe) at the first generated position, one ``generate`` call per batch."""
    tok = prompter.tokenizer
    _, unsafe_id = verdict_token_ids(tok)
    eos = [tok.eos_token_id] + ([tok.convert_tokens_to_ids("<|eot_id|>")] if "<|eot_id|>" in tok.get_vocab() else [])
    model.eval()
    texts, probs = [], []
    for s in range(0, len(encoded), batch_size):
        batch = model_inputs(collate(encoded[s:s + batch_size], tok.pad_token_id, left=True), model.device)
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, pad_token_id=tok.pad_token_id, eos_token_id=eos,
                             temperature=None, top_p=None, top_k=None)
        probs += unsafe_probability(out.logits[0].float(), unsafe_id).tolist()
        for row in out.sequences[:, batch["input_ids"].shape[1]:].tolist():
            cut = next((i for i, t in enumerate(row) if t in eos), len(row))
            texts.append(tok.decode(row[:cut], skip_special_tokens=True))
    return texts, probs


def verdicts(texts: Sequence[str], categories: Sequence[str]) -> list[Any]:
    return [parse_output(t, categories) for t in texts]
