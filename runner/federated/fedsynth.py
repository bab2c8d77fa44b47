"""FedSynth (Hu et al. 2022, arXiv 2204.01273): a client uploads a small learned synthetic set instead of its update.

Client k, downloaded global model w, real update Δ = w_k − w from its usual local training:

1. initialise a synthetic set S = (X̃ ∈ R^{m×dim x}, soft-label logits Ỹ ∈ R^{m×C}, step size η̃);
2. ``learn_synthetic_set``: for t = 1..T, Δ_syn(S) = ``replay_inner_steps``(w, S) — ``inner_steps`` SGD steps
   w ← w − η̃ ∇_w CE(f(X̃; w), softmax(Ỹ)) from w — and S ← Adam(S, ∇_S ‖Δ_syn(S) − Δ‖² / ‖Δ‖²), by
   backpropagation through the unrolled inner steps (``torch.func.grad`` of ``torch.func.grad``, vmapped
   over clients); keep each client's best S;
3. upload S: m·(dim x + C) floats, + 1 for a learned η̃.

Server: Δ̂ = ``replay_inner_steps``(w, S), then aggregation as usual (any server mode).

Baselines at the same upload size (:mod:`runner.federated.masks`): ``random_mask`` — k coordinates of Δ chosen
by a seed the server shares (derived from (seed, client, draw), so no indices are uploaded), optionally rescaled
by P/k (unbiased); and ``structured_mask`` (Konečný et al. 2016's structured update with a random mask) — the
client's local SGD moves only k seed-derived coordinates, and it uploads their values.

Two options for small budgets (``FedSynthOptions``): ``input_coefficients`` stores each synthetic input as its r
lowest 2-D DCT frequencies (a basis both sides know, ``dct_basis``), so more examples fit in the budget; and
``residual_fraction`` spends that share of the budget on a random mask of the residual Δ − Δ_syn rescaled by
P/k', so the server's Δ̂ = Δ_syn + sketch is unbiased like masking, with masking's variance on the residual only.

All are *update codecs* (:class:`runner.federated.client.UpdateCodec`): Δ → the Δ̂ the server sees, and
the floats a client uploads, which the simulator's clock charges (the extra on-device compute of fitting S is
not charged: a device's compute time is that of its local training). S starts (``init``) at m of the client's
examples and their one-hot labels, at the means and label frequencies of m groups of its examples — random
groups (``mean``) or runs of the shard sorted by class, so that each example starts as a class prototype
(``class``, the recipe's default) — or at noise. The server must see each client's S to replay it, so FedSynth
does not compose with secure aggregation of updates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.func import functional_call, grad, vmap

from runner.core.context import RunContext
from runner.core.errors import ConfigError
from runner.core.report import markdown_table
from runner.core.seeding import derive_seed
from runner.federated.backends import TrainerSpec, make_backend
from runner.federated.client import LocalTrainer, TrainPlan
from runner.federated.config import ServerConfig, SimulationConfig, check_server, check_simulation
from runner.federated.masks import RandomMaskOptions, StructuredMaskOptions, random_mask
from runner.federated.private import preflight
from runner.federated.recipes import Experiment, with_privacy


# --------------------------------------------------------------------------- the synthetic set
@dataclass
class SyntheticSet:
    """What a FedSynth client uploads (leading dims may batch clients): inputs, soft-label logits, log η̃."""

    x: torch.Tensor  # [m, *input_shape]
    y_logits: torch.Tensor  # [m, C]
    log_lr: torch.Tensor  # [] (learned, uploaded) or a fixed value known to the server


def synthetic_floats(examples: int, input_dim: int, num_classes: int, learn_lr: bool) -> int:
    """|X̃|·dim(x) + |Ỹ|·classes (+ 1 for a learned step size): the paper's upload cost."""
    return examples * (input_dim + num_classes) + int(learn_lr)


def dct_basis(image_shape: Sequence[int], coefficients: int) -> torch.Tensor:
    """The ``coefficients`` lowest-frequency vectors of the orthonormal 2-D DCT-II of images [*channels, H, W]
    (ordered by u + v, then u; each channel its own), as orthonormal columns [prod(shape), channels·coefficients]."""
    *lead, h, w = image_shape
    if not 1 <= coefficients <= h * w:
        raise ConfigError(f"fedsynth.input_coefficients={coefficients} must be in [1, {h * w}] (an {h}x{w} image)")

    def dct(n: int) -> torch.Tensor:  # [frequency, position], orthonormal rows
        k, i = torch.arange(n, dtype=torch.float64)[:, None], torch.arange(n, dtype=torch.float64)[None]
        c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
        c[0] /= math.sqrt(2.0)
        return c

    freqs = sorted(((u, v) for u in range(h) for v in range(w)), key=lambda f: (f[0] + f[1], f[0]))[:coefficients]
    ch, cw = dct(h), dct(w)
    one = torch.stack([torch.outer(ch[u], cw[v]).reshape(-1) for u, v in freqs], dim=1)  # [H·W, r]
    return torch.kron(torch.eye(math.prod(lead)), one.float()) if lead else one.float()


class InnerProblem:
    """The model as a function of flat parameters, for the inner SGD steps on a synthetic set. With a ``basis``
    [dim x, r] both sides know, a synthetic input is stored (and uploaded) as its r coefficients in it."""

    def __init__(self, trainer: LocalTrainer, basis: torch.Tensor | None = None):
        self.model, self.space, self.basis = trainer.model, trainer.space, basis
        self.input_shape = tuple(trainer.data.input_shape)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The model's inputs [m, *input_shape] from the stored synthetic inputs (coefficients when a basis)."""
        return x if self.basis is None else (x @ self.basis.T).reshape(*x.shape[:-1], *self.input_shape)

    def loss(self, w: torch.Tensor, x: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of f(x; w) against soft labels ``soft`` (rows on the simplex)."""
        logits = functional_call(self.model, self.space.unflatten(w), (x,))
        return -(soft * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def replay_inner_steps(problem: InnerProblem, w: torch.Tensor, s: SyntheticSet, inner_steps: int) -> torch.Tensor:
    """Δ_syn: ``inner_steps`` full-batch SGD steps from w on S, w ← w − η̃ ∇_w CE(f(X̃; w), softmax(Ỹ)).

    The server runs exactly this on the uploaded S; the client runs it inside ``learn_synthetic_set`` (where
    it is differentiated through with respect to S).
    """
    soft = torch.softmax(s.y_logits, dim=-1)
    lr = torch.exp(s.log_lr)
    g = grad(problem.loss)
    wj = w
    for _ in range(inner_steps):
        wj = wj - lr * g(wj, problem.inputs(s.x), soft)
    return wj - w


def learn_synthetic_set(problem: InnerProblem, w: torch.Tensor, delta: torch.Tensor, init: SyntheticSet,
                        inner_steps: int, iterations: int, lr: float, learn_lr: bool = True,
                        learn_labels: bool = True) -> tuple[SyntheticSet, torch.Tensor]:
    """Fit S for a batch of n clients at once: minimise ‖Δ_syn(S) − Δ‖² / ‖Δ‖² with Adam for ``iterations``.

    ``w`` and ``delta`` are [n, P]; ``init`` holds [n, ...] tensors. Returns each client's best S (lowest
    relative error, the initialisation included) and that error, [n].
    """

    def relative_error(x: torch.Tensor, y_logits: torch.Tensor, log_lr: torch.Tensor, w1: torch.Tensor,
                       d1: torch.Tensor) -> torch.Tensor:
        r = replay_inner_steps(problem, w1, SyntheticSet(x, y_logits, log_lr), inner_steps) - d1
        return (r * r).sum() / (d1 * d1).sum().clamp_min(1e-30)

    argnums = (0, *((1,) if learn_labels else ()), *((2,) if learn_lr else ()))
    err_and_grad = vmap(torch.func.grad_and_value(relative_error, argnums=argnums))
    params = [init.x.clone(), init.y_logits.clone(), init.log_lr.clone()]
    learned = [params[i] for i in argnums]
    opt = torch.optim.Adam(learned, lr=lr)
    best = [p.clone() for p in params]
    best_err = torch.full((w.shape[0],), math.inf)
    for t in range(iterations + 1):
        grads, err = err_and_grad(*params, w, delta)
        better = err < best_err  # the error of the current parameters (before this step)
        best_err = torch.where(better, err, best_err)
        for b, p in zip(best, params):
            b[better] = p[better]
        if t == iterations:
            break
        for p, g in zip(learned, grads):
            p.grad = torch.nan_to_num(g)
        opt.step()
    return SyntheticSet(*best), best_err


# --------------------------------------------------------------------------- update codecs
@dataclass
class FedSynthOptions:
    """How a FedSynth client builds and learns its synthetic set (the set's size m is the upload budget)."""

    inner_steps: int = 1  # full-batch SGD steps the server replays on the set
    iterations: int = 100  # Adam steps fitting the set to Δ
    lr: float = 0.05  # Adam learning rate
    learn_lr: bool = True  # learn (and upload) the step size η̃; else the server uses init_lr
    learn_labels: bool = True  # learn the soft labels (else the initial ones)
    init: str = "real"  # real: X̃, Ỹ start at m of the client's examples and labels | mean: at the means and label
    # frequencies of m random groups of its examples | class: of m runs of its examples sorted by class, most
    # frequent first (class prototypes; m = 1: the shard's mean) | noise: X̃ ~ N(0, 1), uniform Ỹ
    init_lr: float | None = None  # η̃ at the start; null: client lr × local steps (or epochs) / inner_steps
    label_scale: float = 3.0  # initial logits: label_scale × (one-hot label, or label frequencies)
    input_coefficients: int | None = None  # null: each synthetic input is uploaded whole | r: as its r lowest 2-D
    # DCT frequencies (per channel), and the set holds as many examples as the budget's floats then allow
    image_shape: list[int] | None = None  # [H, W] of flat inputs, for the DCT (null: the input's last two dims)
    residual_fraction: float = 0.0  # this share of the budget uploads a random mask of Δ − Δ_syn, rescaled (so
    # the server's Δ̂ = Δ_syn + that sketch is unbiased); the synthetic set gets the rest

    @staticmethod
    def check(o: Any, key: str) -> None:
        if o.inner_steps < 1 or o.iterations < 0:
            raise ConfigError(f"{key}.inner_steps must be >= 1 and {key}.iterations >= 0")
        if o.lr <= 0 or (o.init_lr is not None and o.init_lr <= 0):
            raise ConfigError(f"{key}.lr and {key}.init_lr must be > 0")
        if o.init not in ("real", "mean", "class", "noise"):
            raise ConfigError(f"{key}.init='{o.init}' must be real, mean, class or noise")
        if not 0.0 <= o.residual_fraction < 1.0:
            raise ConfigError(f"{key}.residual_fraction={o.residual_fraction} must be in [0, 1)")
        if o.input_coefficients is not None and o.input_coefficients < 1:
            raise ConfigError(f"{key}.input_coefficients={o.input_coefficients} must be >= 1 or null")


class FedSynthCodec:
    """Δ → the synthetic set a client learns and uploads → the Δ_syn the server replays. The budget is
    ``examples`` whole synthetic examples (``synthetic_floats``); with ``input_coefficients`` r, each input is
    uploaded as r DCT coefficients, and the set holds as many such examples as fit in that budget."""

    def __init__(self, cfg: dict[str, Any], trainer: LocalTrainer):
        opts = dict(cfg)
        budget_examples = int(opts.pop("examples"))
        self.cfg = FedSynthOptions(**opts)
        FedSynthOptions.check(self.cfg, "fedsynth")
        if budget_examples < 1:
            raise ConfigError(f"fedsynth: the synthetic set needs >= 1 example, got {budget_examples}")
        data = trainer.data
        if not data.input_dtype.is_floating_point:
            raise ConfigError("FedSynth learns continuous synthetic inputs, but the dataset's inputs are tokens "
                              f"({data.input_dtype}): use an image or feature dataset")
        self.input_shape, self.num_classes, self.seed = tuple(data.input_shape), data.num_classes, trainer.seed
        dim, lr_floats = math.prod(self.input_shape), int(self.cfg.learn_lr)
        self.budget = synthetic_floats(budget_examples, dim, self.num_classes, self.cfg.learn_lr)
        basis = None
        if self.cfg.input_coefficients is not None:
            image = list(self.input_shape)
            if self.cfg.image_shape is not None:
                hw = math.prod(self.cfg.image_shape)
                image = ([dim // hw] if dim != hw else []) + list(self.cfg.image_shape)
            if len(image) < 2 or math.prod(image) != dim:
                raise ConfigError(f"fedsynth.image_shape={self.cfg.image_shape}: the DCT needs the inputs "
                                  f"{list(self.input_shape)} as [*channels, H, W] images (set [H, W])")
            basis = dct_basis(image, self.cfg.input_coefficients)
        per_example = (dim if basis is None else basis.shape[1]) + self.num_classes
        self.residual_floats = int(self.cfg.residual_fraction * self.budget)
        self.examples = (self.budget - self.residual_floats - lr_floats) // per_example  # the set's size m
        if self.examples < 1:
            raise ConfigError(f"fedsynth: one example of {per_example} floats exceeds the budget of {self.budget}")
        self.problem = InnerProblem(trainer, basis)
        steps = trainer.local_epochs or trainer.local_steps
        self.init_lr = self.cfg.init_lr or trainer.lr * steps / self.cfg.inner_steps
        self.upload_floats = self.examples * per_example + lr_floats + self.residual_floats  # <= budget

    def initial_set(self, plan: TrainPlan) -> SyntheticSet:
        """The client's starting S, drawn from ``(seed, client, draw)``."""
        c, m = self.cfg, self.examples
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "fedsynth-init", plan.cid, plan.draw))
        n = len(plan.y)
        if c.init == "real":
            rows = torch.randperm(n, generator=gen)[:m] if n >= m else torch.randint(n, (m,), generator=gen)
            x = plan.x[rows].to(torch.float32).clone()
            y = c.label_scale * F.one_hot(plan.y[rows], self.num_classes).to(torch.float32)
        elif c.init in ("mean", "class"):  # m groups of the shard: each group's mean input and label frequencies
            if c.init == "mean":  # random groups
                group = torch.randperm(n, generator=gen) % m if n >= m else torch.randint(m, (n,), generator=gen)
            else:  # class-stratified: the shuffled shard sorted by class (most frequent first), cut into m runs
                perm = torch.randperm(n, generator=gen)
                key = (-torch.bincount(plan.y, minlength=self.num_classes)[plan.y] * self.num_classes + plan.y)[perm]
                group = torch.empty(n, dtype=torch.long)
                group[perm[torch.argsort(key, stable=True)]] = torch.arange(n) * m // n if n >= m else torch.arange(n)
            onehot = F.one_hot(group, m).to(torch.float32).T  # [m, n]
            size = onehot.sum(1, keepdim=True).clamp_min(1.0)
            x = (onehot @ plan.x.to(torch.float32).reshape(n, -1) / size).reshape(m, *self.input_shape)
            freq = onehot @ F.one_hot(plan.y, self.num_classes).to(torch.float32) / size
            y = c.label_scale * freq
        else:
            x = torch.randn((m, *self.input_shape), generator=gen)
            y = torch.zeros(m, self.num_classes)
        if self.problem.basis is not None:  # the coefficients of x's projection onto the (orthonormal) basis
            x = x.reshape(m, -1) @ self.problem.basis
        return SyntheticSet(x, y, torch.tensor(math.log(self.init_lr)))

    def encode(self, x0s: torch.Tensor, deltas: torch.Tensor, plans: Sequence[TrainPlan]) -> SyntheticSet:
        """Client side: learn each client's S from its start model and real update (batched over clients)."""
        inits = [self.initial_set(p) for p in plans]
        init = SyntheticSet(*(torch.stack([getattr(s, f) for s in inits]) for f in ("x", "y_logits", "log_lr")))
        c = self.cfg
        learned, _ = learn_synthetic_set(self.problem, x0s, deltas, init, c.inner_steps, c.iterations, c.lr,
                                         c.learn_lr, c.learn_labels)
        return learned

    def decode(self, w: torch.Tensor, s: SyntheticSet) -> torch.Tensor:
        """Server side: Δ̂ = the inner steps replayed on one client's upload from the model w it downloaded."""
        with torch.no_grad():
            return replay_inner_steps(self.problem, w, s, self.cfg.inner_steps)

    def __call__(self, x0s: torch.Tensor, deltas: torch.Tensor, plans: Sequence[TrainPlan]) -> torch.Tensor:
        s = self.encode(x0s, deltas, plans)
        syn = torch.stack([self.decode(w, SyntheticSet(s.x[i], s.y_logits[i], s.log_lr[i])) for i, w in enumerate(x0s)])
        if not self.residual_floats:
            return syn
        return syn + torch.stack([random_mask(d - ds, self.residual_floats, derive_seed(self.seed, "fedsynth-residual",
                                                                                        p.cid, p.draw), True)
                                  for d, ds, p in zip(deltas, syn, plans)])


# --------------------------------------------------------------------------- the recipe
@dataclass
class MethodServerLR:
    """Each method's server learning rate, tuned per method as a practitioner would; null: ``server.lr``."""

    full: float | None = None
    fedsynth: float | None = None
    random_mask: float | None = None
    structured_mask: float | None = None


@dataclass
class FedSynthConfig(SimulationConfig):
    """Full update vs FedSynth vs mask baselines at equal upload sizes, on one population, clock and server mode.

    Each budget is a synthetic-set size m (``synthetic_examples``); each baseline (``baselines``: random masking
    of Δ, the structured random mask) uploads the same number of floats, m·(dim x + C) (+ 1 for a learned step
    size).
    """

    name: str = "fedsynth"
    server: ServerConfig = field(default_factory=lambda: ServerConfig(mode="fedavg"))
    synthetic_examples: list[int] = field(default_factory=lambda: [1, 3, 10])
    fedsynth: FedSynthOptions = field(default_factory=FedSynthOptions)
    random_mask: RandomMaskOptions = field(default_factory=RandomMaskOptions)
    structured_mask: StructuredMaskOptions = field(default_factory=StructuredMaskOptions)
    baselines: list[str] = field(default_factory=lambda: ["random_mask", "structured_mask"])
    server_lr: MethodServerLR = field(default_factory=lambda: MethodServerLR())
    # Per budget (string keys "m", the synthetic-set size, so that a command line or a sweep can set one, e.g.
    # algorithm.server_lr_by_budget.1.random_mask=2): {"m": {FedSynth options}} over ``fedsynth``, and
    # {"m": {method: server lr}} over ``server_lr``
    fedsynth_by_budget: dict[str, Any] = field(default_factory=dict)
    server_lr_by_budget: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def validate(cfg: DictConfig) -> None:
        check_simulation(cfg)
        a = cfg.algorithm
        check_server(a.server, "algorithm.server")
        FedSynthOptions.check(a.fedsynth, "algorithm.fedsynth")
        sizes = list(a.synthetic_examples)
        if not sizes or any(m < 1 for m in sizes) or len(set(sizes)) != len(sizes):
            raise ConfigError(f"algorithm.synthetic_examples={sizes} must be distinct integers >= 1 (one per budget)")
        if not a.baselines or not set(a.baselines) <= set(_BASELINES) or len(set(a.baselines)) != len(a.baselines):
            raise ConfigError(f"algorithm.baselines={list(a.baselines)} must be distinct names of {list(_BASELINES)}")
        if any(v is not None and v <= 0 for v in a.server_lr.values()):
            raise ConfigError(f"algorithm.server_lr={dict(a.server_lr)}: each must be > 0 or null (server.lr)")
        for name, allowed in (("fedsynth_by_budget", set(FedSynthOptions.__dataclass_fields__)),
                              ("server_lr_by_budget", {"fedsynth", *_BASELINES})):
            for m, over in a[name].items():  # a size not in synthetic_examples is unused
                key = f"algorithm.{name}.{m}"
                if not m.isdigit() or int(m) < 1 or not set(over) <= allowed:
                    raise ConfigError(f"{key}: the key must be a synthetic-set size m >= 1 and its settings among "
                                      f"{sorted(allowed)}")
                if name == "fedsynth_by_budget":
                    FedSynthOptions.check(OmegaConf.merge(a.fedsynth, over), key)
                elif any(v is not None and v <= 0 for v in over.values()):  # null: server_lr
                    raise ConfigError(f"{key}={dict(over)}: each server lr must be > 0")
        if cfg.dataset.kind in ("sent140", "shakespeare"):
            raise ConfigError(f"dataset={cfg.dataset.name}: FedSynth learns continuous synthetic inputs, "
                              "and this dataset's inputs are tokens (use an image or feature dataset)")
        preflight(cfg, [("algorithm.server", a.server, a.server.concurrency or a.concurrency)], [cfg.privacy.epsilon])


def _use_codec(exp: Experiment, cfg: DictConfig, codec: dict[str, Any] | None) -> int:
    """Point the experiment's trainer and backend at clients that upload through ``codec``; its upload floats."""
    client = {**OmegaConf.to_container(cfg.algorithm.client, resolve=True), "codec": codec}
    spec = TrainerSpec(OmegaConf.to_container(cfg.dataset, resolve=True),
                       OmegaConf.to_container(cfg.model, resolve=True), client, exp.ctx.seed)
    exp.backend.close()
    exp.trainer = LocalTrainer(exp.trainer.model, exp.trainer.data, OmegaConf.create(client), exp.ctx.seed)
    exp.backend = make_backend(cfg.algorithm.backend, exp.trainer, spec)
    return exp.trainer.upload_floats


def run_fedsynth(cfg: DictConfig, ctx: RunContext) -> dict[str, Any]:
    """The full update, then FedSynth and each mask baseline at each budget; final accuracy vs upload floats."""
    a = cfg.algorithm
    exp = Experiment(cfg, ctx)
    num_params = int(exp.x0.numel())
    concurrency = a.server.concurrency or a.concurrency
    fedsynth_opts = OmegaConf.to_container(a.fedsynth, resolve=True)
    baselines = list(a.baselines)
    data = exp.trainer.data

    def stage(name: str, codec: dict[str, Any] | None, lr: float | None = None) -> dict[str, Any]:
        floats = _use_codec(exp, cfg, codec)
        method = codec["name"] if codec else "full"
        lr = lr or a.server_lr[method] or a.server.lr
        r = exp.simulate(name, OmegaConf.merge(a.server, {"lr": lr}), concurrency, cfg.privacy.epsilon)  # DP clips
        # and noises the decoded Δ̂
        c = exp.trainer.codec
        size = {"set_examples": c.examples, "residual_floats": c.residual_floats} if method == "fedsynth" else {}
        return {**{k: r[k] for k in _REPORTED if k in r}, **({"privacy": r["privacy"]} if "privacy" in r else {}),
                "upload_floats": floats, "upload_fraction": floats / num_params, "server_lr": lr, **size,
                "history": r["history"]}

    try:
        runs = {"full": stage("full", None)}
        by_budget: dict[str, dict[str, Any]] = {}
        set_by_budget, lr_by_budget = (OmegaConf.to_container(a[n], resolve=True)
                                       for n in ("fedsynth_by_budget", "server_lr_by_budget"))
        for m in a.synthetic_examples:
            over, lrs = set_by_budget.get(str(m), {}), lr_by_budget.get(str(m), {})
            fs = stage(f"fedsynth_m{m}", {"name": "fedsynth", "examples": m, **fedsynth_opts, **over},
                       lrs.get("fedsynth"))
            k = synthetic_floats(m, math.prod(data.input_shape), data.num_classes, a.fedsynth.learn_lr)  # the budget
            runs[f"fedsynth {k} floats"] = fs
            by_budget[str(k)] = {"synthetic_examples": m, "fedsynth": fs}
            for b in baselines:
                r = stage(f"{b}_k{k}", {"name": b, "floats": k, **OmegaConf.to_container(a[b], resolve=True)},
                          lrs.get(b))
                runs[f"{b.replace('_', ' ')} {k} floats"] = by_budget[str(k)][b] = r
    finally:
        exp.close()

    ctx.write_json("curves.json", {k: v["history"] for k, v in runs.items()})
    ctx.plot("accuracy_vs_updates", {k: ([p["client_updates"] for p in v["history"]],
                                         [p["accuracy"] for p in v["history"]]) for k, v in runs.items()},
             "client updates", "test accuracy", title=f"{cfg.dataset.name}: {a.server.mode}")
    floats = [int(k) for k in by_budget]
    full = runs["full"]
    logk = [math.log10(k) for k in floats]
    methods = ["fedsynth", *baselines]
    ctx.plot("accuracy_vs_upload_floats", {
        **{n.replace("_", " "): (logk, [by_budget[str(k)][n]["final_accuracy"] for k in floats]) for n in methods},
        "full update": ([math.log10(num_params)], [full["final_accuracy"]]),
    }, "upload floats per client (log10)", "final test accuracy",
        title=f"{cfg.dataset.name}: {num_params:,} parameters, {a.max_client_updates} updates")
    rows = [{"upload floats": k, "% of model": 100.0 * k / num_params, "m": by_budget[str(k)]["synthetic_examples"],
             **{n: by_budget[str(k)][n]["final_accuracy"] for n in methods}} for k in floats]
    rows.append({"upload floats": num_params, "% of model": 100.0, "m": "full update",
                 **{n: full["final_accuracy"] for n in methods}})
    ctx.notes.append("Final test accuracy by upload size per client (FedSynth's synthetic set of m examples vs "
                     "the mask baselines with the same number of floats):\n\n"
                     + markdown_table(rows, ["upload floats", "% of model", "m", *methods]))
    strip = {"history"}
    out = {"num_parameters": num_params, "server_mode": a.server.mode,
           "server_lr": {"full": full["server_lr"],  # the ones each run used: {method: {budget floats: lr}}
                         **{n: {k: b[n]["server_lr"] for k, b in by_budget.items()} for n in methods}},
           "random_mask_rescaled": bool(a.random_mask.rescale),
           "structured_mask_rescaled": bool(a.structured_mask.rescale),
           "full": {k: v for k, v in full.items() if k not in strip},
           "by_budget": {k: {"synthetic_examples": b["synthetic_examples"],
                             **{n: {f: v for f, v in b[n].items() if f not in strip} for n in methods}}
                         for k, b in by_budget.items()}}
    return with_privacy(out, cfg, runs.values())


_BASELINES = ("random_mask", "structured_mask")
_REPORTED = ("final_accuracy", "best_accuracy", "initial_accuracy", "client_updates", "server_steps", "bytes",
             "sim_time", "rejected_updates")
