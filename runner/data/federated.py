"""Federated datasets: a client population whose shards are derived from (seed, client id) on demand.

No per-client state is kept, so a population of 10^8 clients costs no memory: ``client_shard(cid)``
rebuilds client ``cid``'s data from ``derive_seed(seed, ..., cid)`` every time it is drawn.

- ``DirichletPartition``: a pool of labelled examples (scikit-learn's bundled digits; CIFAR-10 from a
  local path) split across clients with Dirichlet(α) label skew. Each client draws label proportions
  p ~ Dir(α·1) and a shard size, then draws its examples class by class from the pool. With more
  clients than examples the shards overlap (a *virtual* partition of the pool); the label skew is the
  same as the usual partition (Hsu et al., 2019).
- ``LeafSynthetic``: LEAF's synthetic(α, β) generator (Li et al., FedProx): client k draws
  u_k ~ N(0, α), W_k, b_k ~ N(u_k, 1), B_k ~ N(0, β), v_k ~ N(B_k, 1), x ~ N(v_k, Σ) with
  Σ_jj = j^-1.2 and labels y = argmax(W_k x + b_k).
- ``LeafJSON``: LEAF's JSON format (FEMNIST, Shakespeare, Sent140, CelebA) read from a local folder
  ``<path>/{train,test}/*.json``; ``load_cifar10`` reads ``cifar-10-batches-py`` from a local path.
"""

from __future__ import annotations

import json
import pickle
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from scipy.special import gammaincinv, ndtri

from runner.core.errors import ConfigError
from runner.core.seeding import derive_seed, hash_uniform


@dataclass
class FederatedDatasetConfig:
    """A federated dataset. ``kind`` picks the generator/loader; ``path`` is required for the paper-scale kinds."""

    name: str = "fl_digits"
    source: str = "builtin"  # builtin (generated / bundled with scikit-learn) | file (a local copy)
    kind: str = "digits"  # digits | synthetic | cifar10 | femnist | shakespeare | sent140 | celeba
    path: str | None = None
    num_clients: int = 10_000  # population size (virtual kinds); LEAF kinds: users in the files (null/0 = all)
    alpha: float = 0.3  # Dirichlet label skew (digits, cifar10); synthetic: model heterogeneity α
    beta: float = 0.3  # synthetic: data heterogeneity β
    samples_per_client: int = 32  # median shard size (virtual kinds)
    size_sigma: float = 0.5  # lognormal σ of shard sizes (0: every shard has samples_per_client)
    test_fraction: float = 0.2  # digits: held-out fraction of the pool
    max_test_examples: int = 2000  # cap on the global test set
    seq_len: int = 25  # sent140: tokens per example; shakespeare uses LEAF's 80 characters
    vocab_size: int = 10_000  # sent140: hashed word vocabulary
    image_size: int = 84  # celeba: resized square images
    sampler: str = "rng"  # digits/cifar10 shards: rng (a numpy Generator per client) | hash (vectorised, batched)

    @staticmethod
    def check(d: Any) -> None:
        kinds = ("digits", "synthetic", "cifar10", "femnist", "shakespeare", "sent140", "celeba")
        if d.kind not in kinds:
            raise ConfigError(f"dataset.kind='{d.kind}' must be one of {', '.join(kinds)}")
        if d.kind not in ("digits", "synthetic") and not d.path:
            raise ConfigError(f"dataset.kind={d.kind} needs dataset.path (a local copy; nothing is downloaded)")
        if d.kind in ("digits", "synthetic", "cifar10") and d.num_clients < 1:
            raise ConfigError(f"dataset.num_clients={d.num_clients} must be >= 1")
        if d.alpha <= 0 or (d.kind == "synthetic" and d.beta < 0):
            raise ConfigError(f"dataset.alpha={d.alpha} must be > 0 (and dataset.beta >= 0)")
        if d.samples_per_client < 1:
            raise ConfigError(f"dataset.samples_per_client={d.samples_per_client} must be >= 1")
        if d.sampler not in ("rng", "hash") or (d.sampler == "hash" and d.kind not in ("digits", "cifar10")):
            raise ConfigError(f"dataset.sampler='{d.sampler}' must be rng, or hash (digits and cifar10 only)")


class FederatedData(Protocol):
    """A client population: shards by client id, one global test set, and the input/label spaces."""

    num_clients: int
    input_shape: tuple[int, ...]
    num_classes: int
    input_dtype: torch.dtype

    def client_shard(self, cid: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]: ...


def _rng(seed: int, *labels: int | str) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *labels))


def _shard_size(rng: np.random.Generator, median: int, sigma: float) -> int:
    if sigma <= 0:
        return median
    return max(1, int(round(median * rng.lognormal(0.0, sigma))))


def hashed_gamma(seed: int, label: str, alpha: float, *counters: np.ndarray, attempts: int = 4) -> np.ndarray:
    """Gamma(α, 1) variates from counter-based hashes, one per element of the broadcast ``counters``.

    Marsaglia & Tsang (2000) rejection for shape a = α (α >= 1) or α + 1 (then times U^{1/α}): proposal
    i of an element is accepted if it is the first of ``attempts`` to pass; the rare element that passes none
    (a few in 10^6 for a = 1.3) takes the inverse CDF of another hashed uniform. Each case yields an exact draw.
    """
    a = alpha + 1.0 if alpha < 1 else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / np.sqrt(9.0 * d)
    out = np.full(np.broadcast_shapes(*(np.shape(x) for x in counters)), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        for i in range(attempts):
            x = ndtri(hash_uniform(seed, label, *counters, 2 * i))
            v = (1.0 + c * x) ** 3
            u = hash_uniform(seed, label, *counters, 2 * i + 1)
            ok = (v > 0) & (np.log(u) < 0.5 * x * x + d - d * v + d * np.log(v)) & np.isnan(out)
            out[ok] = d * v[ok]
    miss = np.isnan(out)
    if miss.any():
        out[miss] = gammaincinv(a, hash_uniform(seed, label + "-inverse", *counters)[miss])
    if alpha < 1:
        out *= hash_uniform(seed, label + "-boost", *counters) ** (1.0 / alpha)
    return out


# --------------------------------------------------------------------------- Dirichlet label skew
class DirichletPartition:
    """A pool split across ``num_clients`` virtual clients with Dirichlet(α) label proportions."""

    def __init__(self, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, num_clients: int,
                 alpha: float, samples_per_client: int, size_sigma: float, seed: int, sampler: str = "rng"):
        self.x, self.y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
        self._test = torch.as_tensor(x_test, dtype=torch.float32), torch.as_tensor(y_test, dtype=torch.long)
        self.num_clients = num_clients
        self.num_classes = int(max(y.max(), y_test.max()) + 1)
        self.input_shape = tuple(self.x.shape[1:])
        self.input_dtype = torch.float32
        self.alpha, self.median, self.sigma, self.seed = alpha, samples_per_client, size_sigma, seed
        self.by_class = [np.flatnonzero(y == c) for c in range(self.num_classes)]
        self.sampler = sampler
        self._class_count = np.array([len(b) for b in self.by_class])
        self._class_start = np.concatenate([[0], np.cumsum(self._class_count)[:-1]])
        self._by_class_flat = np.concatenate(self.by_class)

    def label_proportions(self, cid: int) -> np.ndarray:
        """Client ``cid``'s p ~ Dir(α·1) over the classes present in the pool."""
        return _rng(self.seed, "dirichlet", cid).dirichlet(np.full(self.num_classes, self.alpha))

    # ------------------------------------------------------------------ sampler=hash: whole batches of clients
    def shard_sizes(self, cids: np.ndarray) -> np.ndarray:
        """Shard sizes of ``cids`` under ``sampler=hash``: median × lognormal(σ), at least 1."""
        if self.sigma <= 0:
            return np.full(len(cids), self.median, np.int64)
        z = ndtri(hash_uniform(self.seed, "shard-size", cids))
        return np.maximum(1, np.rint(self.median * np.exp(self.sigma * z))).astype(np.int64)

    def client_indices_many(self, cids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pool indices of many clients' shards at once (``sampler=hash``), concatenated, and the shard sizes.

        Client k: p ~ Dir(α·1) from hashed Gamma(α) variates (:func:`hashed_gamma`), then each of its n_k examples
        draws a class from p and an example of that class uniformly (with replacement). Every draw is a
        hash of (seed, client id, slot), so a client's shard does not depend on the batch it is derived in.
        """
        cids = np.asarray(cids, np.int64)
        n, k = len(cids), self.num_classes
        sizes = self.shard_sizes(cids)
        g = hashed_gamma(self.seed, "dirichlet", self.alpha, cids[:, None], np.arange(k)[None])
        g[:, self._class_count == 0] = 0.0
        g[g.sum(1) <= 0, np.argmax(self._class_count)] = 1.0  # (every Gamma variate underflowed)
        cum = np.cumsum(g / g.sum(1, keepdims=True), 1)
        row = np.repeat(np.arange(n), sizes)
        slot = np.arange(len(row)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        u = hash_uniform(self.seed, "shard-class", cids[row], slot)
        cls = np.minimum((u[:, None] >= cum[row]).sum(1), k - 1)
        cls = np.where(self._class_count[cls] > 0, cls, np.argmax(self._class_count))
        v = hash_uniform(self.seed, "shard-example", cids[row], slot)
        pick = self._class_start[cls] + (v * self._class_count[cls]).astype(np.int64)
        return self._by_class_flat[pick], sizes

    def client_indices(self, cid: int) -> np.ndarray:
        if self.sampler == "hash":
            return self.client_indices_many(np.array([cid]))[0]
        rng = _rng(self.seed, "shard", cid)
        n = _shard_size(rng, self.median, self.sigma)
        counts = rng.multinomial(n, self.label_proportions(cid))
        idx = [rng.choice(self.by_class[c], size=k, replace=k > len(self.by_class[c]))
               for c, k in enumerate(counts) if k > 0]
        return rng.permutation(np.concatenate(idx))

    def client_shard(self, cid: int) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.as_tensor(self.client_indices(cid))
        return self.x[i], self.y[i]

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._test


def load_digits_partition(cfg: Any, seed: int) -> DirichletPartition:
    """scikit-learn's bundled 8×8 digits (1,797 images, pixels scaled to [0, 1]); a stratified held-out test set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, d.target, test_size=cfg.test_fraction, random_state=seed % 2**32,
                                              stratify=d.target)
    return DirichletPartition(x_tr, y_tr, x_te[: cfg.max_test_examples], y_te[: cfg.max_test_examples],
                              cfg.num_clients, cfg.alpha, cfg.samples_per_client, cfg.size_sigma, seed,
                              cfg.get("sampler", "rng"))


def load_cifar10(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR-10 from the python pickles of ``cifar-10-batches-py`` (images as float32 NCHW in [0, 1])."""
    root = Path(path)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not (root / "data_batch_1").exists():
        raise ConfigError(f"dataset.path={path} holds no CIFAR-10 python batches (data_batch_1 ... test_batch)")

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        with open(root / name, "rb") as f:
            b = pickle.load(f, encoding="bytes")
        return (np.asarray(b[b"data"], np.float32).reshape(-1, 3, 32, 32) / 255.0,
                np.asarray(b[b"labels"], np.int64))

    parts = [read(f"data_batch_{i}") for i in range(1, 6)]
    x_te, y_te = read("test_batch")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), x_te, y_te


# --------------------------------------------------------------------------- LEAF synthetic(α, β)
class LeafSynthetic:
    """LEAF synthetic(α, β): per-client softmax-regression worlds with model (α) and data (β) heterogeneity."""

    def __init__(self, num_clients: int, alpha: float, beta: float, samples_per_client: int, size_sigma: float,
                 seed: int, dim: int = 60, num_classes: int = 10, test_clients: int = 100, max_test: int = 2000):
        self.num_clients, self.alpha, self.beta, self.seed = num_clients, alpha, beta, seed
        self.median, self.sigma, self.dim = samples_per_client, size_sigma, dim
        self.num_classes, self.input_shape, self.input_dtype = num_classes, (dim,), torch.float32
        self.cov_diag = np.arange(1, dim + 1, dtype=np.float64) ** -1.2
        xs, ys = zip(*(self._generate(c, "test") for c in range(min(test_clients, num_clients))))
        self._test = torch.cat(xs)[:max_test], torch.cat(ys)[:max_test]

    def client_model(self, cid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(W_k, b_k, v_k) of client ``cid``."""
        rng = _rng(self.seed, "synthetic", cid)
        u = rng.normal(0.0, np.sqrt(self.alpha))
        big_b = rng.normal(0.0, np.sqrt(self.beta)) if self.beta > 0 else 0.0
        w = rng.normal(u, 1.0, (self.num_classes, self.dim))
        b = rng.normal(u, 1.0, self.num_classes)
        v = rng.normal(big_b, 1.0, self.dim)
        return w, b, v

    def _generate(self, cid: int, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        w, b, v = self.client_model(cid)
        rng = _rng(self.seed, "synthetic-data", split, cid)
        n = _shard_size(rng, self.median, self.sigma)
        x = rng.normal(v, np.sqrt(self.cov_diag), (n, self.dim))
        y = np.argmax(x @ w.T + b, axis=1)
        return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)

    def client_shard(self, cid: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._generate(cid, "train")

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._test


# --------------------------------------------------------------------------- LEAF JSON
LEAF_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"


def _hash_word(w: str, vocab: int) -> int:
    return 1 + zlib.crc32(w.lower().encode()) % (vocab - 1)  # 0 is padding


def leaf_featurise(kind: str, xs: list[Any], ys: list[Any], cfg: Any, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One LEAF user's raw ``x``/``y`` lists as tensors, per dataset's conventions."""
    if kind == "femnist":
        return torch.tensor(xs, dtype=torch.float32).view(-1, 1, 28, 28), torch.tensor(ys, dtype=torch.long)
    if kind == "shakespeare":
        x = torch.tensor([[max(LEAF_LETTERS.find(c), 0) for c in s] for s in xs], dtype=torch.long)
        return x, torch.tensor([max(LEAF_LETTERS.find(c), 0) for c in ys], dtype=torch.long)
    if kind == "sent140":
        rows = []
        for raw in xs:
            ids = [_hash_word(w, cfg.vocab_size) for w in str(raw[4]).split()][: cfg.seq_len]
            rows.append(ids + [0] * (cfg.seq_len - len(ids)))
        return torch.tensor(rows, dtype=torch.long), torch.tensor([int(v) for v in ys], dtype=torch.long)
    if kind == "celeba":
        from PIL import Image

        img_dir = next((p for p in (root / "raw" / "img_align_celeba", root / "img_align_celeba") if p.is_dir()), None)
        if img_dir is None:
            raise ConfigError(f"dataset.path={root} has no raw/img_align_celeba folder for the CelebA images")
        s = cfg.image_size
        imgs = [np.asarray(Image.open(img_dir / name).convert("RGB").resize((s, s)), np.float32) / 255.0 for name in xs]
        x = torch.tensor(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor([int(bool(v)) for v in ys], dtype=torch.long)
    raise ConfigError(f"dataset.kind={kind} is not a LEAF dataset")


class LeafJSON:
    """A LEAF dataset (``{"users", "num_samples", "user_data": {u: {"x", "y"}}}``) from ``<path>/{train,test}``.

    Raw JSON is kept in memory (LEAF's datasets are a few GB at most) and featurised per drawn user.
    """

    SHAPES = {"femnist": ((1, 28, 28), 62, torch.float32), "shakespeare": ((80,), len(LEAF_LETTERS), torch.long),
              "sent140": ((25,), 2, torch.long), "celeba": ((3, 84, 84), 2, torch.float32)}

    def __init__(self, cfg: Any):
        self.kind, self.cfg, self.root = cfg.kind, cfg, Path(cfg.path)
        self.train = self._read("train")
        test = self._read("test")
        self.users = sorted(self.train)
        if cfg.num_clients:
            self.users = self.users[: cfg.num_clients]
        self.num_clients = len(self.users)
        shape, self.num_classes, self.input_dtype = self.SHAPES[self.kind]
        if self.kind == "sent140":
            shape = (cfg.seq_len,)
        if self.kind == "celeba":
            shape = (3, cfg.image_size, cfg.image_size)
        self.input_shape = shape
        xs, ys = [], []
        for u in sorted(test):
            xs += test[u]["x"]
            ys += test[u]["y"]
            if len(xs) >= cfg.max_test_examples:
                break
        self._test = leaf_featurise(self.kind, xs[: cfg.max_test_examples], ys[: cfg.max_test_examples], cfg, self.root)

    def _read(self, split: str) -> dict[str, dict[str, list]]:
        folder = self.root / split
        files = sorted(folder.glob("*.json")) if folder.is_dir() else []
        if not files:
            raise ConfigError(f"dataset.path={self.root} has no {split}/*.json files in LEAF's format")
        out: dict[str, dict[str, list]] = {}
        for f in files:
            blob = json.loads(f.read_text())
            out.update(blob["user_data"])
        return out

    def client_shard(self, cid: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.train[self.users[cid]]
        return leaf_featurise(self.kind, d["x"], d["y"], self.cfg, self.root)

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._test


# --------------------------------------------------------------------------- entry point
def build_federated_data(cfg: Any, seed: int) -> FederatedData:
    """The federated dataset that ``cfg`` (a :class:`FederatedDatasetConfig`) describes."""
    if cfg.kind == "digits":
        return load_digits_partition(cfg, seed)
    if cfg.kind == "synthetic":
        return LeafSynthetic(cfg.num_clients, cfg.alpha, cfg.beta, cfg.samples_per_client, cfg.size_sigma, seed,
                             max_test=cfg.max_test_examples)
    if cfg.kind == "cifar10":
        x, y, x_te, y_te = load_cifar10(cfg.path)
        return DirichletPartition(x, y, x_te[: cfg.max_test_examples], y_te[: cfg.max_test_examples], cfg.num_clients,
                                  cfg.alpha, cfg.samples_per_client, cfg.size_sigma, seed, cfg.get("sampler", "rng"))
    return LeafJSON(cfg)
