"""Recipe ``llamaguard_1b_int4``: the Llama Guard 3-1B-INT4 compression pipeline (arXiv 2411.17713).

source guard ─► calibrate ─► prune blocks (BI) + MLP neurons ─► distil from the teacher ─► QAT 8da4w ─► convert
─► prune the output layer ─► export an ExecuTorch program (``.pte``, XNNPACK, KV cache). Every stage is
resumable: training stages checkpoint and continue, and a finished stage is marked done with its metrics, so a
re-run skips it and rebuilds its model from the previous stage's weights (pruning, conversion and output pruning
are deterministic given calibration). Each stage is evaluated on the test split and measured (parameters, bytes
with INT4 weights packed two per byte, CPU time to first token and decode speed); ``results.json`` holds the
table under ``stages.<name>`` and, as the task's difficulty check on the same split, ``baselines.bow``
(bag-of-words logistic regression) and ``baselines.majority``. The last stage is also evaluated from its
artifact: ``export/guard_int4.pte`` run in the ExecuTorch runtime on the test split gives ``pte_bytes``,
``f1_pte``, ``fpr_pte``, ``auprc_pte``, ``agreement`` (share of items with the in-memory model's verdict) and the
program's CPU latency (``algorithm.export_pte=false`` skips it; it needs the ``deploy`` extra).

Embedded default: a toy moderation world, a tiny Llama guard trained on it (the source and, without a separate
teacher, the distillation teacher), and a student derived by the whole pipeline. Paper scale: the source is
``meta-llama/Llama-Guard-3-1B`` (16 → 12 blocks, MLP 8192 → 6400, group size 256) and the teacher
``meta-llama/Llama-Guard-3-8B`` (``algorithm.teacher_hf_id``).
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from runner.core.context import RunContext
from runner.core.errors import ConfigError
from runner.core.report import markdown_table
from runner.data.moderation import ModerationExample
from runner.guard import compress
from runner.guard.baselines import bow_baseline, majority_baseline
from runner.guard.evaluate import build_guard, check_guard_keys, evaluate_guard, prompt_wrap, score
from runner.guard.format import CATEGORIES_1B, check_categories, output_token_ids, parse_output
from runner.guard.train import GuardPrompter, GuardTrainConfig, collate, train_guard


@dataclass
class LlamaGuard1BInt4Config:
    """Keys of ``conf/algorithm/llamaguard_1b_int4.yaml``."""

    name: str = "llamaguard_1b_int4"
    categories: list[str] = field(default_factory=lambda: list(CATEGORIES_1B))
    prompt_wrap: str = "auto"
    test_fraction: float = 0.25
    teacher_hf_id: str | None = None  # null: the (trained) source model is the distillation teacher
    teacher_path: str | None = None
    batch_size: int = 16
    warmup_steps: int = 10
    checkpoint_every: int = 50
    # source guard (tiny models only; a released guard is already trained)
    source_steps: int = 800
    source_lr: float = 1.0e-2
    # 1. calibration
    calibration_batches: int = 8
    # 2.–3. pruning
    keep_layers: int = 1
    mlp_size: int = 96
    # 4. distillation: (1 − r)·CE + r·T²·KL(teacher ‖ student)
    distill_steps: int = 300
    distill_lr: float = 2.0e-3
    distill_ratio: float = 0.5
    temperature: float = 1.0
    # 5. QAT
    group_size: int = 32
    quantize_embedding: bool = True
    qat_steps: int = 100
    qat_lr: float = 5.0e-4
    # 6. output-layer pruning
    prune_output: bool = True
    # 7. ExecuTorch export of the last stage, evaluated from the file (needs the deploy extra)
    export_pte: bool = True
    # evaluation and latency
    eval_batch_size: int = 32
    max_new_tokens: int = 10
    latency_new_tokens: int = 16
    latency_repeats: int = 3

    @staticmethod
    def validate(cfg: DictConfig) -> None:
        a, m = cfg.algorithm, cfg.model
        check_guard_keys(a)
        for key in ("keep_layers", "mlp_size", "group_size", "calibration_batches", "checkpoint_every",
                    "latency_new_tokens", "latency_repeats"):
            if a[key] < 1:
                raise ConfigError(f"algorithm.{key}={a[key]} must be >= 1")
        for key in ("source_steps", "distill_steps", "qat_steps"):
            if a[key] < 0:
                raise ConfigError(f"algorithm.{key}={a[key]} must be >= 0")
        if not 0.0 <= a.distill_ratio <= 1.0:
            raise ConfigError(f"algorithm.distill_ratio={a.distill_ratio} must be in [0, 1]")
        if a.temperature <= 0:
            raise ConfigError(f"algorithm.temperature={a.temperature} must be > 0")
        if a.export_pte:
            from runner.guard.export import require_executorch

            require_executorch()
            if a.group_size % 32:
                raise ConfigError(f"algorithm.group_size={a.group_size} must be a multiple of 32 for the ExecuTorch "
                                  "export (XNNPACK's INT4 group-wise kernels), or set algorithm.export_pte=false")
        if a.mlp_size % a.group_size:
            raise ConfigError(f"algorithm.mlp_size={a.mlp_size} must be a multiple of algorithm.group_size="
                              f"{a.group_size} (INT4 groups run along the MLP input)")
        if m.kind == "tiny":
            if a.keep_layers > m.num_layers:
                raise ConfigError(f"algorithm.keep_layers={a.keep_layers} must be <= model.num_layers={m.num_layers}")
            if a.mlp_size > m.intermediate_size:
                raise ConfigError(f"algorithm.mlp_size={a.mlp_size} must be <= model.intermediate_size="
                                  f"{m.intermediate_size}")
            if m.hidden_size % a.group_size:
                raise ConfigError(f"algorithm.group_size={a.group_size} must divide model.hidden_size={m.hidden_size}")
            if m.tokenizer != "bpe":
                raise ConfigError("model.tokenizer must be bpe for llamaguard_1b_int4 (byte-level prompts are too "
                                  "long for a CPU run)")


# --------------------------------------------------------------------------- helpers
def _calibration_batches(data: list[tuple[list[int], list[int]]], n: int, batch_size: int, pad_id: int, seed: int
                         ) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        idx = torch.randint(0, len(data), (batch_size,), generator=gen).tolist()
        out.append(collate([data[i] for i in idx], pad_id))
    return out


class Stages:
    """Evaluates and measures each stage's model; remembers the table rows."""

    def __init__(self, ctx: RunContext, prompter: GuardPrompter, test: list[ModerationExample], a: Any):
        self.ctx, self.prompter, self.test, self.a = ctx, prompter, test, a
        ids = prompter.tokenizer(prompter.prompt(test[0]), add_special_tokens=False)["input_ids"]
        self.latency_input = torch.tensor([ids])
        self.rows: dict[str, dict[str, Any]] = {}

    def measure(self, name: str, model: Any, pte: Path | None = None) -> dict[str, Any]:
        """Metrics, parameters, bytes (INT4 weights packed two per byte: the same measure for every stage) and CPU
        latency of ``model``; with ``pte``, also of the ExecuTorch program exported there (:meth:`measure_pte`)."""
        metrics, outputs = evaluate_guard(model, self.prompter, self.test, self.a.max_new_tokens,
                                          self.a.eval_batch_size)
        with tempfile.TemporaryDirectory() as d:
            size = compress.export_model(model, Path(d) / "model.safetensors")
        lat = compress.cpu_latency(model, self.latency_input.to(model.device), self.a.latency_new_tokens,
                                   self.a.latency_repeats)
        row = {"params": compress.count_parameters(model), "bytes": size, "f1": metrics["f1"], "fpr": metrics["fpr"],
               "precision": metrics["precision"], "recall": metrics["recall"], "auprc": metrics["auprc"],
               "malformed": metrics["malformed"], **lat}
        if "per_category" in metrics:
            row["per_category_f1"] = {c: v["f1"] for c, v in metrics["per_category"].items()}
        if pte is not None:
            row.update(self.measure_pte(model, pte, outputs.texts))
        return row

    def measure_pte(self, model: Any, path: Path, texts: list[str]) -> dict[str, Any]:
        """Export ``model`` to ``path`` and evaluate the file in the ExecuTorch runtime: its size, F1/FPR/AUPRC,
        the share of test items whose parsed verdict equals the in-memory model's (``texts``), and its latency."""
        from runner.guard.export import PteGuard, classify_pte, export_pte, pte_latency

        tok, new = self.prompter.tokenizer, max(self.a.max_new_tokens, self.a.latency_new_tokens)
        prompts, _ = self.prompter.prompts(self.test, self.a.max_new_tokens)
        longest = max([len(tok(t, add_special_tokens=False)["input_ids"]) for t in prompts]
                      + [self.latency_input.shape[1]])
        # the KV cache holds the longest prompt and its answer (not the model's whole context: 128k for Llama 3)
        size = export_pte(model, path, min(model.config.max_position_embeddings, longest + new + 1))
        pte = PteGuard(path)
        outputs = classify_pte(pte, self.prompter, self.test, self.a.max_new_tokens)
        m = score(self.test, outputs, self.prompter.categories, self.prompter.categories_expected)
        p = self.prompter
        same = [parse_output(x, p.categories, p.categories_expected) == parse_output(y, p.categories,
                                                                                     p.categories_expected)
                for x, y in zip(texts, outputs.texts)]
        lat = pte_latency(pte, self.latency_input[0].tolist(), self.a.latency_new_tokens, self.a.latency_repeats)
        return {"pte_bytes": size, "f1_pte": m["f1"], "fpr_pte": m["fpr"], "auprc_pte": m["auprc"],
                "malformed_pte": m["malformed"], "agreement": sum(same) / len(same),
                "pte_ttft_s": lat["ttft_s"], "pte_decode_tokens_per_s": lat["decode_tokens_per_s"]}

    def run(self, name: str, model: Any, pte: Path | None = None) -> dict[str, Any]:
        """The stage's row: from its done marker on resume, else measured now and marked done."""
        done = self.ctx.checkpoints.done(name)
        if done is None:
            done = self.measure(name, model, pte)
            self.ctx.log({k: v for k, v in done.items() if isinstance(v, (int, float))}, len(self.rows), "stages")
            self.ctx.checkpoints.mark_done(name, done)
        self.rows[name] = done
        return done


def _load_done_weights(ctx: RunContext, stage: str, model: Any) -> bool:
    """Load a finished training stage's final weights without rewinding the metric log."""
    if ctx.checkpoints.done(stage) is None:
        return False
    model.load_state_dict(ctx.checkpoints.load(stage)["state"]["model"])
    return True


def _train(ctx: RunContext, stage: str, model: Any, data: list, tcfg: GuardTrainConfig, pad_id: int,
           teacher: Any = None) -> None:
    if tcfg.steps == 0 or _load_done_weights(ctx, stage, model):
        return
    train_guard(model, data, tcfg, ctx, stage, pad_id, teacher=teacher)


def _teacher(cfg: DictConfig, a: Any, source: Any) -> Any:
    if not (a.teacher_hf_id or a.teacher_path):
        teacher = copy.deepcopy(source)
    else:
        from runner.models.builder import build_model

        t_cfg = OmegaConf.merge(cfg.model, {"name": "teacher", "kind": "hf", "hf_id": a.teacher_hf_id,
                                            "path": a.teacher_path})
        teacher = build_model(t_cfg, None, cfg.hardware)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def _split(cfg: DictConfig, seed: int) -> tuple[list[ModerationExample], list[ModerationExample]]:
    """(train, test): the toy world's own held-out split (``dataset.params.test_fraction``), else a seeded
    random split of ``algorithm.test_fraction``."""
    from runner.data.moderation import guard_split, load_moderation

    return guard_split(load_moderation(cfg.dataset, seed), cfg.dataset, cfg.algorithm.test_fraction, seed)


# --------------------------------------------------------------------------- the recipe
def run_llamaguard_1b_int4(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """Compress a guard into an INT4 student; report the stage table and the teacher-vs-student comparison."""
    a = cfg.algorithm
    cats = check_categories(list(a.categories))
    train, test = _split(cfg, ctx.seed)
    model, prompter = build_guard(cfg.model, cfg.hardware, cats, prompt_wrap(a.prompt_wrap, cfg.model), train)
    tok = prompter.tokenizer
    pad = tok.pad_token_id
    data = prompter.encode(train)
    stages = Stages(ctx, prompter, test, a)

    def tcfg(steps: int, lr: float, ratio: float = 0.0) -> GuardTrainConfig:
        return GuardTrainConfig(steps, a.batch_size, lr, a.warmup_steps, 0.0, a.checkpoint_every, ratio,
                                a.temperature)

    # source guard (the unpruned fp32 student) and the teacher
    if cfg.model.kind == "tiny":
        _train(ctx, "source", model, data, tcfg(a.source_steps, a.source_lr), pad)
    model.float()
    source_row = stages.run("source", model)
    teacher = _teacher(cfg, a, model)
    teacher_row = stages.run("teacher", teacher) if (a.teacher_hf_id or a.teacher_path) else source_row

    # 1. calibration
    calib = ctx.checkpoints.done("calibration")
    if calib is None:
        batches = _calibration_batches(data, a.calibration_batches, a.batch_size, pad, ctx.seed)
        calib = compress.calibrate(model, batches)
        calib["keep_blocks"] = compress.blocks_to_keep(calib["block_importance"], a.keep_layers)
        ctx.checkpoints.mark_done("calibration", calib)
    n_layers = len(model.model.layers)
    if a.keep_layers > n_layers or a.mlp_size > model.config.intermediate_size:
        raise ConfigError(f"algorithm.keep_layers={a.keep_layers} / mlp_size={a.mlp_size} exceed the model "
                          f"({n_layers} blocks, MLP {model.config.intermediate_size})")

    # 2.–3. prune blocks by BI, then MLP neurons by mean activation L2 norm (scores of the kept blocks)
    student = copy.deepcopy(model)
    compress.prune_blocks(student, calib["keep_blocks"])
    compress.prune_mlp(student, [calib["neuron_importance"][i] for i in calib["keep_blocks"]], a.mlp_size)
    stages.run("pruned", student)

    # 4. logit distillation from the teacher
    _train(ctx, "distill", student, data, tcfg(a.distill_steps, a.distill_lr, a.distill_ratio), pad, teacher)
    stages.run("distilled", student)

    # 5. QAT: prepare, train with the same loss, convert
    compress.qat(student, a.group_size, "prepare", a.quantize_embedding)
    _train(ctx, "qat", student, data, tcfg(a.qat_steps, a.qat_lr, a.distill_ratio), pad, teacher)
    compress.qat(student, a.group_size, "convert", a.quantize_embedding)
    final_name = "int4"
    pte = ctx.path("export", "guard_int4.pte") if a.export_pte else None
    stages.run("int4", student, None if a.prune_output else pte)

    # 6. output-layer pruning + 7. ExecuTorch export, evaluated from the file
    kept: list[int] = []
    if a.prune_output:
        kept = output_token_ids(tok, cats)
        compress.prune_output_layer(student, kept)
        final_name = "int4_output_pruned"
        stages.run(final_name, student, pte)

    table = {k: {c: v for c, v in row.items() if c != "per_category_f1"} for k, row in stages.rows.items()}
    cols = ["stage", "params", "bytes", "f1", "fpr", "auprc", "malformed", "ttft_s", "decode_tokens_per_s",
            "pte_bytes", "f1_pte", "agreement", "pte_decode_tokens_per_s"]
    (ctx.dir / "stages.md").write_text(markdown_table([{"stage": k, **v} for k, v in table.items()], cols))
    names = list(table)
    ctx.plot("stage_size_f1", {"F1": (list(range(len(names))), [table[n]["f1"] for n in names]),
                               "bytes / source bytes": (list(range(len(names))),
                                                        [table[n]["bytes"] / source_row["bytes"] for n in names])},
             "stage (" + ", ".join(names) + ")", "value", title="compression stages")
    final = stages.rows[final_name]
    baselines = ctx.checkpoints.done("baselines")
    if baselines is None:  # the task's difficulty check, on the same split
        baselines = {"bow": bow_baseline(train, test, ctx.seed), "majority": majority_baseline(train, test)}
        ctx.checkpoints.mark_done("baselines", baselines)
    return {
        "stages": stages.rows,
        "teacher": {"f1": teacher_row["f1"], "fpr": teacher_row["fpr"], "bytes": teacher_row["bytes"]},
        "student": {"stage": final_name, "f1": final["f1"], "fpr": final["fpr"], "bytes": final["bytes"]},
        "f1_gap": final["f1"] - teacher_row["f1"],
        "baselines": baselines,
        "compression_ratio_vs_fp32_source": source_row["bytes"] / final["bytes"],
        "kept_blocks": calib["keep_blocks"],
        "block_importance": calib["block_importance"],
        "num_output_tokens": len(kept),
        "num_train": len(train), "num_test": len(test),
    }
