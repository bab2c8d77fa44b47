"""PrE-Text's models: the masked LM that varies synthetic samples, the LLM that expands the DP seed set, and
the downstream LM's next-token metrics.

- Variation (PE's VARIATION_API): mask ``mask_fraction`` of a sample's tokens and refill every masked slot by
  sampling the masked LM's prediction. The embedded default builds a tiny BERT-style MLM from config over a
  whitespace word vocabulary of the public text (so a refill is a whole public word and decoding is exact);
  paper scale loads a RoBERTa-large-class MLM by its HF id.
- Expansion: few-shot "List of diverse text samples" prompts of seed samples through a rollout engine
  (``hf`` or ``vllm``); the completion's first line is a new sample. Post-processing of the DP seed set.
- Downstream: next-token accuracy and perplexity over consecutive windows of the private test stream.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from runner.core.context import RunContext

MLM_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


# --------------------------------------------------------------------------- the masked LM
@dataclass
class MLMConfig:
    """The variation model: ``kind=tiny`` (built here, pre-trained on public text) or ``kind=hf`` (``hf_id``)."""

    kind: str = "tiny"
    hf_id: str | None = None
    path: str | None = None
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 128
    max_length: int = 64
    pretrain_steps: int = 300
    batch_size: int = 32
    lr: float = 3e-3
    warmup_steps: int = 20


def word_tokenizer(corpus: Sequence[str]) -> Any:
    """A whitespace word-level tokenizer over ``corpus`` with BERT's special tokens (exact round trip)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(list(corpus), trainers.WordLevelTrainer(special_tokens=MLM_SPECIALS, min_frequency=1,
                                                                    show_progress=False))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")),
                                                 ("[SEP]", tok.token_to_id("[SEP]"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", clean_up_tokenization_spaces=False)


def build_mlm(cfg: Any, public_texts: Sequence[str], device: str = "cpu") -> tuple[Any, Any]:
    """(masked LM, tokenizer): a tiny BERT over the public word vocabulary, or an HF ``AutoModelForMaskedLM``."""
    if cfg.kind == "hf":
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        source = cfg.path or cfg.hf_id
        return AutoModelForMaskedLM.from_pretrained(source).to(device).eval(), AutoTokenizer.from_pretrained(source)
    from transformers import BertConfig, BertForMaskedLM

    tok = word_tokenizer(public_texts)
    model = BertForMaskedLM(BertConfig(
        vocab_size=len(tok), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_length, pad_token_id=tok.pad_token_id))
    return model.to(device).eval(), tok


def mask_tokens(input_ids: torch.Tensor, maskable: torch.Tensor, fraction: float, mask_id: int,
                generator: torch.Generator) -> torch.Tensor:
    """A bool matrix choosing ``max(1, round(fraction · n))`` of each row's ``n`` maskable positions uniformly."""
    scores = torch.rand(input_ids.shape, generator=generator).masked_fill(~maskable, 2.0)
    k = (maskable.sum(1).float() * fraction).round().clamp(min=1).long()
    ranks = scores.argsort(1).argsort(1)
    return (ranks < k[:, None]) & maskable


def pretrain_mlm(model: Any, tok: Any, texts: Sequence[str], cfg: Any, mask_fraction: float, ctx: RunContext,
                 stage: str = "mlm_pretrain") -> None:
    """Masked-LM pre-training on public text (resumable: a finished stage reloads its final weights)."""
    from runner.core.seeding import derive_seed
    from runner.models.finetune import LMTrainConfig, ResumableOptimizer

    train_cfg = LMTrainConfig(steps=cfg.pretrain_steps, batch_size=cfg.batch_size, lr=cfg.lr,
                              warmup_steps=min(cfg.warmup_steps, cfg.pretrain_steps - 1))
    model.train()
    opt = ResumableOptimizer.create(model, train_cfg, derive_seed(ctx.seed, stage))
    start = opt.restore(ctx, stage)
    enc = tok(list(texts), padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt",
              return_special_tokens_mask=True)
    maskable = enc["attention_mask"].bool() & ~enc["special_tokens_mask"].bool()
    for step in range(start + 1, cfg.pretrain_steps + 1):
        rows = torch.randint(0, len(texts), (cfg.batch_size,), generator=opt.generator)
        ids, att = enc["input_ids"][rows], enc["attention_mask"][rows]
        chosen = mask_tokens(ids, maskable[rows], mask_fraction, tok.mask_token_id, opt.generator)
        labels = ids.masked_fill(~chosen, -100)
        loss = model(input_ids=ids.masked_fill(chosen, tok.mask_token_id).to(model.device),
                     attention_mask=att.to(model.device), labels=labels.to(model.device)).loss
        ctx.log({"loss": loss.item(), "lr": opt.step(loss)}, step, stage)
        if step == cfg.pretrain_steps:
            opt.save(ctx, stage, step)
    model.eval()


@torch.no_grad()
def vary(texts: Sequence[str], model: Any, tok: Any, mask_fraction: float, seed: int, temperature: float = 1.0,
         max_length: int = 64, batch_size: int = 64) -> list[str]:
    """One variation of each text: ``mask_fraction`` of its tokens masked, then refilled one slot at a time (left to
    right, each sampled from the MLM given the slots already refilled, so neighbouring slots stay consistent)."""
    gen = torch.Generator().manual_seed(seed % 2**63)
    special = torch.tensor(sorted(set(tok.all_special_ids)))
    out: list[str] = []
    for i in range(0, len(texts), batch_size):
        enc = tok(list(texts[i:i + batch_size]), padding=True, truncation=True, max_length=max_length,
                  return_tensors="pt", return_special_tokens_mask=True)
        att = enc["attention_mask"]
        maskable = att.bool() & ~enc["special_tokens_mask"].bool()
        pending = mask_tokens(enc["input_ids"], maskable, mask_fraction, tok.mask_token_id, gen)
        ids = enc["input_ids"].masked_fill(pending, tok.mask_token_id)
        while pending.any():
            rows = pending.any(1).nonzero().squeeze(1)
            cols = pending[rows].float().argmax(1)  # each row's leftmost slot still masked
            logits = model(input_ids=ids.to(model.device), attention_mask=att.to(model.device)).logits
            logits = logits[rows, cols].float().cpu()
            logits[:, special] = -math.inf  # refill with words, never with a special token
            probs = torch.softmax(logits / max(temperature, 1e-6), -1)
            ids[rows, cols] = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
            pending[rows, cols] = False
        out += [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
    return out


# --------------------------------------------------------------------------- expansion with an LLM
EXPANSION_HEADER = "List of diverse text samples:\n"


def list_prompt(examples: Sequence[str]) -> str:
    """The few-shot prompt: the header, numbered examples, and the next number to complete."""
    body = "".join(f"{i + 1}. {t}\n" for i, t in enumerate(examples))
    return f"{EXPANSION_HEADER}{body}{len(examples) + 1}. "


def list_documents(seed_texts: Sequence[str], shots: int, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` list-formatted documents of ``shots + 1`` seed samples (the expander's fine-tuning corpus for a small
    LM that has not seen the format; a large LLM follows it few-shot)."""
    docs = []
    for _ in range(n):
        pick = rng.choice(len(seed_texts), size=min(shots + 1, len(seed_texts)), replace=False)
        docs.append(list_prompt([seed_texts[j] for j in pick[:-1]]) + seed_texts[pick[-1]] + "\n")
    return docs


def expand(engine: Any, seed_texts: Sequence[str], num_samples: int, shots: int, max_new_tokens: int,
           temperature: float, seed: int, top_p: float = 1.0) -> list[str]:
    """``num_samples`` new samples: each prompt shows ``shots`` random seed samples; keep the first completed line
    (empty lines and copies of a seed sample are dropped)."""
    from runner.rollout.base import SamplingParams

    rng = np.random.default_rng(seed)
    prompts = [list_prompt([seed_texts[j] for j in rng.choice(len(seed_texts), size=min(shots, len(seed_texts)),
                                                               replace=False)]) for _ in range(num_samples)]
    outs = engine.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature,
                                                   top_p=top_p, seed=seed, stop=["\n"]))
    known = set(seed_texts)
    return [t for r in outs if (t := r.text.split("\n")[0].strip()) and t not in known]


# --------------------------------------------------------------------------- downstream metrics
@torch.no_grad()
def next_token_metrics(model: Any, stream: torch.Tensor, seq_len: int, batch_size: int = 32) -> dict[str, float]:
    """Next-token accuracy (argmax = the true next token), mean cross-entropy and perplexity over every
    consecutive, non-overlapping window of ``stream``."""
    was_training = model.training
    model.eval()
    n_windows = max(1, (stream.numel() - 1) // seq_len)
    windows = stream[: n_windows * seq_len].view(n_windows, seq_len)
    correct, total_loss, count = 0, 0.0, 0
    for chunk in windows.split(batch_size):
        chunk = chunk.to(model.device)
        logits = model(input_ids=chunk).logits[:, :-1].float()
        target = chunk[:, 1:]
        total_loss += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                        reduction="sum").item()
        correct += int((logits.argmax(-1) == target).sum())
        count += target.numel()
    model.train(was_training)
    loss = total_loss / count
    return {"next_token_accuracy": correct / count, "loss": loss, "perplexity": math.exp(loss)}
