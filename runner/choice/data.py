"""Panel choice data: the design-matrix container, its checks, a synthetic generator and a Swissmetro loader.

Observation n of individual i(n) has attributes ``X[n, j, :]`` for each alternative j. With one
"alternative" (``J == 1``) the outcome is binary, ``y[n] ∈ {0, 1}``, and the utility is
``x_nᵀ(β + L_i)``; with ``J >= 2`` it is a multinomial choice among the available alternatives
(``avail[n, j]``), utilities ``V_nj = x_njᵀ(β + L_i)``, and ``y[n]`` is the chosen alternative.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from runner.core.errors import ConfigError


class DesignError(ValueError):
    """A design matrix / outcome / panel index that the models cannot use; the message says what is wrong."""


@dataclass
class ChoiceData:
    """A panel of choices: ``X`` (N, J, p), ``y`` (N,), ``ind`` (N,) in ``0..n_ind-1``, ``avail`` (N, J)."""

    X: np.ndarray
    y: np.ndarray
    ind: np.ndarray
    n_ind: int
    avail: np.ndarray
    feature_names: list[str]
    penalized: np.ndarray  # (p,) bool: False for intercepts / alternative-specific constants (no ℓ1 on β_k)
    alternatives: list[str] = field(default_factory=lambda: ["y"])

    @property
    def binary(self) -> bool:
        return self.X.shape[1] == 1

    @property
    def n_obs(self) -> int:
        return self.X.shape[0]

    @property
    def p(self) -> int:
        return self.X.shape[2]

    def subset(self, rows: np.ndarray) -> ChoiceData:
        """The same individuals (indices kept) restricted to observations ``rows``."""
        return ChoiceData(self.X[rows], self.y[rows], self.ind[rows], self.n_ind, self.avail[rows],
                          self.feature_names, self.penalized, self.alternatives)


def make_choice_data(X: np.ndarray, y: np.ndarray, ind: np.ndarray, n_ind: int | None = None,
                     avail: np.ndarray | None = None, feature_names: list[str] | None = None,
                     penalized: np.ndarray | None = None, alternatives: list[str] | None = None) -> ChoiceData:
    """Check and wrap a design. ``X`` may be (N, p) for binary data. Raises ``DesignError`` naming the problem."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim == 2:
        X = X[:, None, :]
    if X.ndim != 3:
        raise DesignError(f"X must have shape (N, p) or (N, J, p), got shape {X.shape}")
    N, J, p = X.shape
    if N == 0 or p == 0:
        raise DesignError(f"X has shape {X.shape}: need at least one observation and one feature")
    if not np.all(np.isfinite(X)):
        n_bad = int(np.sum(~np.isfinite(X).all(axis=(1, 2))))
        first = int(np.argmax(~np.isfinite(X).all(axis=(1, 2))))
        raise DesignError(f"X has NaN/inf values in {n_bad} observation(s) (first: row {first})")
    y = np.asarray(y)
    ind = np.asarray(ind)
    if y.shape != (N,):
        raise DesignError(f"y must have shape ({N},) to match X, got {y.shape}")
    if ind.shape != (N,):
        raise DesignError(f"ind (individual index) must have shape ({N},) to match X, got {ind.shape}")
    if not np.all(np.isfinite(y.astype(np.float64))) or np.any(y != np.round(y)):
        raise DesignError("y must hold integer outcomes (0/1 for binary, alternative index for multinomial)")
    if np.any(ind != np.round(ind)) or (ind.size and ind.min() < 0):
        raise DesignError("ind must hold non-negative integer individual indices")
    y, ind = y.astype(np.int64), ind.astype(np.int64)
    n_ind = int(ind.max()) + 1 if n_ind is None else int(n_ind)
    if ind.max() >= n_ind:
        raise DesignError(f"ind has index {int(ind.max())} but n_ind={n_ind}")
    counts = np.bincount(ind, minlength=n_ind)
    if np.any(counts == 0):
        empty = np.flatnonzero(counts == 0)
        raise DesignError(f"{empty.size} individual(s) have no observations (first: individual {int(empty[0])}); "
                          "re-index individuals to 0..n_ind-1 without gaps")
    if J == 1:
        if np.any((y != 0) & (y != 1)):
            raise DesignError("binary outcome y must be 0 or 1")
        avail = np.ones((N, 1), dtype=bool)
    else:
        avail = np.ones((N, J), dtype=bool) if avail is None else np.asarray(avail).astype(bool)
        if avail.shape != (N, J):
            raise DesignError(f"avail must have shape ({N}, {J}), got {avail.shape}")
        if np.any((y < 0) | (y >= J)):
            raise DesignError(f"multinomial outcome y must be in 0..{J - 1}")
        if not np.all(avail[np.arange(N), y]):
            raise DesignError("some chosen alternatives are marked unavailable in avail")
    names = list(feature_names) if feature_names is not None else [f"x{k}" for k in range(p)]
    if len(names) != p:
        raise DesignError(f"feature_names has {len(names)} names for p={p} features")
    pen = np.ones(p, dtype=bool) if penalized is None else np.asarray(penalized, dtype=bool)
    if pen.shape != (p,):
        raise DesignError(f"penalized must have shape ({p},), got {pen.shape}")
    alts = list(alternatives) if alternatives is not None else (["y"] if J == 1 else [f"alt{j}" for j in range(J)])
    return ChoiceData(X, y, ind, n_ind, avail, names, pen, alts)


# --------------------------------------------------------------------------- splits
def split_within_individuals(ind: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Fold label of each observation: every individual's observations are shuffled and dealt round-robin,
    so each individual appears in every training split (needed: L_i is individual-specific)."""
    rng = np.random.default_rng(seed)
    fold = np.empty(ind.shape[0], dtype=np.int64)
    order = np.lexsort((rng.random(ind.shape[0]), ind))  # by individual, random within individual
    sorted_ind = ind[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_ind)) + 1]
    rank_within = np.arange(ind.shape[0]) - np.repeat(starts, np.diff(np.r_[starts, ind.shape[0]]))
    offset = rng.integers(0, n_folds, size=starts.size)  # so that small panels do not all fill fold 0 first
    fold[order] = (rank_within + np.repeat(offset, np.diff(np.r_[starts, ind.shape[0]]))) % n_folds
    return fold


def heldout_split(data: ChoiceData, fraction: float, seed: int) -> tuple[ChoiceData, ChoiceData]:
    """(train, held-out): about ``fraction`` of each individual's observations held out, at least one kept."""
    n_folds = max(2, int(round(1.0 / fraction)))
    fold = split_within_individuals(data.ind, n_folds, seed)
    counts = np.bincount(data.ind, minlength=data.n_ind)
    test = (fold == 0) & (counts[data.ind] > 1)
    return data.subset(np.flatnonzero(~test)), data.subset(np.flatnonzero(test))


# --------------------------------------------------------------------------- synthetic data
@dataclass
class Truth:
    """Ground truth of a synthetic panel: sparse β, rank-r L (rows: individual deviations)."""

    beta: np.ndarray
    L: np.ndarray
    rank: int


def synthetic_panel(n_individuals: int = 200, obs_per_individual: int = 20, n_features: int = 8,
                    n_alternatives: int = 1, support: int = 3, rank: int = 2, beta_scale: float = 1.0,
                    latent_scale: float = 1.0, seed: int = 0) -> tuple[ChoiceData, Truth]:
    """Panels with ground truth. Binary (``n_alternatives=1``) data is crash-analysis-like: an intercept
    (unpenalized), half the covariates binary indicators (e.g. night, wet road, no seat belt), half
    standardised continuous (speed, age, ...), a severe/not-severe outcome. Multinomial data has
    alternative-specific constants (unpenalized) and generic attributes varying by alternative.
    β is sparse on the penalized covariates (``support`` non-zeros); L = U Vᵀ has rank ``rank`` with
    centred U, so β is the population mean of the individual coefficients β + L_i."""
    rng = np.random.default_rng(seed)
    n, T, J = n_individuals, obs_per_individual, n_alternatives
    N = n * T
    ind = np.repeat(np.arange(n), T)
    if J == 1:
        q = n_features - 1  # covariates besides the intercept
        Xc = np.empty((N, q))
        n_bin = q // 2
        Xc[:, :n_bin] = rng.random((N, n_bin)) < 0.3
        Xc[:, n_bin:] = rng.standard_normal((N, q - n_bin))
        X = np.concatenate([np.ones((N, 1)), Xc], axis=1)[:, None, :]
        names = ["intercept"] + [f"ind{k}" for k in range(n_bin)] + [f"cont{k}" for k in range(q - n_bin)]
        penalized = np.r_[False, np.ones(q, dtype=bool)]
    else:
        q = n_features - (J - 1)
        asc = np.zeros((N, J, J - 1))
        for j in range(1, J):
            asc[:, j, j - 1] = 1.0
        X = np.concatenate([asc, rng.standard_normal((N, J, q))], axis=2)
        names = [f"asc{j}" for j in range(1, J)] + [f"x{k}" for k in range(q)]
        penalized = np.r_[np.zeros(J - 1, dtype=bool), np.ones(q, dtype=bool)]
    p = X.shape[2]
    pen_idx = np.flatnonzero(penalized)
    if support > pen_idx.size or rank > min(n, p):
        raise ConfigError(f"dataset.params: support={support} must be <= {pen_idx.size} and rank={rank} <= {min(n, p)}")
    beta = np.zeros(p)
    chosen = rng.choice(pen_idx, size=support, replace=False)
    beta[chosen] = beta_scale * rng.choice([-1.0, 1.0], size=support) * rng.uniform(0.7, 1.3, size=support)
    if J == 1:
        beta[0] = -0.5
    else:
        beta[: J - 1] = rng.uniform(-0.5, 0.5, size=J - 1)
    U = rng.standard_normal((n, rank))
    U -= U.mean(axis=0)
    V, _ = np.linalg.qr(rng.standard_normal((p, rank)))
    L = latent_scale * U @ V.T
    theta = beta + L[ind]
    util = np.einsum("njp,np->nj", X, theta)
    if J == 1:
        y = (rng.random(N) < 1.0 / (1.0 + np.exp(-util[:, 0]))).astype(np.int64)
    else:
        g = rng.gumbel(size=(N, J))
        y = np.argmax(util + g, axis=1)
    alts = ["severe"] if J == 1 else [f"alt{j}" for j in range(J)]
    data = make_choice_data(X, y, ind, n, None, names, penalized, alts)
    return data, Truth(beta, L, rank)


# --------------------------------------------------------------------------- Swissmetro
SWISSMETRO_FEATURES = ["asc_train", "asc_car", "time", "cost", "headway"]


def resolve_path(path: str | None, key: str = "dataset.path") -> Path:
    """An existing file: ``path`` as given (absolute or relative to the working directory), else relative to
    the project root. A clear ``ConfigError`` naming ``key`` otherwise."""
    import runner

    if not path:
        raise ConfigError(f"{key} is not set: point it at a local file (e.g. {key}=../shared/data/swissmetro.dat)")
    p = Path(path).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, runner.PROJECT_ROOT / p]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    tried = ", ".join(str(c) for c in candidates)
    raise ConfigError(f"{key}={path} does not exist (looked at {tried}); set {key} to a local copy of the file")


def load_swissmetro(path: str | Path, purposes: list[int] | None = None) -> ChoiceData:
    """Swissmetro stated-preference panel (tab-separated): alternatives train, Swissmetro, car; generic time,
    cost and headway; constants for train and car (Swissmetro is the reference). Usual scaling: times,
    costs and headways divided by 100; train and Swissmetro cost is zero for GA (season ticket) holders;
    train and car available only in SP (stated-preference) rows. Rows with CHOICE = 0 are dropped."""
    import pandas as pd

    df = pd.read_csv(path, sep="\t")
    need = {"ID", "CHOICE", "GA", "SP", "TRAIN_AV", "SM_AV", "CAR_AV", "TRAIN_TT", "TRAIN_CO", "TRAIN_HE", "SM_TT",
            "SM_CO", "SM_HE", "CAR_TT", "CAR_CO", "PURPOSE"}
    missing = sorted(need - set(df.columns))
    if missing:
        raise DesignError(f"{path} lacks Swissmetro columns {missing}")
    df = df[df.CHOICE != 0]
    if purposes:
        df = df[df.PURPOSE.isin(purposes)]
    N = len(df)
    ga = df.GA.to_numpy() == 1
    sp = df.SP.to_numpy() != 0
    X = np.zeros((N, 3, 5))
    X[:, 0, 0] = 1.0  # train constant
    X[:, 2, 1] = 1.0  # car constant
    X[:, 0, 2], X[:, 1, 2], X[:, 2, 2] = df.TRAIN_TT / 100, df.SM_TT / 100, df.CAR_TT / 100
    X[:, 0, 3], X[:, 1, 3], X[:, 2, 3] = df.TRAIN_CO * ~ga / 100, df.SM_CO * ~ga / 100, df.CAR_CO / 100
    X[:, 0, 4], X[:, 1, 4] = df.TRAIN_HE / 100, df.SM_HE / 100
    avail = np.stack([(df.TRAIN_AV.to_numpy() == 1) & sp, df.SM_AV.to_numpy() == 1,
                      (df.CAR_AV.to_numpy() == 1) & sp], axis=1)
    _, ind = np.unique(df.ID.to_numpy(), return_inverse=True)
    y = df.CHOICE.to_numpy() - 1
    return make_choice_data(X, y, ind, None, avail, list(SWISSMETRO_FEATURES),
                            np.array([False, False, True, True, True]), ["train", "swissmetro", "car"])
