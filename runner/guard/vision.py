"""Llama Guard 3 Vision (arXiv 2411.10414): train and evaluate a multimodal guard, with its text-only baseline and
image / response attacks (recipes ``guard_vision``, ``guard_vision_eval``, ``guard_vision_paper``).

1. Data: image + prompt (+ response) items (:mod:`runner.data.vision_moderation`), split into train and held-out
   test (the toy world's own held-out part, else a seeded split).
2. Guard: a released checkpoint evaluated as is, or a tiny Mllama guard built from config. The released guard is
   a fine-tuned pretrained VLM; the tiny one is likewise first pretrained as a VLM (image captioning: "A picture
   of a" → the object, on fresh renders of the toy world's objects on the training palette, as a VLM is pretrained
   on far more images than its guard data holds), then trained on the answers (``safe`` / ``unsafe\\nS9``) of the
   training items rendered in the released Vision template, its vision tower frozen (``vision_lr_scale``: the
   few hundred guard items would otherwise wear away what pretraining taught it). Both stages see
   label-preserving augmentations of the images (mirror, RGB channel permutation), so the tiny encoder learns the
   object's shape rather than the training renders' palette.
3. Evaluation per task (prompt / response classification): greedy verdicts parsed as for the text guard →
   precision, recall, F1, FPR, per-category metrics; P(unsafe) at the verdict position → AUPRC, threshold curves.
4. Baselines: the same guard with the image removed (text-only; how much the image matters), a bag-of-words
   logistic regression on the text (is the task solvable from text alone?) and the majority class.
5. Robustness: PGD on the images of unsafe prompt items (miss rate clean vs attacked, and against ε), GCG on an
   attacker-controlled suffix of unsafe responses (miss rate clean vs attacked).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from runner.core.context import RunContext
from runner.core.errors import ConfigError
from runner.data.vision_moderation import (
    TOY_DEFAULTS,
    VisionModerationExample,
    load_vision_moderation,
    toy_object_images,
    vision_split,
)
from runner.guard.baselines import bow_baseline, majority_baseline
from runner.guard.format import CATEGORIES_1B, check_categories, parse_output
from runner.guard.metrics import average_precision, binary_metrics, per_category, threshold_curves
from runner.guard.train import answer_loss
from runner.guard.vision_model import Encoded, VisionPrompter, collate, generate_verdicts, pixel_stats
from runner.models.finetune import ResumableOptimizer

TASKS = ("prompt", "response")


@dataclass
class PGDSettings:
    enabled: bool = True
    eps: float = 0.03137254901960784  # 8/255
    steps: int = 10
    step_size: float = 0.00784313725490196  # 2/255
    random_start: bool = True
    eps_grid: list[float] = field(default_factory=lambda: [0.0, 2 / 255, 4 / 255, 8 / 255, 16 / 255])
    max_items: int = 64  # unsafe prompt items attacked (the first ones of the test split)


@dataclass
class GCGSettings:
    enabled: bool = True
    steps: int = 8
    search_width: int = 32
    topk: int = 32
    suffix_len: int = 8
    max_items: int = 8  # unsafe response items attacked


@dataclass
class GuardVisionConfig:
    """``guard_vision``: train (tiny) or load (hf) a vision guard; evaluate; text-only baseline; attacks."""

    name: str = "guard_vision"
    categories: list[str] = field(default_factory=lambda: list(CATEGORIES_1B))
    test_fraction: float = 0.3  # files only; the toy world keeps its own held-out split
    pretrain_steps: int = 4000  # tiny models on the toy world: caption pretraining of the VLM before the guard
    pretrain_images: int = 16000  # fresh captioned renders on the training palette for it (0: the training split's)
    train_steps: int = 800  # tiny models only
    batch_size: int = 16
    lr: float = 3.0e-3
    warmup_steps: int = 40
    weight_decay: float = 0.0
    vision_lr_scale: float = 0.0  # guard stage: the vision tower's lr relative to ``lr`` (0: frozen, as pretrained)
    augment: bool = True  # label-preserving image augmentation in training (mirror, colour-channel permutation)
    checkpoint_every: int = 200
    eval_batch_size: int = 32
    max_new_tokens: int = 8
    threshold: float = 0.5  # P(unsafe) at or above it counts as flagged in the miss rates
    num_thresholds: int = 21
    grid_items: int = 16  # example images shown in summary.md
    pgd: PGDSettings = field(default_factory=PGDSettings)
    gcg: GCGSettings = field(default_factory=GCGSettings)

    @staticmethod
    def validate(cfg: DictConfig) -> None:
        a = cfg.algorithm
        try:
            check_categories(list(a.categories))
        except ValueError as e:
            raise ConfigError(f"algorithm.categories: {e}") from None
        if not 0.0 < a.test_fraction < 1.0:
            raise ConfigError(f"algorithm.test_fraction={a.test_fraction} must be in (0, 1)")
        for key in ("batch_size", "eval_batch_size", "max_new_tokens", "checkpoint_every"):
            if a[key] < 1:
                raise ConfigError(f"algorithm.{key}={a[key]} must be >= 1")
        if a.pretrain_images < 0 or a.vision_lr_scale < 0:
            raise ConfigError("algorithm.pretrain_images and algorithm.vision_lr_scale must be >= 0")
        for key in ("pretrain_steps", "train_steps"):
            if a[key] < 0 or (a[key] and a.warmup_steps >= a[key]):
                raise ConfigError(f"algorithm.{key}={a[key]} must be 0 or above algorithm.warmup_steps")
        if not 0.0 < a.threshold < 1.0 or a.num_thresholds < 2:
            raise ConfigError("algorithm.threshold must be in (0, 1) and algorithm.num_thresholds >= 2")
        if a.pgd.enabled and (a.pgd.eps < 0 or a.pgd.steps < 1 or a.pgd.step_size <= 0
                              or any(e < 0 for e in a.pgd.eps_grid)):
            raise ConfigError("algorithm.pgd: eps and eps_grid must be >= 0, steps >= 1, step_size > 0")
        if a.gcg.enabled and min(a.gcg.steps, a.gcg.search_width, a.gcg.topk, a.gcg.suffix_len) < 1:
            raise ConfigError("algorithm.gcg: steps, search_width, topk and suffix_len must be >= 1")
        if a.gcg.enabled:
            require_nanogcg()
        if cfg.model.kind == "tiny" and "image_size" not in cfg.model:
            raise ConfigError(f"model={cfg.model.name} is not a vision guard (use model=tiny_vision_guard or "
                              "model=llama_guard_3_11b_vision)")
        params = set(cfg.dataset.params or {})
        if (not params <= set(TOY_DEFAULTS)) if cfg.dataset.source == "builtin" else "vision_format" not in params:
            raise ConfigError(f"dataset={cfg.dataset.name} is not a multimodal moderation set (the toy world "
                              "vision_moderation_toy, or dataset.params.vision_format: vlguard | spa_vl | mssbench)")


NANOGCG_INSTALL = 'pip install --no-deps "nanogcg==0.3.0"'  # as scripts/env.sh (its pins predate transformers 5)


def require_nanogcg() -> None:
    """A one-line ConfigError naming the install command when nanogcg (the GCG attack) is not importable."""
    if importlib.util.find_spec("nanogcg") is None:
        raise ConfigError(f"algorithm.gcg.enabled=true needs nanogcg, which is not installed: {NANOGCG_INSTALL} "
                          "(or set algorithm.gcg.enabled=false)")


# --------------------------------------------------------------------------- training
CAPTION_PROMPT = "<|begin_of_text|><|image|>A picture of a"


def caption_data(prompter: VisionPrompter, train: Sequence[VisionModerationExample]) -> list[Encoded]:
    """Image-text pairs for pretraining: each distinct training image captioned with what it shows."""
    seen, out = set(), []
    tok = prompter.tokenizer
    for e in train:
        if e.image is None or not e.image_label or id(e.image) in seen:
            continue
        seen.add(id(e.image))
        enc = prompter.encode(e, prompt=CAPTION_PROMPT)
        enc.ids = enc.ids + tok(f" {e.image_label}", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out.append(enc)
    return out


def augment_pixels(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator
                   ) -> torch.Tensor:
    """Each image of a batch (``pixel_values`` [B, images, tiles, 3, H, W], normalised) mirrored left-right with
    probability 1/2 and its RGB channels permuted at random, in pixel space. The label depends on the object's
    shape alone (glyphs are drawn mirrored at random, object colours are uniform per channel), so both keep it,
    while the permuted backgrounds cover palettes the training renders lack."""
    b = pixels.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    perm = torch.stack([torch.randperm(3, generator=generator) for _ in range(b)])
    raw = pixels * std + mean
    raw = torch.where(flip.view(b, *[1] * (raw.dim() - 1)).to(raw.device), raw.flip(-1), raw)
    raw = torch.stack([raw[i, :, :, perm[i]] for i in range(b)])
    return (raw - mean) / std


VISION_TOWER = ("model.vision_model.", "model.multi_modal_projector.")  # parameter names of the image pathway


def param_groups(model: Any, lr: float, vision_lr_scale: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: the text decoder at ``lr``, the vision tower (encoder + projector) at
    ``lr · vision_lr_scale``, left out when the scale is 0 (frozen)."""
    named = list(model.named_parameters())
    groups = [{"params": [p for n, p in named if not n.startswith(VISION_TOWER)], "lr": lr}]
    if vision_lr_scale > 0:
        groups.append({"params": [p for n, p in named if n.startswith(VISION_TOWER)], "lr": lr * vision_lr_scale})
    return groups


def train_vision_guard(model: Any, data: Sequence[Encoded], steps: int, a: Any, ctx: RunContext, pad_id: int,
                       stage: str = "train", processor: Any = None, vision_lr_scale: float = 1.0) -> None:
    """Cross-entropy on the answer tokens (after the prompt) of image + text items; resumable from ``stage``'s
    checkpoint. The output layer runs on the answer positions only. With ``a.augment`` (and the ``processor``
    whose normalisation the images carry) each batch's images go through :func:`augment_pixels`. The vision tower
    learns at ``vision_lr_scale`` times the learning rate; at 0 it stays as it is."""
    groups = param_groups(model, a.lr, vision_lr_scale)
    trainable = {id(p) for g in groups for p in g["params"]}
    was = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    model.train()
    opt = ResumableOptimizer.create(model, _TrainCfg(steps, a.lr, a.warmup_steps, a.weight_decay), ctx.seed, groups)
    start = opt.restore(ctx, stage)
    bar = ctx.progress(total=steps, initial=start, desc=stage)
    for step in range(start + 1, steps + 1):
        idx = torch.randint(0, len(data), (a.batch_size,), generator=opt.generator).tolist()
        batch = {k: v.to(model.device) for k, v in collate([data[i] for i in idx], pad_id, left=False).items()}
        labels = batch.pop("labels")
        if a.augment and processor is not None and "pixel_values" in batch:
            mean, std = pixel_stats(processor, batch["pixel_values"])
            batch["pixel_values"] = augment_pixels(batch["pixel_values"], mean, std, opt.generator)
        keep = labels[:, 1:] != -100
        hidden = model.model(**batch).last_hidden_state
        loss, parts = answer_loss(model.lm_head(hidden[:, :-1][keep]), labels[:, 1:][keep])
        ctx.log({"loss": loss.item(), "lr": opt.step(loss)}, step, stage)
        bar.update(1)
        if step % a.checkpoint_every == 0 or step == steps:
            opt.save(ctx, stage, step)
    bar.close()
    for p, r in zip(model.parameters(), was):
        p.requires_grad_(r)
    model.eval()


@dataclass
class _TrainCfg:
    steps: int
    lr: float
    warmup_steps: int
    weight_decay: float


# --------------------------------------------------------------------------- evaluation
def task_metrics(examples: Sequence[VisionModerationExample], texts: Sequence[str], probs: Sequence[float],
                 categories: Sequence[str]) -> dict[str, Any]:
    """Precision, recall, F1, FPR of the parsed verdicts, AUPRC of P(unsafe), malformed count, per category."""
    verdicts = [parse_output(t, categories, any(e.categories for e in examples)) for t in texts]
    y = [e.unsafe for e in examples]
    m = binary_metrics(y, [bool(v.unsafe) for v in verdicts])
    out: dict[str, Any] = {k: m[k] for k in ("precision", "recall", "f1", "fpr")}
    out |= {"auprc": average_precision(y, probs), "malformed": sum(v.malformed for v in verdicts), "n": len(y),
            "unsafe": int(sum(y))}
    if any(e.categories for e in examples):
        out["per_category"] = per_category([e.categories for e in examples], [v.categories for v in verdicts],
                                           categories)
    return out


def evaluate_tasks(model: Any, prompter: VisionPrompter, test: Sequence[VisionModerationExample], a: Any,
                   with_image: bool) -> tuple[dict[str, Any], dict[str, tuple[list[str], list[float]]]]:
    """Metrics per task (prompt / response classification) with or without the images."""
    metrics, outputs = {}, {}
    for task in TASKS:
        items = [e for e in test if (e.response is None) == (task == "prompt")]
        if not items:
            continue
        enc = [prompter.encode(e, with_image) for e in items]
        texts, probs = generate_verdicts(model, prompter, enc, a.max_new_tokens, a.eval_batch_size)
        metrics[task] = task_metrics(items, texts, probs, prompter.categories)
        outputs[task] = (texts, probs)
    return metrics, outputs


def text_baselines(train: Sequence[VisionModerationExample], test: Sequence[VisionModerationExample], seed: int
                   ) -> dict[str, Any]:
    """Bag-of-words logistic regression and majority class per task, on the text alone."""
    out: dict[str, Any] = {"bow": {}, "majority": {}}
    for task in TASKS:
        tr = [e for e in train if (e.response is None) == (task == "prompt")]
        te = [e for e in test if (e.response is None) == (task == "prompt")]
        if tr and te and len({e.unsafe for e in tr}) == 2:
            out["bow"][task] = bow_baseline(tr, te, seed)
            out["majority"][task] = majority_baseline(tr, te)
    return out


# --------------------------------------------------------------------------- robustness
def run_pgd(model: Any, prompter: VisionPrompter, test: Sequence[VisionModerationExample], a: Any, seed: int,
            ctx: RunContext) -> dict[str, Any]:
    from runner.guard.vision_attacks import miss_rate, pgd_attack

    p = a.pgd
    items = [e for e in test if e.response is None and e.unsafe and e.image is not None][:p.max_items]
    if not items:
        return {"skipped": "no unsafe prompt item with an image in the test split"}
    enc = [prompter.encode(e) for e in items]
    by_eps: dict[str, float] = {}
    main = None
    for eps in sorted(set(p.eps_grid) | {p.eps}):
        res = pgd_attack(model, prompter, enc, eps, p.steps, p.step_size, p.random_start, seed, a.eval_batch_size)
        by_eps[f"{eps * 255:g}/255"] = miss_rate(res.p_attacked, a.threshold)
        if eps == p.eps:
            main = res
    ctx.plot("pgd_miss_rate", {"PGD": ([float(k.split("/")[0]) for k in by_eps], list(by_eps.values()))},
             "ε (in 1/255)", "miss rate on unsafe prompts", title=f"PGD L∞, {p.steps} steps")
    _save_attacked_grid(ctx, main.pixels, main.p_clean, main.p_attacked, items)
    return {"eps": p.eps, "steps": p.steps, "step_size": p.step_size, "n": len(items),
            "miss_rate_clean": miss_rate(main.p_clean, a.threshold),
            "miss_rate_attacked": miss_rate(main.p_attacked, a.threshold),
            "mean_p_unsafe_clean": float(np.mean(main.p_clean)),
            "mean_p_unsafe_attacked": float(np.mean(main.p_attacked)), "miss_rate_by_eps": by_eps}


def run_gcg(model: Any, prompter: VisionPrompter, test: Sequence[VisionModerationExample], a: Any, seed: int
            ) -> dict[str, Any]:
    from runner.guard.vision_attacks import gcg_attack, miss_rate

    g = a.gcg
    items = [e for e in test if e.response is not None and e.unsafe and e.image is not None][:g.max_items]
    if not items:
        return {"skipped": "no unsafe response item with an image in the test split"}
    res = gcg_attack(model, prompter, items, g.steps, g.search_width, g.topk, g.suffix_len, seed)
    return {"n": len(items), "steps": g.steps, "miss_rate_clean": miss_rate(res.p_clean, a.threshold),
            "miss_rate_attacked": miss_rate(res.p_attacked, a.threshold), "suffixes": res.suffixes,
            "mean_p_unsafe_clean": float(np.mean(res.p_clean)),
            "mean_p_unsafe_attacked": float(np.mean(res.p_attacked))}


# --------------------------------------------------------------------------- figures
def _grid(ctx: RunContext, name: str, images: list[Any], captions: list[str], cols: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, -(-len(images) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, cap in zip(axes.flat, images, captions):
        ax.imshow(img)
        ax.set_title(cap, fontsize=7)
    fig.tight_layout()
    fig.savefig(ctx.path(f"{name}.png"))
    plt.close(fig)


def _save_attacked_grid(ctx: RunContext, pixels: torch.Tensor | None, clean: list[float], attacked: list[float],
                        items: Sequence[VisionModerationExample], n: int = 8) -> None:
    if pixels is None or not ctx.is_main:
        return
    imgs = [pixels[i, 0, 0].permute(1, 2, 0).clamp(0, 1).numpy() for i in range(min(n, len(items)))]
    caps = [f"{e.image_label}\n{c:.2f}→{p:.2f}" for e, c, p in zip(items, clean, attacked)]
    _grid(ctx, "pgd_examples", imgs, caps)


def examples_markdown(ctx: RunContext, test: Sequence[VisionModerationExample], probs_img: dict[str, list[float]],
                      probs_txt: dict[str, list[float]], k: int) -> str:
    """A grid PNG of the first ``k`` test images with their scores, and the same items as a table."""
    from runner.data.vision_moderation import open_image

    rows, images, caps = [], [], []
    index = {task: 0 for task in TASKS}
    for e in test:
        task = "prompt" if e.response is None else "response"
        i = index[task]
        index[task] += 1
        if len(rows) >= k or task not in probs_img:
            continue
        p_img, p_txt = probs_img[task][i], probs_txt.get(task, [float("nan")] * (i + 1))[i]
        images.append(open_image(e.image))
        caps.append(f"{task[0]}:{e.image_label} {'U' if e.unsafe else 'S'}\nP={p_img:.2f} txt={p_txt:.2f}")
        rows.append(f"| {len(rows)} | {task} | {e.image_label} | {e.prompt} | {e.response or ''} | "
                    f"{'unsafe' if e.unsafe else 'safe'} | {p_img:.3f} | {p_txt:.3f} |")
    if not ctx.is_main or not images:
        return ""
    _grid(ctx, "examples", images, caps)
    head = ("| # | task | image | prompt | response | label | P(unsafe) | P(unsafe), image removed |\n"
            "|---|---|---|---|---|---|---|---|")
    return "### Example test items (row-major in the grid)\n\n![examples](examples.png)\n\n" + head + "\n" + \
        "\n".join(rows) + "\n\n![pgd examples](pgd_examples.png)\n"


# --------------------------------------------------------------------------- recipe
def run_guard_vision(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """Train or load the vision guard, evaluate it with and without images, run the attacks, write the figures."""
    from runner.guard.vision_model import build_vision_guard

    a = cfg.algorithm
    examples = load_vision_moderation(cfg.dataset, ctx.seed)
    try:
        cats = check_categories(sorted(set(a.categories) | {c for e in examples for c in e.categories}))
    except ValueError as e:
        raise ConfigError(f"dataset: {e}") from None
    tiny = cfg.model.kind == "tiny"
    train, test = vision_split(examples, a.test_fraction, ctx.seed) if tiny else ([], examples)
    corpus, captioned = [], train
    if tiny and cfg.dataset.source == "builtin" and a.pretrain_steps and a.pretrain_images:
        toy = {**TOY_DEFAULTS, **(cfg.dataset.params or {})}
        captioned = toy_object_images(a.pretrain_images, ctx.seed, int(toy["image_size"]), float(toy["noise"]))
    if tiny:  # the tokenizer learns the rendered prompts and answers of the training split, and the captions
        probe = VisionPrompter(None, cats)
        corpus = [probe.prompt(e) + probe.answer(e) for e in train] + [f"unsafe\n{c}" for c in cats]
        corpus += sorted({f"{CAPTION_PROMPT} {e.image_label}" for e in captioned if e.image_label})
    model, processor = build_vision_guard(cfg.model, cfg.hardware, corpus)
    prompter = VisionPrompter(processor, cats)
    pad = processor.tokenizer.pad_token_id
    stages = [("pretrain", a.pretrain_steps if cfg.dataset.source == "builtin" else 0,
               lambda: caption_data(prompter, captioned), 1.0),
              ("train", a.train_steps, lambda: [prompter.encode(e, answer=True) for e in train], a.vision_lr_scale)]
    for stage, steps, data, vision_lr_scale in stages if tiny else []:
        if steps == 0:
            continue
        if ctx.checkpoints.done(stage) is None:
            train_vision_guard(model, data(), steps, a, ctx, pad, stage, processor, vision_lr_scale)
            ctx.checkpoints.mark_done(stage, {"steps": steps})
        elif stage == "train" or ctx.checkpoints.done("train") is None:
            model.load_state_dict(ctx.checkpoints.load(stage)["state"]["model"])
    tasks, outputs = evaluate_tasks(model, prompter, test, a, with_image=True)
    text_only, outputs_txt = evaluate_tasks(model, prompter, test, a, with_image=False)
    baselines: dict[str, Any] = {"text_only": {t: {k: m[k] for k in ("precision", "recall", "f1", "fpr", "auprc")}
                                               for t, m in text_only.items()}}
    if train:
        baselines |= text_baselines(train, test, ctx.seed)
    curves = {}
    for task, (_, probs) in outputs.items():
        y = [e.unsafe for e in test if (e.response is None) == (task == "prompt")]
        taus = np.linspace(0.0, 1.0, a.num_thresholds).tolist()
        curves[task] = threshold_curves(y, probs, taus)
        ctx.plot(f"threshold_curves_{task}", {k: (taus, curves[task][k]) for k in ("precision", "recall", "f1",
                                                                                   "fpr")},
                 "threshold on P(unsafe)", "metric", title=f"{task} classification, {cfg.model.name}")
    robustness: dict[str, Any] = {}
    if a.pgd.enabled:
        robustness["pgd"] = run_pgd(model, prompter, test, a, ctx.seed, ctx)
    if a.gcg.enabled:
        robustness["gcg"] = run_gcg(model, prompter, test, a, ctx.seed)
    ctx.write_jsonl("predictions.jsonl", _predictions(test, outputs, outputs_txt))
    notes = examples_markdown(ctx, test, {t: o[1] for t, o in outputs.items()},
                              {t: o[1] for t, o in outputs_txt.items()}, a.grid_items)
    ctx.notes.append(notes)
    return {"tasks": tasks, "baselines": baselines, "robustness": robustness, "threshold_curves": curves,
            "num_train": len(train), "num_test": len(test),
            "info": {"categories": cats, "template": "llama_guard_3_vision", "threshold": a.threshold,
                     "pretrain_steps": a.pretrain_steps if tiny and cfg.dataset.source == "builtin" else 0,
                     "train_steps": a.train_steps if tiny else 0}}


def _predictions(test: Sequence[VisionModerationExample], outputs: dict[str, tuple[list[str], list[float]]],
                 outputs_txt: dict[str, tuple[list[str], list[float]]]) -> list[dict[str, Any]]:
    rows, index = [], {t: 0 for t in TASKS}
    for e in test:
        task = "prompt" if e.response is None else "response"
        i = index[task]
        index[task] += 1
        texts, probs = outputs[task]
        rows.append({"task": task, "image": e.image_label, "prompt": e.prompt, "response": e.response,
                     "unsafe": e.unsafe, "categories": e.categories, "output": texts[i], "p_unsafe": probs[i],
                     "p_unsafe_text_only": outputs_txt[task][1][i]})
    return rows
